//! Subject, stream and consumer names, all from one prefix.

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CONNECTIONS_NATS_PREFIX must be 1-32 characters from [A-Za-z0-9_-]")]
pub struct NamesError;

/// Every NATS name Connections uses. Ids are restricted to `[A-Za-z0-9_-]`
/// and service slugs to `[a-z0-9-]`, so every token is valid as-is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (default `connections`).
    pub fn new(prefix: &str) -> Result<Self, NamesError> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(NamesError);
        }
        Ok(Self { prefix: prefix.to_owned() })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The JetStream stream holding the log: `<prefix>_events`.
    pub fn events_stream(&self) -> String {
        format!("{}_events", self.prefix)
    }

    /// The subjects the events stream captures: `<prefix>.v1.events.>`.
    pub fn events_wildcard(&self) -> String {
        format!("{}.v1.events.>", self.prefix)
    }

    /// One event's subject: `<prefix>.v1.events.<owner>.<service>.<event_type>`.
    pub fn event_subject(&self, owner: &str, service: &str, event_type: &str) -> String {
        format!("{}.v1.events.{owner}.{service}.{event_type}", self.prefix)
    }

    /// The JetStream stream holding notices: `<prefix>_notices`.
    pub fn notices_stream(&self) -> String {
        format!("{}_notices", self.prefix)
    }

    /// The subjects the notices stream captures: `<prefix>.v2.notices.>`.
    pub fn notices_wildcard(&self) -> String {
        format!("{}.v2.notices.>", self.prefix)
    }

    /// Revocations and rotations of one connection of `owner`:
    /// `<prefix>.v2.notices.<owner>.connection.<connection_id>`.
    pub fn connection_notices(&self, owner: &str, connection_id: &str) -> String {
        format!("{}.v2.notices.{owner}.connection.{connection_id}", self.prefix)
    }

    /// Every connection notice of one owner (what a runtime acting for
    /// `owner` may subscribe to): `<prefix>.v2.notices.<owner>.connection.*`.
    pub fn owner_connection_notices(&self, owner: &str) -> String {
        format!("{}.v2.notices.{owner}.connection.*", self.prefix)
    }

    /// Binding changes of one agent acting for one owner:
    /// `<prefix>.v2.notices.<owner>.agent.<agent>`.
    pub fn agent_notices(&self, owner: &str, agent: &str) -> String {
        format!("{}.v2.notices.{owner}.agent.{agent}", self.prefix)
    }

    /// A runtime's own echo subject, the only one it may publish to:
    /// `<prefix>.v2.sync.<owner>.<agent>`. What it publishes there comes
    /// back to it once nats-server has handled everything it sent before
    /// (its subscriptions included); nothing else listens.
    pub fn runtime_sync(&self, owner: &str, agent: &str) -> String {
        format!("{}.v2.sync.{owner}.{agent}", self.prefix)
    }

    /// Everything under the prefix: `<prefix>.>`.
    pub fn everything(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The inbox prefix of the service's own NATS connections
    /// (`_INBOX_<prefix>`): replies to the service are delivered there, and
    /// only the service may subscribe to it.
    pub fn service_inbox(&self) -> String {
        format!("_INBOX_{}", self.prefix)
    }

    /// The durable consumer of a projector: `<prefix>_projector_<name>`.
    pub fn projector_consumer(&self, projector: &str) -> String {
        format!("{}_projector_{projector}", self.prefix)
    }

    /// The Postgres advisory-lock key for a role (relay, projector) of this
    /// deployment: the same prefix on the same database elects one leader.
    pub fn lock_key(&self, role: &str) -> i64 {
        // FNV-1a: stable across builds and platforms (std's hasher is not).
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.prefix.bytes().chain([0]).chain(role.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix_and_refuse_unsafe_prefixes() {
        let names = Names::new("t-1").expect("valid prefix");
        assert_eq!(names.events_stream(), "t-1_events");
        assert_eq!(
            names.event_subject("alice", "google-calendar", "connection_revoked"),
            "t-1.v1.events.alice.google-calendar.connection_revoked"
        );
        assert_eq!(names.projector_consumer("dashboard"), "t-1_projector_dashboard");
        assert_eq!(names.connection_notices("alice", "c1"), "t-1.v2.notices.alice.connection.c1");
        assert_eq!(names.owner_connection_notices("alice"), "t-1.v2.notices.alice.connection.*");
        assert_eq!(names.agent_notices("alice", "agent-1"), "t-1.v2.notices.alice.agent.agent-1");
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(33)] {
            assert_eq!(Names::new(bad), Err(NamesError), "{bad:?}");
        }
        assert_ne!(names.lock_key("relay"), names.lock_key("projector"));
        assert_ne!(names.lock_key("relay"), Names::new("t-2").expect("valid").lock_key("relay"));
    }
}
