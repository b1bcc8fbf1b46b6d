//! Master key rotation: re-wrapping every live data key under the current
//! master key while the servers keep serving.
//!
//! Each connection is re-wrapped by its own command
//! (`Command::RewrapDataKey` → `data_key_rewrapped`, no key material) on its
//! stream, so it is serialized with that connection's other commands:
//! - a revoke that commits first leaves nothing to re-wrap (the domain
//!   refuses a revoked connection); one that comes after destroys the
//!   re-wrapped key as it would have the old one;
//! - two rewrappers at once: the second finds the key already moved and
//!   appends nothing (`rewrap-stale`);
//! - a crash loses at most the connections in flight, which are still under
//!   the old key: running it again finishes the job.

use connections_domain::{Command, MasterKeyId, OwnerId};
use connections_store::{StoreError, StoredCredential};
use futures::StreamExt;

use crate::commands::{execute_for_owner, CommandInput, Target};
use crate::problem::ApiError;
use crate::state::AppState;

/// What a rewrap did, and what is left.
#[derive(Debug, Default)]
pub struct RewrapReport {
    /// Data keys moved to the current master key.
    pub rewrapped: usize,
    /// Keys another rewrapper moved first, or connections revoked meanwhile.
    pub skipped: usize,
    /// Live data keys per master key id afterwards.
    pub remaining: Vec<(String, i64)>,
}

/// Live data keys per master key id.
pub async fn key_counts(app: &AppState) -> Result<Vec<(String, i64)>, ApiError> {
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    Ok(StoredCredential::key_counts(&client).await?)
}

/// Re-wraps every live data key wrapped under a previous key of the
/// keyring, `batch` connections listed at a time, `concurrency` at once.
/// Keys under an id the keyring does not hold are left (and counted).
pub async fn rewrap_all(app: &AppState, batch: i64, concurrency: usize) -> Result<RewrapReport, ApiError> {
    let current = MasterKeyId::parse(app.master_key.key_id()).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let previous: Vec<&str> = app.master_key.key_ids().into_iter().skip(1).collect();
    let mut report = RewrapReport::default();
    let mut after = None;
    loop {
        let page = {
            let client = app.database.pool().get().await.map_err(StoreError::from)?;
            StoredCredential::wrapped_under(&client, &previous, after, batch).await?
        };
        let Some((last, _, _)) = page.last() else {
            break;
        };
        after = Some(*last);
        let outcomes: Vec<Result<bool, ApiError>> = futures::stream::iter(page)
            .map(|(connection_id, owner, from)| {
                let current = current.clone();
                async move {
                    let owner = OwnerId::parse(owner).map_err(|e| ApiError::Internal(Box::new(e)))?;
                    let from_key_id = MasterKeyId::parse(from).map_err(|e| ApiError::Internal(Box::new(e)))?;
                    let input = CommandInput {
                        actor: owner,
                        target: Target::Connection(connection_id),
                        command: Command::RewrapDataKey { connection_id, from_key_id, to_key_id: current },
                        credential: None,
                        idempotency: None,
                    };
                    match execute_for_owner(app, input, "rekey").await {
                        Ok(_) => Ok(true),
                        Err(ApiError::RewrapStale | ApiError::Revoked | ApiError::NotFound) => Ok(false),
                        Err(error) => Err(error),
                    }
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for outcome in outcomes {
            if outcome? {
                report.rewrapped += 1;
            } else {
                report.skipped += 1;
            }
        }
    }
    report.remaining = key_counts(app).await?;
    Ok(report)
}
