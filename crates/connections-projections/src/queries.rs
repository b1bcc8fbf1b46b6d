//! Owner-scoped reads of the dashboard read models.
//!
//! Every read runs in a transaction that switches to the `connections_reader`
//! role and names the owner in `connections.owner`; row-level security then
//! returns only that owner's rows, whatever the query says. The WHERE
//! clauses below are for the indexes, not for isolation.

use chrono::{DateTime, Utc};
use connections_store::{Database, EventLog, LogCursor, StoreError};
use deadpool_postgres::Transaction;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

/// One card of the Connections page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceCard {
    /// The service.
    pub service: String,
    /// Active connections for it.
    pub active_connections: i32,
    /// The default connection, if any.
    pub default_connection_id: Option<Uuid>,
    /// Agents using any of its connections.
    pub agent_count: i32,
    /// Active connections whose credential a provider rejected (reported by
    /// a runtime) and that the owner has not rotated, replaced or revoked.
    pub needs_attention: i64,
}

/// One connection in the list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionSummary {
    /// Its id.
    pub connection_id: Uuid,
    /// Its service.
    pub service: String,
    /// Its name.
    pub name: String,
    /// The skill it was created for.
    pub skill: Option<String>,
    /// `oauth2`, `api_key` or `basic`.
    pub credential_kind: String,
    /// The current credential version.
    pub credential_version: i32,
    /// `active` or `revoked`.
    pub status: String,
    /// Whether it is the default for its service.
    pub is_default: bool,
    /// Whether a runtime reported that the provider rejected its current
    /// credential (until it is rotated, replaced or revoked).
    pub needs_attention: bool,
    /// Agents using it.
    pub agent_count: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub last_changed_at: DateTime<Utc>,
}

/// One agent in a connection's usage overview.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentUsage {
    /// The agent.
    pub agent_id: String,
    /// How it was bound: `created` or `assigned`.
    pub source: String,
    /// Since when.
    pub since: DateTime<Utc>,
}

/// One entry of an owner's change feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The log cursor of the event, `tx:position` (the SSE event id).
    pub id: String,
    /// The event's position.
    pub position: i64,
    /// The event type.
    pub event_type: String,
    /// The connection it changed.
    pub connection_id: Uuid,
    /// Its service.
    pub service: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// Which connections to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Only active ones (the default).
    Active,
    /// Only revoked ones.
    Revoked,
    /// Both.
    All,
}

/// Opens a read transaction scoped to `owner` under row-level security.
pub async fn scoped<'c>(client: &'c mut deadpool_postgres::Object, owner: &str) -> Result<Transaction<'c>, StoreError> {
    let transaction = client.build_transaction().read_only(true).start().await?;
    transaction
        .execute(
            "SELECT set_config('role', 'connections_reader', true), set_config('connections.owner', $1, true)",
            &[&owner],
        )
        .await?;
    Ok(transaction)
}

/// The owner's service cards, by service name.
pub async fn services(database: &Database, owner: &str) -> Result<Vec<ServiceCard>, StoreError> {
    let mut client = database.pool().get().await?;
    let transaction = scoped(&mut client, owner).await?;
    let rows = transaction
        .query(
            "SELECT s.service, s.active_connections, s.default_connection_id, s.agent_count, \
                    (SELECT count(*) FROM rm_connections c WHERE c.owner_id = s.owner_id AND c.service = s.service \
                       AND c.status = 'active' AND c.needs_attention) \
             FROM rm_services s \
             WHERE s.owner_id = $1 AND (s.active_connections > 0 OR s.agent_count > 0) ORDER BY s.service",
            &[&owner],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ServiceCard {
            service: row.get(0),
            active_connections: row.get(1),
            default_connection_id: row.get(2),
            agent_count: row.get(3),
            needs_attention: row.get(4),
        })
        .collect())
}

