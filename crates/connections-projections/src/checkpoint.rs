//! Projector checkpoints: a log cursor per projector, written in the same
//! transaction as the read-model rows it covers.

use connections_store::{LogCursor, StoreError};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

/// Reads a checkpoint: `$1` the projector's name.
pub const LOAD: &str = "SELECT transaction_id::text, position FROM projector_checkpoints WHERE name = $1";
/// Reads a checkpoint and locks it for the transaction: `$1` the projector's name.
pub const LOAD_FOR_UPDATE: &str =
    "SELECT transaction_id::text, position FROM projector_checkpoints WHERE name = $1 FOR UPDATE";
/// Stores a checkpoint: `$1` the name, `$2` the transaction id (text), `$3` the position.
pub const STORE: &str =
    "INSERT INTO projector_checkpoints (name, transaction_id, position) VALUES ($1, $2::text::xid8, $3) \
     ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id, position = excluded.position, \
     updated_at = now()";

/// Moves a checkpoint from where it was read: `$1` the name, `$2` and `$3`
/// the new transaction id (text) and position, `$4` and `$5` the old ones.
/// Fails, aborting the transaction, if the checkpoint is no longer there (a
/// rebuild swapped in tables at another cursor, or another projector moved
/// it); the error's message says so. The cast of a text that names the
/// problem is how plain SQL raises an error.
pub const ADVANCE: &str = "WITH moved AS ( \
        INSERT INTO projector_checkpoints AS c (name, transaction_id, position) VALUES ($1, $2::text::xid8, $3) \
        ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id, position = excluded.position, \
            updated_at = now() \
        WHERE c.transaction_id = $4::text::xid8 AND c.position = $5 \
        RETURNING 1) \
    SELECT CASE WHEN count(*) = 1 THEN 1 ELSE ('checkpoint moved: ' || count(*))::int END FROM moved";

/// Whether `error` is [`ADVANCE`] finding the checkpoint moved.
pub fn moved(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|e| e.message().contains("checkpoint moved"))
}

/// Reads a projector's checkpoint (locking it for the transaction when `for_update`).
pub async fn load(client: &impl GenericClient, name: &str, for_update: bool) -> Result<LogCursor, StoreError> {
    let statement = client.prepare_cached(if for_update { LOAD_FOR_UPDATE } else { LOAD }).await?;
    from_row(client.query_opt(&statement, &[&name]).await?)
}

/// The cursor of a row read by [`LOAD`] (the start of the log when there is none).
pub fn from_row(row: Option<Row>) -> Result<LogCursor, StoreError> {
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
    let statement = client.prepare_cached(STORE).await?;
    client.execute(&statement, &[&name, &cursor.transaction_id.to_string(), &cursor.position]).await?;
    Ok(())
}
