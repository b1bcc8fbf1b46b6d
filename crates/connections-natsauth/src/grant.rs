//! Who may publish and subscribe what: the permissions of each identity the
//! service issues. This file is the trust model; ARCHITECTURE.md explains it.

use connections_wire::Names;
use serde::Serialize;

/// Allowed and denied subjects (NATS wildcards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permission {
    /// Subjects allowed; empty with a non-empty `deny` means "all but those".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Subjects denied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Permission {
    fn allow(subjects: Vec<String>) -> Self {
        Self { allow: subjects, deny: Vec::new() }
    }
}

/// One identity's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Shown as the JWT's name (and in nats-server's connection list).
    pub name: String,
    /// What it may publish.
    pub publish: Permission,
    /// What it may subscribe to.
    pub subscribe: Permission,
    /// At most this many subscriptions at once (-1: no limit).
    pub max_subscriptions: i64,
}

/// Every JetStream API subject that acts on one stream and its consumers.
fn stream_api(stream: &str) -> Vec<String> {
    [
        format!("$JS.API.STREAM.*.{stream}"),
        format!("$JS.API.STREAM.MSG.*.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.*.{stream}"),
        format!("$JS.API.CONSUMER.*.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.ACK.{stream}.>"),
    ]
    .into()
}

impl Grant {
    /// The service itself (relay, projector, API server): publishes
    /// everything under its prefix, manages its own two streams and their
    /// consumers, and receives replies on its own inbox prefix. Nothing
    /// else may do any of that.
    pub fn service(names: &Names) -> Self {
        let mut publish = vec![names.everything(), "$JS.API.INFO".to_owned()];
        publish.extend(stream_api(&names.events_stream()));
        publish.extend(stream_api(&names.notices_stream()));
        Self {
            name: format!("{}-service", names.prefix()),
            publish: Permission::allow(publish),
            subscribe: Permission::allow(vec![format!("{}.>", names.service_inbox())]),
            max_subscriptions: -1,
        }
    }

    /// An agent runtime acting for (owner, agent): subscribes to its own
    /// binding notices and to its owner's connection notices, publishes
    /// only to its own echo subject (which only it hears: the round trip
    /// that tells it nats-server has its subscriptions), no JetStream API,
    /// and holds a bounded number of subscriptions.
    pub fn runtime(names: &Names, owner: &str, agent: &str) -> Self {
        Self {
            name: format!("runtime {owner}/{agent}"),
            publish: Permission::allow(vec![names.runtime_sync(owner, agent)]),
            subscribe: Permission::allow(Self::runtime_subjects(names, owner, agent)),
            max_subscriptions: 1024,
        }
    }

    /// The subjects a runtime for (owner, agent) may subscribe to.
    pub fn runtime_subjects(names: &Names, owner: &str, agent: &str) -> Vec<String> {
        vec![names.agent_notices(owner, agent), names.owner_connection_notices(owner), names.runtime_sync(owner, agent)]
    }

    /// A read-only consumer of the events stream (a data team's pipeline):
    /// it reads the stream through one durable pull consumer of its own,
    /// named [`Grant::reader_consumer`], and receives on its own inbox
    /// prefix ([`Grant::reader_inbox`]). It cannot publish into the stream,
    /// touch the service's consumers, or see notices.
    pub fn reader(names: &Names, reader: &str) -> Self {
        let stream = names.events_stream();
        let consumer = Self::reader_consumer(names, reader);
        Self {
            name: format!("reader {reader}"),
            publish: Permission::allow(vec![
                "$JS.API.INFO".to_owned(),
                format!("$JS.API.STREAM.INFO.{stream}"),
                format!("$JS.API.STREAM.MSG.GET.{stream}"),
                format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"),
                format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.DELETE.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                format!("$JS.ACK.{stream}.{consumer}.>"),
            ]),
            subscribe: Permission::allow(vec![format!("{}.>", Self::reader_inbox(names, reader))]),
            max_subscriptions: 64,
        }
    }

    /// The one consumer a reader may use: `<prefix>_reader_<name>`.
    pub fn reader_consumer(names: &Names, reader: &str) -> String {
        format!("{}_reader_{reader}", names.prefix())
    }

    /// The inbox prefix a reader must use: `_INBOX_<prefix>_reader_<name>`.
    pub fn reader_inbox(names: &Names, reader: &str) -> String {
        format!("_INBOX_{}_reader_{reader}", names.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_publishes_only_to_its_own_echo_and_hears_only_its_own_owner() {
        let names = Names::new("p").expect("prefix");
        let grant = Grant::runtime(&names, "alice", "agent-1");
        assert_eq!(grant.publish, Permission { allow: vec!["p.v2.sync.alice.agent-1".into()], deny: vec![] });
        assert_eq!(
            grant.subscribe.allow,
            ["p.v2.notices.alice.agent.agent-1", "p.v2.notices.alice.connection.*", "p.v2.sync.alice.agent-1"]
        );
    }

    #[test]
    fn the_service_and_readers_stay_inside_their_prefix() {
        let names = Names::new("p").expect("prefix");
        for grant in [Grant::service(&names), Grant::reader(&names, "data")] {
            for subject in grant.publish.allow.iter().chain(&grant.subscribe.allow) {
                assert!(subject == "$JS.API.INFO" || subject.contains("p.") || subject.contains("p_"), "{subject}");
                assert!(!subject.starts_with("_INBOX."), "{subject}");
            }
        }
        assert!(!Grant::reader(&names, "data").publish.allow.iter().any(|s| s.starts_with("p.")));
    }
}
