//! The committing instance's own copy of urgent notices: a command that
//! revokes or rotates a connection publishes the notice itself, right after
//! its commit and before it answers, so that runtimes drop the credential
//! within milliseconds of the commit whatever the relay has queued ahead of
//! it (a burst of resolves, a large transaction).
//!
//! The copy is published to JetStream and acknowledged once the notices
//! stream has stored it. [`StoredNotices`], shared with the relay in the same
//! process, knows each copy from before the commit until it is acknowledged
//! (or given up): the relay, which hears of the commit at the same moment as
//! the command, waits for a copy still being sent and skips an acknowledged
//! one without asking the stream (a second copy would be dropped by the
//! stream, but every runtime holding the connection would hear it: a second
//! fan-out right behind the first). A notice not known here (another instance
//! committed it, or its copy failed or was not acknowledged in time) is
//! looked up on the stream by the relay, and sent when in doubt: runtimes
//! treat notices idempotently. A failed or slow publish here loses nothing
//! (the relay's copy follows) and never fails the command: it is bounded in
//! time and logged.

use std::collections::{HashMap, VecDeque};
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

    /// The urgent notices among `events`, with their subjects, recorded as
    /// being sent. Call it before the events' commit: the relay hears of
    /// the commit as soon as this process does, and must find them there
    /// (it then waits for this copy instead of sending its own). Dropped
    /// unpublished (the transaction rolled back), they are forgotten.
    pub fn of<'e>(&self, events: impl IntoIterator<Item = NoticedEvent<'e>>) -> Outgoing {
        let notices = events
            .into_iter()
            .filter_map(|event| Notice::for_committed(&event, &self.names))
            .filter(|(_, notice)| notice.is_urgent())
            .map(|(subject, notice)| {
                let sending = self.stored.sending(notice.message_id());
                (subject, notice, sending)
            })
            .collect();
        Outgoing { notices }
    }

    /// Publishes `outgoing` (committed) and waits (boundedly) until the
    /// notices stream has stored them. While the connection is down nothing
    /// is queued: the relay's copies follow once NATS is back.
    pub async fn publish(&self, outgoing: Outgoing) {
        let notices = outgoing.notices;
        if notices.is_empty() {
            return;
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            tracing::warn!("NATS is down: urgent notices are left to the relay");
            return;
        }
        // Dropping a `Sending` (an error, the time bound) tells the relay
        // that its own copy is needed.
        let stored = async {
            let mut acks: Vec<(Sending, PublishAckFuture)> = Vec::with_capacity(notices.len());
            for (subject, notice, sending) in notices {
                let payload = Bytes::from(serde_json::to_vec(&notice).expect("a notice always serializes"));
                let message =
                    jetstream::message::PublishMessage::build().payload(payload).message_id(notice.message_id());
                let ack = self.context.send_publish(subject, message).await.map_err(|e| e.to_string())?;
                acks.push((sending, ack));
            }
            for (sending, ack) in acks {
                ack.await.map_err(|e| e.to_string())?;
                sending.stored();
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

/// A command's urgent notices, recorded as being sent (see
/// [`UrgentNotices::of`]).
#[derive(Default)]
pub struct Outgoing {
    notices: Vec<(String, Notice, Sending)>,
}

/// How many urgent notices [`StoredNotices`] remembers (the relay takes
/// each one as it reaches its event, normally within milliseconds; older
/// ones are forgotten first, and the relay then asks the stream).
const REMEMBERED: usize = 4096;

/// The message ids of urgent notices this process is putting, or has put,
/// on the notices stream, for the relay to skip.
#[derive(Clone, Default)]
pub struct StoredNotices {
    ids: Arc<Mutex<Remembered>>,
    /// Signalled whenever a copy being sent is acknowledged or given up.
    settled: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Remembered {
    /// `false` while the copy is being sent, `true` once acknowledged.
    stored: HashMap<String, bool>,
    order: VecDeque<String>,
}

impl Remembered {
    fn remember(&mut self, message_id: String, stored: bool) {
        if self.stored.insert(message_id.clone(), stored).is_none() {
            self.order.push_back(message_id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.stored.remove(&oldest);
            }
        }
    }

    fn forget(&mut self, message_id: &str) {
        if self.stored.remove(message_id).is_some() {
            self.order.retain(|id| id != message_id);
        }
    }
}

/// A copy on its way to the notices stream: [`Sending::stored`] once it is
/// acknowledged; dropped before that, it is forgotten (the relay sends its
/// own).
#[must_use]
pub struct Sending {
    notices: StoredNotices,
    message_id: Option<String>,
}

impl Sending {
    /// The stream acknowledged the copy.
    pub fn stored(mut self) {
        if let Some(message_id) = self.message_id.take() {
            self.notices.insert(message_id);
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(message_id) = self.message_id.take() {
            self.notices.lock().forget(&message_id);
            self.notices.settled.notify_waiters();
        }
    }
}

impl StoredNotices {
    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that a copy of `message_id` is about to be sent.
    pub fn sending(&self, message_id: String) -> Sending {
        self.lock().remember(message_id.clone(), false);
        Sending { notices: self.clone(), message_id: Some(message_id) }
    }

    /// Records that the stream acknowledged `message_id`.
    pub fn insert(&self, message_id: String) {
        self.lock().remember(message_id, true);
        self.settled.notify_waiters();
    }

    /// Whether `message_id` was acknowledged (and forgets it: the relay
    /// reaches each event once per session). A copy still being sent is
    /// not (yet) acknowledged: see [`StoredNotices::settle`].
    pub fn take(&self, message_id: &str) -> bool {
        let mut ids = self.lock();
        let known = ids.stored.get(message_id) == Some(&true);
        if known {
            ids.forget(message_id);
        }
        known
    }

    /// Like [`StoredNotices::take`], but a copy still being sent is waited
    /// for, up to `within`: acknowledged, it is taken (true); given up, or
    /// still unsettled at the bound, the answer is no.
    pub async fn settle(&self, message_id: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before looking, so that a change in between wakes it.
            let changed = self.settled.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.lock().stored.get(message_id) != Some(&false) {
                return self.take(message_id);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.take(message_id);
            }
        }
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

    #[test]
    fn a_copy_being_sent_is_not_yet_stored() {
        let stored = StoredNotices::default();
        let sending = stored.sending("notice-a".into());
        assert!(!stored.take("notice-a"));
        sending.stored();
        assert!(stored.take("notice-a"));
    }

    #[tokio::test]
    async fn settling_waits_for_a_copy_being_sent() {
        let stored = StoredNotices::default();
        let sending = stored.sending("notice-a".into());
        let acknowledged = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sending.stored();
        });
        assert!(stored.settle("notice-a", Duration::from_secs(5)).await);
        acknowledged.await.expect("acknowledged");
        assert!(!stored.take("notice-a"), "taken by the settle");
    }

    #[tokio::test]
    async fn a_copy_given_up_settles_as_not_stored() {
        let stored = StoredNotices::default();
        let sending = stored.sending("notice-a".into());
        let given_up = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(sending);
        });
        let started = std::time::Instant::now();
        assert!(!stored.settle("notice-a", Duration::from_secs(5)).await);
        assert!(started.elapsed() < Duration::from_secs(5), "woken by the drop, not the bound");
        given_up.await.expect("given up");
        assert!(!stored.settle("notice-b", Duration::from_secs(5)).await, "unknown: no wait");
    }

    #[tokio::test]
    async fn settling_is_bounded() {
        let stored = StoredNotices::default();
        let _sending = stored.sending("notice-a".into());
        assert!(!stored.settle("notice-a", Duration::from_millis(30)).await);
    }
}
