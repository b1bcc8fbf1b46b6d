//! Idempotency keys: a retried command returns its first answer.

use deadpool_postgres::GenericClient;
use serde_json::Value;

use crate::error::StoreError;

/// A stored answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

/// The outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyClaim {
    /// The key is new: run the command and [`IdempotencyClaim::record`] its answer
    /// in the same transaction.
    Fresh,
    /// The same request was answered before: return this.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Mismatch,
}

impl IdempotencyClaim {
    /// Claims `key` for `owner` and a request with `request_hash`. A
    /// concurrent claim of the same key waits until the first transaction
    /// ends, then sees its answer (or claims the key if it rolled back). A
    /// record older than `expires_after` is taken over as if it were new.
    pub async fn claim(
        client: &impl GenericClient,
        owner: &str,
        key: &str,
        request_hash: &[u8],
        expires_after: std::time::Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let insert = client
            .prepare_cached(
                "INSERT INTO idempotency_keys (owner_id, idempotency_key, request_hash) VALUES ($1, $2, $3) \
                 ON CONFLICT (owner_id, idempotency_key) DO UPDATE \
                 SET request_hash = EXCLUDED.request_hash, response_status = NULL, response_body = NULL, \
                     created_at = now() \
                 WHERE idempotency_keys.created_at < now() - make_interval(secs => $4)",
            )
            .await?;
        let seconds = expires_after.as_secs_f64();
        if client.execute(&insert, &[&owner, &key, &request_hash, &seconds]).await? == 1 {
            return Ok(IdempotencyClaim::Fresh);
        }
        let select = client
            .prepare_cached(
                "SELECT request_hash, response_status, response_body FROM idempotency_keys \
                 WHERE owner_id = $1 AND idempotency_key = $2",
            )
            .await?;
        let row = client.query_one(&select, &[&owner, &key]).await?;
        let stored_hash: Vec<u8> = row.get(0);
        if stored_hash != request_hash {
            return Ok(IdempotencyClaim::Mismatch);
        }
        let status: Option<i16> = row.get(1);
        let body: Option<Value> = row.get(2);
        match (status, body) {
            (Some(status), Some(body)) => Ok(IdempotencyClaim::Replay(StoredResponse { status: status as u16, body })),
            _ => Err(StoreError::Corrupt("idempotency key committed without an answer".into())),
        }
    }

    /// Deletes records older than `expires_after` (they are never replayed;
    /// this keeps the table small). Returns how many were deleted.
    pub async fn expire(client: &impl GenericClient, expires_after: std::time::Duration) -> Result<u64, StoreError> {
        let seconds = expires_after.as_secs_f64();
        Ok(client
            .execute("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)", &[&seconds])
            .await?)
    }

    /// Records the answer to a freshly claimed key.
    pub async fn record(
        client: &impl GenericClient,
        owner: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "UPDATE idempotency_keys SET response_status = $3, response_body = $4 \
                 WHERE owner_id = $1 AND idempotency_key = $2",
            )
            .await?;
        let status = response.status as i16;
        client.execute(&statement, &[&owner, &key, &status, &response.body]).await?;
        Ok(())
    }
}
