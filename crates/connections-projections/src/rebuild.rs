//! `connections projections rebuild`: the dashboard read models from the
//! start of the log, folded in memory and written in bulk into fresh
//! `*_rebuild` tables, then swapped in. The API keeps reading the old tables
//! until the swap, which happens in one short transaction holding the
//! projector's checkpoint row, so the live projector pauses and resumes from
//! exactly where the rebuilt tables are.
//!
//! The fold is the live projector's (`crate::model`); the end-to-end tests
//! compare a live projection with a rebuild.

use std::time::{Duration, Instant};

use connections_store::codec::decode;
use connections_store::{Database, EventLog, LogCursor, RecordedEvent, StoreError};
use deadpool_postgres::GenericClient;

use crate::model::{Fact, Model};
use crate::{checkpoint, DASHBOARD};

/// The projections that can be rebuilt.
pub const PROJECTIONS: &[&str] = &[DASHBOARD];

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// Events folded.
    pub events: u64,
    /// The cursor the rebuilt tables (and the checkpoint) stand at.
    pub cursor: LogCursor,
    /// Time spent reading and folding the log.
    pub fold: Duration,
    /// Time spent writing the tables and swapping them in.
    pub write: Duration,
}

/// Rebuilds the projection `name` and swaps it in.
pub async fn rebuild(database: &Database, name: &str) -> Result<RebuildReport, StoreError> {
    if !PROJECTIONS.contains(&name) {
        return Err(StoreError::Configuration(format!("no projection named {name:?}; known: {PROJECTIONS:?}")));
    }
    let started = Instant::now();
    let mut client = database.pool().get().await?;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS rm_connections_rebuild, rm_services_rebuild, rm_connection_agents_rebuild, \
             rm_changes_rebuild; SELECT create_dashboard_tables('_rebuild', false)",
        )
        .await?;
    let mut model = Model::default();
    let mut events = 0u64;
    let mut cursor = fold(&client, &mut model, LogCursor::default(), None, &mut events).await?;
    let fold_time = started.elapsed();

    let write_started = Instant::now();
    let transaction = client.transaction().await?;
    // Holding the checkpoint row pauses the live projector (it locks the row
    // first in every batch) until the swap commits.
    let live = checkpoint::load(&transaction, DASHBOARD, true).await?;
    if live > cursor {
        cursor = fold(&transaction, &mut model, cursor, Some(live), &mut events).await?;
    }
    write(&transaction, &model).await?;
    transaction.batch_execute("SELECT add_dashboard_keys('_rebuild'); SELECT swap_dashboard_tables()").await?;
    checkpoint::store(&transaction, DASHBOARD, cursor).await?;
    transaction.commit().await?;
    Ok(RebuildReport { events, cursor, fold: fold_time, write: write_started.elapsed() })
}

/// Folds the log after `cursor` (up to and including `until`, if given).
/// Reading the next page overlaps with folding the current one.
async fn fold(
    client: &impl GenericClient,
    model: &mut Model,
    mut cursor: LogCursor,
    until: Option<LogCursor>,
    events: &mut u64,
) -> Result<LogCursor, StoreError> {
    let mut next = Box::pin(EventLog::read_after(client, cursor, 20_000));
    let mut early: Option<Result<Vec<RecordedEvent>, StoreError>> = None;
    loop {
        let batch = match early.take() {
            Some(result) => result?,
            None => next.as_mut().await?,
        };
        let Some(last) = batch.last() else { return Ok(cursor) };
        next = Box::pin(EventLog::read_after(client, last.cursor(), 20_000));
        // Poll once so the next page's query is sent before folding this
        // one; keep the result if it is already complete.
        if let std::task::Poll::Ready(result) = futures_util::poll!(next.as_mut()) {
            early = Some(result);
        }
        for recorded in &batch {
            if until.is_some_and(|until| recorded.cursor() > until) {
                return Ok(cursor);
            }
            if let Some(stream) = recorded.stream() {
                let event = decode(&recorded.event_type, recorded.schema_version, &recorded.data)?;
                model.apply(&Fact {
                    owner: stream.owner().as_str(),
                    service: stream.service().as_str(),
                    cursor: recorded.cursor(),
                    recorded_at: recorded.recorded_at,
                    event_type: &recorded.event_type,
                    event: &event,
                });
            }
            cursor = recorded.cursor();
            *events += 1;
        }
    }
}

