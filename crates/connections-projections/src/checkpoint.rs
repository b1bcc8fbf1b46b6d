//! Projector checkpoints: a log cursor per projector, written in the same
//! transaction as the read-model rows it covers.

use connections_store::{LogCursor, StoreError};
use deadpool_postgres::GenericClient;

/// Reads a projector's checkpoint (locking it for the transaction when `for_update`).
pub async fn load(client: &impl GenericClient, name: &str, for_update: bool) -> Result<LogCursor, StoreError> {
    let sql = if for_update {
        "SELECT transaction_id::text, position FROM projector_checkpoints WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT transaction_id::text, position FROM projector_checkpoints WHERE name = $1"
    };
    let row = client.query_opt(sql, &[&name]).await?;
    row.map(|row| {
        let transaction_id: String = row.get(0);
        Ok(LogCursor {
            transaction_id: transaction_id
                .parse()
                .map_err(|_| StoreError::Corrupt("checkpoint transaction id".into()))?,
            position: row.get(1),
        })
    })
    .unwrap_or(Ok(LogCursor::default()))
}

/// Stores a projector's checkpoint.
pub async fn store(client: &impl GenericClient, name: &str, cursor: LogCursor) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO projector_checkpoints (name, transaction_id, position) VALUES ($1, $2::text::xid8, $3) \
             ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id, position = excluded.position, \
             updated_at = now()",
            &[&name, &cursor.transaction_id.to_string(), &cursor.position],
        )
        .await?;
    Ok(())
}
