//! Sealing rows written before hash chains existed (migration V6): run once
//! by [`crate::migrate`], under its lock, before any server appends.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::chain::{self, ChainHash};
use crate::error::StoreError;
use crate::log::{recorded, stored_hash, COLUMNS};

/// Fills in the chain of every unchained event and access record; returns
/// how many rows it sealed. Each stream (and each connection's access
/// records) is sealed in its own transaction.
pub(crate) async fn seal_unchained(client: &mut Client) -> Result<u64, StoreError> {
    let mut sealed = 0;
    let streams = client.query("SELECT DISTINCT stream_id FROM events WHERE hash IS NULL", &[]).await?;
    for stream in streams {
        let stream_id: String = stream.get(0);
        let transaction = client.transaction().await?;
        let rows = transaction
            .query(
                &format!("SELECT {COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version FOR UPDATE"),
                &[&stream_id],
            )
            .await?;
        let mut previous = ChainHash::GENESIS;
        for row in &rows {
            let event = recorded(row)?;
            previous = match event.hash {
                Some(hash) => hash,
                None => {
                    let hash = chain::recorded_event_hash(&previous, &event);
                    transaction
                        .execute(
                            "UPDATE events SET previous_hash = $1::bytea, hash = $2::bytea WHERE position = $3",
                            &[&previous.0.as_slice(), &hash.0.as_slice(), &event.position],
                        )
                        .await?;
                    sealed += 1;
                    hash
                }
            };
        }
        transaction.commit().await?;
    }
    let connections = client.query("SELECT DISTINCT connection_id FROM access_log WHERE hash IS NULL", &[]).await?;
    for connection in connections {
        let connection_id: Uuid = connection.get(0);
        let transaction = client.transaction().await?;
        let rows = transaction
            .query(
                "SELECT access_id, credential_version, agent_id, owner_id, request_id, accessed_at, hash \
                 FROM access_log WHERE connection_id = $1 ORDER BY access_id FOR UPDATE",
                &[&connection_id],
            )
            .await?;
        let mut previous = ChainHash::GENESIS;
        for row in &rows {
            previous = match stored_hash(row, 6)? {
                Some(hash) => hash,
                None => {
                    let access_id: i64 = row.get(0);
                    let accessed_at: DateTime<Utc> = row.get(5);
                    let content = chain::access_content(connection_id, row.get(1), row.get(2), row.get(3), row.get(4));
                    let hash = chain::access_hash(&previous, &content, access_id, accessed_at);
                    transaction
                        .execute(
                            "UPDATE access_log SET previous_hash = $1::bytea, hash = $2::bytea WHERE access_id = $3",
                            &[&previous.0.as_slice(), &hash.0.as_slice(), &access_id],
                        )
                        .await?;
                    sealed += 1;
                    hash
                }
            };
        }
        transaction.commit().await?;
    }
    Ok(sealed)
}
