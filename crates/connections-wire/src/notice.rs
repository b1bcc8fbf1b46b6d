//! Notices for agent runtimes (`schemas/nats/notice.v1.json`): what a
//! runtime holding a credential must react to, derived from committed events.
//! They carry ids, versions and the log cursor, never secrets.

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, EnvelopeCursor};
use crate::names::Names;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The connection was revoked: drop it, never use it again.
    Revoked,
    /// The connection's credential was rotated: drop it, resolve again.
    Rotated,
    /// The agent's binding for a service changed: resolve again.
    BindingChanged,
    /// A runtime reported that the provider rejected the connection's
    /// current credential: stop retrying it; resolving it still works until
    /// the owner rotates, replaces or revokes it.
    Rejected,
}

/// One notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Always 1 for this layout.
    pub notice_version: u32,
    /// What happened.
    pub kind: NoticeKind,
    /// The event it comes from (also the `Nats-Msg-Id`).
    pub event_id: uuid::Uuid,
    /// Where that event is in the log.
    pub cursor: EnvelopeCursor,
    /// The owner.
    pub owner: String,
    /// The service.
    pub service: String,
    /// The connection concerned.
    pub connection_id: String,
    /// For rotations: the new credential version; for rejections: the
    /// version rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_version: Option<u64>,
    /// For binding changes: the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// For binding changes: true when the agent was bound to the connection,
    /// false when its binding to it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<bool>,
}

impl Notice {
    /// Its `Nats-Msg-Id`: the same for every copy of it (the committing
    /// instance's and the relay's), so the notices stream keeps one.
    pub fn message_id(&self) -> String {
        format!("notice-{}", self.event_id)
    }

    /// The notice an event calls for, with its subject; `None` for events
    /// runtimes need not hear about.
    pub fn for_event(envelope: &Envelope, names: &Names) -> Option<(String, Notice)> {
        let event = NoticedEvent {
            event_id: envelope.event_id,
            cursor: envelope.cursor,
            owner: &envelope.owner,
            service: &envelope.service,
            event_type: &envelope.event_type,
            data: &envelope.data,
        };
        Self::for_committed(&event, names)
    }

    /// The notice a committed event calls for, with its subject, from the
    /// event's parts (for a writer that has not read the event back).
    pub fn for_committed(event: &NoticedEvent<'_>, names: &Names) -> Option<(String, Notice)> {
        let data = event.data;
        let connection_id = data.get("connection_id")?.as_str()?.to_owned();
        let agent_id = data.get("agent_id").and_then(|a| a.as_str()).map(str::to_owned);
        let (kind, subject) = match event.event_type {
            "connection_revoked" => (NoticeKind::Revoked, names.connection_notices(event.owner, &connection_id)),
            "credential_rotated" | "credential_refreshed" => {
                (NoticeKind::Rotated, names.connection_notices(event.owner, &connection_id))
            }
            "credential_rejected" => (NoticeKind::Rejected, names.connection_notices(event.owner, &connection_id)),
            // A binding ended by its connection's revocation needs no notice
            // of its own: the revocation's notice, from the same transaction,
            // tells every runtime holding that connection, and a revoke of a
            // connection used by a thousand agents stays one notice.
            "agent_unassigned" if data.get("reason").and_then(|r| r.as_str()) == Some("revoked") => return None,
            "agent_assigned" | "agent_unassigned" => {
                (NoticeKind::BindingChanged, names.agent_notices(event.owner, agent_id.as_deref()?))
            }
            _ => return None,
        };
        let notice = Notice {
            notice_version: 1,
            kind,
            event_id: event.event_id,
            cursor: event.cursor,
            owner: event.owner.to_owned(),
            service: event.service.to_owned(),
            connection_id,
            credential_version: data.get("credential_version").and_then(|v| v.as_u64()),
            bound: (kind == NoticeKind::BindingChanged).then(|| event.event_type == "agent_assigned"),
            agent_id: if kind == NoticeKind::BindingChanged { agent_id } else { None },
        };
        Some((subject, notice))
    }

    /// Whether runtimes must act on this notice at once: it makes them drop
    /// a credential they hold.
    pub fn is_urgent(&self) -> bool {
        matches!(self.kind, NoticeKind::Revoked | NoticeKind::Rotated)
    }
}

/// The parts of a committed event a notice is made of.
#[derive(Debug, Clone, Copy)]
pub struct NoticedEvent<'e> {
    /// Its id (the notice's `Nats-Msg-Id` is `notice-<id>`).
    pub event_id: uuid::Uuid,
    /// Where it is in the log.
    pub cursor: EnvelopeCursor,
    /// The owner of its stream.
    pub owner: &'e str,
    /// The service of its stream.
    pub service: &'e str,
    /// Its stable type name.
    pub event_type: &'e str,
    /// Its data.
    pub data: &'e serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice_of(event_type: &str, data: serde_json::Value) -> Option<(String, Notice)> {
        let names = Names::new("t").expect("prefix");
        let event = NoticedEvent {
            event_id: uuid::Uuid::from_u128(7),
            cursor: EnvelopeCursor { transaction_id: 3, position: 9 },
            owner: "alice",
            service: "github",
            event_type,
            data: &data,
        };
        Notice::for_committed(&event, &names)
    }

    #[test]
    fn a_binding_ended_by_its_revocation_is_told_by_the_revocation_alone() {
        let unbound = |reason| serde_json::json!({"connection_id": "c1", "agent_id": "a1", "reason": reason});
        assert!(notice_of("agent_unassigned", unbound("revoked")).is_none());
        for reason in ["unassigned", "replaced"] {
            let (subject, notice) = notice_of("agent_unassigned", unbound(reason)).expect("a notice");
            assert_eq!(
                (subject.as_str(), notice.kind, notice.bound),
                ("t.v2.notices.alice.agent.a1", NoticeKind::BindingChanged, Some(false))
            );
            assert!(!notice.is_urgent());
        }
        let (subject, notice) =
            notice_of("connection_revoked", serde_json::json!({"connection_id": "c1"})).expect("a notice");
        assert_eq!((subject.as_str(), notice.kind), ("t.v2.notices.alice.connection.c1", NoticeKind::Revoked));
        assert!(notice.is_urgent());
        assert_eq!(notice.cursor, EnvelopeCursor { transaction_id: 3, position: 9 });
    }
}
