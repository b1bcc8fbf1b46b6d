//! The committing instance's own copy of urgent notices: a command that
//! revokes or rotates a connection publishes the notice itself, right after
//! its commit and before it answers, so that runtimes drop the credential
//! within milliseconds of the commit whatever the relay has queued ahead of
//! it (a burst of resolves, a large transaction).
//!
//! The copy is published to JetStream and acknowledged once the notices
//! stream has stored it; the acknowledged ids are kept in [`StoredNotices`],
//! shared with the relay in the same process, which then skips its own copy
//! without asking the stream (a second copy would be dropped by the stream,
//! but every runtime holding the connection would hear it: a second fan-out
//! right behind the first). A notice not known here (another instance
//! committed it, or its acknowledgement did not come in time) is looked up
//! on the stream by the relay, and sent when in doubt: runtimes treat
//! notices idempotently. A failed or slow publish here loses nothing (the
//! relay's copy follows) and never fails the command: it is bounded in time
//! and logged.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use connections_wire::{Names, Notice, NoticedEvent};

/// How long a command waits for its urgent notices to reach the NATS server.
const SENT_WITHIN: Duration = Duration::from_millis(250);

/// Publishes urgent notices with the service's own NATS connection.
#[derive(Clone)]
pub struct UrgentNotices {
    client: async_nats::Client,
    context: jetstream::Context,
    names: Names,
    stored: StoredNotices,
}

impl UrgentNotices {
    /// Notices through `client` (connected with the service's grant, which
    /// may publish notices) under `names`; what the notices stream
    /// acknowledged is recorded in `stored` (the relay's, from [`Signals`](crate::Signals)).
    pub fn new(client: async_nats::Client, names: Names, stored: StoredNotices) -> Self {
        Self { context: jetstream::new(client.clone()), client, names, stored }
    }

    /// The urgent notices among `events` (committed), with their subjects.
    pub fn of<'e>(&self, events: impl IntoIterator<Item = NoticedEvent<'e>>) -> Vec<(String, Notice)> {
        events
            .into_iter()
            .filter_map(|event| Notice::for_committed(&event, &self.names))
            .filter(|(_, notice)| notice.is_urgent())
            .collect()
    }

    /// Publishes `notices` and waits (boundedly) until the notices stream
    /// has stored them. While the connection is down nothing is queued: the
    /// relay's copies follow once NATS is back.
    pub async fn publish(&self, notices: &[(String, Notice)]) {
        if notices.is_empty() {
            return;
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            tracing::warn!("NATS is down: urgent notices are left to the relay");
            return;
        }
        let stored = async {
            let mut acks: Vec<(String, PublishAckFuture)> = Vec::with_capacity(notices.len());
            for (subject, notice) in notices {
                let message_id = notice.message_id();
                let payload = Bytes::from(serde_json::to_vec(notice).expect("a notice always serializes"));
                let message = jetstream::message::PublishMessage::build().payload(payload).message_id(&message_id);
                let ack = self.context.send_publish(subject.clone(), message).await.map_err(|e| e.to_string())?;
                acks.push((message_id, ack));
            }
            for (message_id, ack) in acks {
                ack.await.map_err(|e| e.to_string())?;
                self.stored.insert(message_id);
            }
            Ok::<_, String>(())
        };
        match tokio::time::timeout(SENT_WITHIN, stored).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "urgent notices not stored; the relay's copies follow"),
            Err(_) => tracing::warn!("urgent notices not stored in time; the relay's copies follow"),
        }
    }
}

/// How many acknowledged urgent notices [`StoredNotices`] remembers (the
/// relay takes each one as it reaches its event, normally within
/// milliseconds; older ones are forgotten first, and the relay then asks
/// the stream).
const REMEMBERED: usize = 4096;

/// The message ids of urgent notices this process put on the notices
/// stream and had acknowledged, for the relay to skip.
#[derive(Clone, Default)]
pub struct StoredNotices {
    ids: Arc<Mutex<Remembered>>,
}

#[derive(Default)]
struct Remembered {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl StoredNotices {
    /// Records that the stream acknowledged `message_id`.
    pub fn insert(&self, message_id: String) {
        let mut ids = self.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ids.set.insert(message_id.clone()) {
            ids.order.push_back(message_id);
        }
        while ids.order.len() > REMEMBERED {
            if let Some(oldest) = ids.order.pop_front() {
                ids.set.remove(&oldest);
            }
        }
    }

    /// Whether `message_id` was acknowledged (and forgets it: the relay
    /// reaches each event once per session).
    pub fn take(&self, message_id: &str) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let known = ids.set.remove(message_id);
        if known {
            ids.order.retain(|id| id != message_id);
        }
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_notice_is_taken_once() {
        let stored = StoredNotices::default();
        stored.insert("notice-a".into());
        stored.insert("notice-a".into());
        assert!(stored.take("notice-a"));
        assert!(!stored.take("notice-a"));
        assert!(!stored.take("notice-b"));
    }

    #[test]
    fn the_oldest_are_forgotten_first() {
        let stored = StoredNotices::default();
        for i in 0..=REMEMBERED {
            stored.insert(format!("notice-{i}"));
        }
        assert!(!stored.take("notice-0"));
        assert!(stored.take("notice-1"));
        assert!(stored.take(&format!("notice-{REMEMBERED}")));
    }
}