/// A page of the owner's connections in id order (UUIDv7: creation order),
/// after `after`.
pub async fn connections(
    database: &Database,
    owner: &str,
    service: Option<&str>,
    status: StatusFilter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ConnectionSummary>, StoreError> {
    let mut client = database.pool().get().await?;
    let transaction = scoped(&mut client, owner).await?;
    let status: Option<&str> = match status {
        StatusFilter::Active => Some("active"),
        StatusFilter::Revoked => Some("revoked"),
        StatusFilter::All => None,
    };
    let rows = transaction
        .query(
            "SELECT connection_id, service, name, skill, credential_kind, credential_version, status, is_default, \
                    agent_count, created_at, last_changed_at, needs_attention FROM rm_connections \
             WHERE owner_id = $1 AND ($2::text IS NULL OR service = $2) AND ($3::text IS NULL OR status = $3) \
               AND ($4::uuid IS NULL OR connection_id > $4) \
             ORDER BY connection_id LIMIT $5",
            &[&owner, &service, &status, &after, &limit],
        )
        .await?;
    Ok(rows.iter().map(summary).collect())
}

fn summary(row: &Row) -> ConnectionSummary {
    ConnectionSummary {
        connection_id: row.get(0),
        service: row.get(1),
        name: row.get(2),
        skill: row.get(3),
        credential_kind: row.get(4),
        credential_version: row.get(5),
        status: row.get(6),
        is_default: row.get(7),
        agent_count: row.get(8),
        created_at: row.get(9),
        last_changed_at: row.get(10),
        needs_attention: row.get(11),
    }
}

/// One connection and its agents, or `None` if the owner has no such connection.
pub async fn connection_usage(
    database: &Database,
    owner: &str,
    connection_id: Uuid,
) -> Result<Option<(ConnectionSummary, Vec<AgentUsage>)>, StoreError> {
    let mut client = database.pool().get().await?;
    let transaction = scoped(&mut client, owner).await?;
    let Some(row) = transaction
        .query_opt(
            "SELECT connection_id, service, name, skill, credential_kind, credential_version, status, is_default, \
                    agent_count, created_at, last_changed_at, needs_attention FROM rm_connections \
             WHERE owner_id = $1 AND connection_id = $2",
            &[&owner, &connection_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let agents = transaction
        .query(
            "SELECT agent_id, source, since FROM rm_connection_agents WHERE owner_id = $1 AND connection_id = $2 \
             ORDER BY agent_id",
            &[&owner, &connection_id],
        )
        .await?
        .iter()
        .map(|row| AgentUsage { agent_id: row.get(0), source: row.get(1), since: row.get(2) })
        .collect();
    Ok(Some((summary(&row), agents)))
}

/// The owner's changes after `cursor`, in log order.
pub async fn changes_after(
    database: &Database,
    owner: &str,
    cursor: LogCursor,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    let mut client = database.pool().get().await?;
    let transaction = scoped(&mut client, owner).await?;
    let rows = transaction
        .query(
            "SELECT transaction_id::text AS transaction_id_text, position, event_type, connection_id, service, occurred_at \
             FROM rm_changes WHERE owner_id = $1 AND (transaction_id, position) > ($2::text::xid8, $3) \
             ORDER BY rm_changes.transaction_id, rm_changes.position LIMIT $4",
            &[&owner, &cursor.transaction_id.to_string(), &cursor.position, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let transaction_id: String = row.get(0);
            let position: i64 = row.get(1);
            Change {
                id: format!("{transaction_id}:{position}"),
                position,
                event_type: row.get(2),
                connection_id: row.get(3),
                service: row.get(4),
                occurred_at: row.get(5),
            }
        })
        .collect())
}

/// How far the dashboard projection is behind the log.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    /// The projector's checkpoint, `tx:position`.
    pub checkpoint: String,
    /// Committed events not yet projected.
    pub events: i64,
    /// Age of the oldest unprojected event, in milliseconds (0 when caught up).
    pub milliseconds: i64,
}

/// The dashboard projection's lag.
pub async fn lag(database: &Database) -> Result<Lag, StoreError> {
    let client = database.pool().get().await?;
    let cursor = crate::checkpoint::load(&client, crate::DASHBOARD, false).await?;
    let (events, milliseconds) = EventLog::backlog_after(&client, cursor).await?;
    Ok(Lag { checkpoint: format!("{}:{}", cursor.transaction_id, cursor.position), events, milliseconds })
}

/// Where the event at a position stands for the dashboard projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionStatus {
    /// Applied: reads include it.
    Applied,
    /// Committed, not applied yet: wait for the projection to pass `target`.
    Pending {
        /// The event's place in the log's order.
        target: LogCursor,
    },
    /// No event has this position and the log has not reached it: no
    /// answer ever named it.
    BeyondHead,
    /// Below the head but no event: a position a rolled-back transaction took.
    NoSuchEvent,
}

/// Where the event at `position` stands (one connection, two statements).
pub async fn position_status(database: &Database, position: i64) -> Result<PositionStatus, StoreError> {
    let client = database.pool().get().await?;
    let checkpoint = crate::checkpoint::load(&client, crate::DASHBOARD, false).await?;
    let (cursor, head) = EventLog::cursor_at(&client, position).await?;
    Ok(match cursor {
        None if position > head => PositionStatus::BeyondHead,
        None => PositionStatus::NoSuchEvent,
        Some(target) => {
            if target <= checkpoint {
                PositionStatus::Applied
            } else {
                PositionStatus::Pending { target }
            }
        }
    })
}