/// Writes the model into the `*_rebuild` tables with `COPY … FROM STDIN`
/// (text format), the fastest bulk path Postgres offers.
async fn write(transaction: &deadpool_postgres::Transaction<'_>, model: &Model) -> Result<(), StoreError> {
    let mut rows = CopyRows::default();
    for ((owner, id), r) in &model.connections {
        rows.row(&[
            Some(owner),
            Some(&id.to_string()),
            Some(&r.service),
            Some(&r.name),
            r.skill.as_deref(),
            Some(&r.credential_kind),
            Some(&r.credential_version.to_string()),
            Some(&r.status),
            Some(if r.is_default { "t" } else { "f" }),
            Some(if r.needs_attention { "t" } else { "f" }),
            Some(&r.agent_count.to_string()),
            Some(&r.created_at.to_rfc3339()),
            Some(&r.last_changed_at.to_rfc3339()),
            Some(&r.last_position.to_string()),
        ]);
    }
    rows.copy(
        transaction,
        "COPY rm_connections_rebuild (owner_id, connection_id, service, name, skill, credential_kind, \
         credential_version, status, is_default, needs_attention, agent_count, created_at, last_changed_at, \
         last_position) FROM STDIN",
    )
    .await?;
    for ((owner, service), r) in &model.services {
        let default = r.default_connection_id.map(|id| id.to_string());
        rows.row(&[
            Some(owner),
            Some(service),
            Some(&r.active_connections.to_string()),
            default.as_deref(),
            Some(&r.agent_count.to_string()),
        ]);
    }
    rows.copy(
        transaction,
        "COPY rm_services_rebuild (owner_id, service, active_connections, default_connection_id, agent_count) FROM STDIN",
    )
    .await?;
    for ((owner, id, agent), r) in &model.agents {
        rows.row(&[
            Some(owner),
            Some(&id.to_string()),
            Some(agent),
            Some(&r.service),
            Some(&r.source),
            Some(&r.since.to_rfc3339()),
        ]);
    }
    rows.copy(
        transaction,
        "COPY rm_connection_agents_rebuild (owner_id, connection_id, agent_id, service, source, since) FROM STDIN",
    )
    .await?;
    for c in &model.changes {
        rows.row(&[
            Some(&c.owner),
            Some(&c.cursor.transaction_id.to_string()),
            Some(&c.cursor.position.to_string()),
            Some(&c.event_type),
            Some(&c.connection_id.to_string()),
            Some(&c.service),
            Some(&c.occurred_at.to_rfc3339()),
        ]);
    }
    rows.copy(
        transaction,
        "COPY rm_changes_rebuild (owner_id, transaction_id, position, event_type, connection_id, service, occurred_at) \
         FROM STDIN",
    )
    .await?;
    Ok(())
}

/// Rows in COPY text format, sent in chunks.
#[derive(Default)]
struct CopyRows {
    buffer: String,
}

impl CopyRows {
    fn row(&mut self, fields: &[Option<&str>]) {
        for (index, field) in fields.iter().enumerate() {
            if index > 0 {
                self.buffer.push('\t');
            }
            match field {
                None => self.buffer.push_str("\\N"),
                Some(value) => {
                    for c in value.chars() {
                        match c {
                            '\\' => self.buffer.push_str("\\\\"),
                            '\t' => self.buffer.push_str("\\t"),
                            '\n' => self.buffer.push_str("\\n"),
                            '\r' => self.buffer.push_str("\\r"),
                            c => self.buffer.push(c),
                        }
                    }
                }
            }
        }
        self.buffer.push('\n');
    }

    async fn copy(
        &mut self,
        transaction: &deadpool_postgres::Transaction<'_>,
        statement: &str,
    ) -> Result<(), StoreError> {
        use futures_util::SinkExt;
        let sink = transaction.copy_in::<_, bytes::Bytes>(statement).await?;
        futures_util::pin_mut!(sink);
        let data = std::mem::take(&mut self.buffer);
        for chunk in data.as_bytes().chunks(4 << 20) {
            sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
        }
        sink.finish().await?;
        Ok(())
    }
}
