//! The committing instance's own copy of urgent notices: a command that
//! revokes or rotates a connection publishes the notice itself, right after
//! its commit and before it answers, so that runtimes drop the credential
//! within milliseconds of the commit whatever the relay has queued ahead of
//! it (a burst of resolves, a large transaction).
//!
//! The relay still publishes every notice from the log, in its turn: this
//! copy only comes first. It carries the same `Nats-Msg-Id`, so the notices
//! stream keeps one; runtimes treat notices idempotently and may hear it
//! twice. A failed or slow publish here loses nothing (the relay's follows)
//! and never fails the command: it is bounded in time and logged.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use connections_wire::{Names, Notice, NoticedEvent};

/// How long a command waits for its urgent notices to reach the NATS server.
const SENT_WITHIN: Duration = Duration::from_millis(250);

/// Publishes urgent notices with the service's own NATS connection.
#[derive(Clone)]
pub struct UrgentNotices {
    client: async_nats::Client,
    names: Names,
}

impl UrgentNotices {
    /// Notices through `client` (connected with the service's grant, which
    /// may publish notices) under `names`.
    pub fn new(client: async_nats::Client, names: Names) -> Self {
        Self { client, names }
    }

    /// The urgent notices among `events` (committed), with their subjects.
    pub fn of<'e>(&self, events: impl IntoIterator<Item = NoticedEvent<'e>>) -> Vec<(String, Notice)> {
        events
            .into_iter()
            .filter_map(|event| Notice::for_committed(&event, &self.names))
            .filter(|(_, notice)| notice.is_urgent())
            .collect()
    }

    /// Publishes `notices` and waits (boundedly) until the server has them.
    /// While the connection is down nothing is queued: the relay's copies
    /// follow once NATS is back.
    pub async fn publish(&self, notices: &[(String, Notice)]) {
        if notices.is_empty() {
            return;
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            tracing::warn!("NATS is down: urgent notices are left to the relay");
            return;
        }
        let sent = async {
            for (subject, notice) in notices {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", notice.message_id().as_str());
                let payload = Bytes::from(serde_json::to_vec(notice).expect("a notice always serializes"));
                self.client.publish_with_headers(subject.clone(), headers, payload).await.map_err(|e| e.to_string())?;
            }
            self.client.flush().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(SENT_WITHIN, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "urgent notices not sent; the relay's copies follow"),
            Err(_) => tracing::warn!("urgent notices not sent in time; the relay's copies follow"),
        }
    }
}
