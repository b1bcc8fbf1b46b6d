//! Pending OAuth authorization-code flows (migration V13): created by a
//! connect, consumed once by its callback.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;

use crate::error::StoreError;

/// A flow waiting for its callback.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingFlow {
    /// The keyed fingerprint of its `state`.
    pub state_hash: Vec<u8>,
    /// The user who started it.
    pub owner: String,
    /// The service being connected.
    pub service: String,
    /// What the user asked for (name, agent, skill, scopes), as JSON.
    pub request: Value,
    /// The keyed fingerprint of the browser binding cookie.
    pub browser_hash: Vec<u8>,
    /// When it stops being usable.
    pub expires_at: DateTime<Utc>,
}

/// What consuming a state found.
#[derive(Debug, Clone, PartialEq)]
pub enum Consumed {
    /// It was pending and is now used: the flow may complete.
    Fresh(PendingFlow),
    /// It was used before.
    Used,
    /// It expired before it was used (now marked used).
    Expired,
    /// No flow has this state.
    Unknown,
}

impl PendingFlow {
    /// Stores the flow (and forgets flows that expired a day ago).
    pub async fn insert(&self, client: &impl GenericClient) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "WITH forgotten AS (DELETE FROM oauth_states WHERE expires_at < now() - interval '1 day') \
                 INSERT INTO oauth_states (state_hash, owner_id, service, request, browser_hash, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        client
            .execute(
                &statement,
                &[&self.state_hash, &self.owner, &self.service, &self.request, &self.browser_hash, &self.expires_at],
            )
            .await?;
        Ok(())
    }

    /// Marks the flow of `state_hash` used, atomically: of two callbacks
    /// with one state, one gets `Fresh` and the other `Used`.
    pub async fn consume(client: &impl GenericClient, state_hash: &[u8]) -> Result<Consumed, StoreError> {
        let statement = client
            .prepare_cached(
                "WITH pending AS (SELECT state_hash, used_at IS NOT NULL AS was_used, expires_at <= now() AS was_expired \
                                  FROM oauth_states WHERE state_hash = $1 FOR UPDATE), \
                      marked AS (UPDATE oauth_states SET used_at = now() FROM pending \
                                 WHERE oauth_states.state_hash = pending.state_hash AND NOT pending.was_used \
                                 RETURNING oauth_states.owner_id, oauth_states.service, oauth_states.request, \
                                           oauth_states.browser_hash, oauth_states.expires_at) \
                 SELECT pending.was_used, pending.was_expired, marked.owner_id, marked.service, marked.request, \
                        marked.browser_hash, marked.expires_at \
                 FROM pending LEFT JOIN marked ON true",
            )
            .await?;
        let Some(row) = client.query_opt(&statement, &[&state_hash]).await? else {
            return Ok(Consumed::Unknown);
        };
        let (was_used, was_expired): (bool, bool) = (row.get(0), row.get(1));
        if was_used {
            return Ok(Consumed::Used);
        }
        if was_expired {
            return Ok(Consumed::Expired);
        }
        Ok(Consumed::Fresh(PendingFlow {
            state_hash: state_hash.to_vec(),
            owner: row.get(2),
            service: row.get(3),
            request: row.get(4),
            browser_hash: row.get(5),
            expires_at: row.get(6),
        }))
    }
}
