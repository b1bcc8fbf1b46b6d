//! History reads for audit: an owner's or a connection's events in log order.

use connections_domain::{ConnectionId, OwnerId};
use deadpool_postgres::GenericClient;

use crate::error::StoreError;
use crate::log::{recorded, RecordedEvent, StreamId, COLUMNS};

/// Every event of `owner`'s streams, in the log's global order.
pub async fn owner_history(client: &impl GenericClient, owner: &OwnerId) -> Result<Vec<RecordedEvent>, StoreError> {
    let pattern = StreamId::owner_pattern(owner);
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM events WHERE stream_id LIKE $1 ORDER BY events.transaction_id, events.position"
            ),
            &[&pattern],
        )
        .await?;
    rows.iter().map(recorded).collect()
}

/// One page of the events about one connection, in the log's global order:
/// at most `limit` after `after` (from the start when `None`).
pub async fn connection_history_page(
    client: &impl GenericClient,
    connection_id: ConnectionId,
    after: Option<crate::LogCursor>,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let after = after.unwrap_or_default();
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM events WHERE stream_id = (SELECT 'owner-service/' || owner_id || '/' || service \
                 FROM connection_locator WHERE connection_id = $1) AND data->>'connection_id' = $1::text \
                 AND (events.transaction_id, events.position) > ($2::text::xid8, $3) \
                 ORDER BY events.transaction_id, events.position LIMIT $4"
            ),
            &[&connection_id.as_uuid(), &after.transaction_id.to_string(), &after.position, &limit],
        )
        .await?;
    rows.iter().map(recorded).collect()
}
