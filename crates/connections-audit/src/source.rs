//! Where audit records come from: the live Postgres log, or an export file.
//! Both hand records to a [`Sink`] one at a time.

use std::io::BufRead;

use connections_store::{event_from_row, stored_hash, EventLog, LogCursor};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel, Portal, Row, Transaction};
use uuid::Uuid;

use crate::checkpoint::Checkpoint;
use crate::event::AuditEvent;
use crate::record::{parse_line, AccessRecord, At, Line, CHECKPOINT};
use crate::{AuditError, Sink};

/// Which part of the live log a pass reads.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only this owner's streams and access records.
    pub owner: Option<String>,
    /// Only this stream (a connection's).
    pub stream_id: Option<String>,
    /// Only events after this cursor.
    pub from: Option<LogCursor>,
    /// Stop at the horizon below which no transaction is still running, so
    /// that the last event read is a cursor nothing can commit behind (for
    /// exports and checkpoints whose cursor a later `--from` resumes at).
    /// Without it, every committed event is read.
    pub horizon: bool,
    /// Whether to read access records, and whose: `Some(None)` every
    /// record the owner filter allows, `Some(Some(id))` one connection's.
    pub accesses: Option<Option<Uuid>>,
}

/// Rows fetched per round trip: bounds memory whatever the log's size.
const BATCH: i32 = 5_000;

/// Reads the live log into `sink`, in one repeatable-read snapshot: events
/// in the global order (up to the horizon if the filter asks, the rule every
/// follower of the log uses), then access records per connection in chain
/// order.
pub async fn read_log(client: &mut Client, filter: &LogFilter, sink: &mut impl Sink) -> Result<(), AuditError> {
    if filter.horizon {
        wait_for_horizon(client).await?;
    }
    let transaction =
        client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let statement = EventLog::prepare_scan(&transaction).await?;
    let from_tx = filter.from.map(|c| c.transaction_id.to_string());
    let from_position = filter.from.map(|c| c.position);
    let params: [&(dyn ToSql + Sync); 5] =
        [&filter.owner, &filter.stream_id, &from_tx, &from_position, &filter.horizon];
    let portal = transaction.bind(&statement, &params).await?;
    each_row(&transaction, &portal, |row| {
        let event = event_from_row(row)?;
        sink.event(At::Position(event.position), &AuditEvent::from_recorded(&event))
    })
    .await?;
    if let Some(connection) = filter.accesses {
        let statement = transaction
            .prepare(
                "SELECT access_id, connection_id, credential_version, agent_id, owner_id, request_id, accessed_at, \
                        previous_hash, hash FROM access_log \
                 WHERE ($1::text IS NULL OR owner_id = $1) AND ($2::uuid IS NULL OR connection_id = $2) \
                 ORDER BY connection_id, access_id",
            )
            .await?;
        let params: [&(dyn ToSql + Sync); 2] = [&filter.owner, &connection];
        let portal = transaction.bind(&statement, &params).await?;
        each_row(&transaction, &portal, |row| {
            let access = AccessRecord {
                access_id: row.get(0),
                connection_id: row.get(1),
                credential_version: row.get(2),
                agent_id: row.get(3),
                owner_id: row.get(4),
                request_id: row.get(5),
                accessed_at: row.get(6),
                previous_hash: stored_hash(row, 7)?,
                hash: stored_hash(row, 8)?,
            };
            sink.access(At::AccessId(access.access_id), &access)
        })
        .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Hands every row of `portal` to `each`, [`BATCH`] rows per round trip.
async fn each_row(
    transaction: &Transaction<'_>,
    portal: &Portal,
    mut each: impl FnMut(&Row) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    loop {
        let rows = transaction.query_portal(portal, BATCH).await?;
        if rows.is_empty() {
            return Ok(());
        }
        rows.iter().try_for_each(&mut each)?;
    }
}

/// Waits (up to 30 s) until every event committed now is below the
/// horizon, so that a pass with `horizon` still covers everything committed
/// before it started. A transaction running longer than that anywhere in the
/// cluster makes the pass end earlier, at a cursor that is still safe.
async fn wait_for_horizon(client: &Client) -> Result<(), AuditError> {
    let Some(newest) = EventLog::newest_transaction(client).await? else { return Ok(()) };
    let newest = newest.to_string();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        let passed: bool = client
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::text::xid8", &[&newest])
            .await?
            .get(0);
        if passed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Reads an export file into `sink`, line by line. Every line must be a
/// complete record ending in a newline; the last must be the checkpoint.
pub fn read_file(mut reader: impl BufRead, sink: &mut impl Sink) -> Result<(), AuditError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut number = 0u64;
    let mut closed = false;
    let mut seen_access = false;
    loop {
        buffer.clear();
        if !closed && reader.fill_buf()?.starts_with(CHECKPOINT.as_bytes()) {
            // The checkpoint line holds every head: parse it from the reader
            // instead of buffering the line.
            number += 1;
            let at = At::Line(number);
            let mut parser = serde_json::Deserializer::from_reader(&mut reader);
            let checkpoint: Checkpoint = match serde::Deserialize::deserialize(&mut parser) {
                Ok(checkpoint) => checkpoint,
                Err(e) if e.is_eof() => {
                    return Err(AuditError::Truncated(format!("{at} is cut off mid-line")));
                }
                Err(e) => return Err(AuditError::Malformed { at, message: e.to_string() }),
            };
            let mut newline = [0u8; 1];
            if std::io::Read::read(&mut reader, &mut newline)? != 1 || newline[0] != b'\n' {
                return Err(AuditError::Truncated(format!("{at} ends without a newline (cut off mid-line)")));
            }
            closed = true;
            sink.checkpoint(at, &checkpoint)?;
            continue;
        }
        if reader.read_until(b'\n', &mut buffer)? == 0 {
            break;
        }
        number += 1;
        let at = At::Line(number);
        let malformed = |message: &str| AuditError::Malformed { at, message: message.into() };
        if buffer.pop() != Some(b'\n') {
            return Err(AuditError::Truncated(format!("{at} ends without a newline (cut off mid-line)")));
        }
        if closed {
            return Err(malformed("a record after the closing checkpoint"));
        }
        let text = std::str::from_utf8(&buffer).map_err(|_| malformed("not UTF-8"))?;
        match parse_line(at, text)? {
            Line::Event(event) => {
                if seen_access {
                    return Err(malformed("an event after the access records"));
                }
                sink.event(at, &event.event())?;
            }
            Line::Access(access) => {
                seen_access = true;
                sink.access(at, &access)?;
            }
            Line::Checkpoint(checkpoint) => {
                closed = true;
                sink.checkpoint(at, &checkpoint)?;
            }
        }
    }
    if !closed {
        return Err(AuditError::Truncated(format!("it ends after line {number} without its closing checkpoint line")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Verifier;

    #[test]
    fn a_file_without_its_checkpoint_or_cut_mid_line_is_truncated_and_garbage_is_malformed() {
        let outcome = |text: &str| read_file(text.as_bytes(), &mut Verifier::for_file());
        assert!(matches!(outcome(""), Err(AuditError::Truncated(_))));
        assert!(matches!(outcome("{\"kind\":\"access\""), Err(AuditError::Truncated(m)) if m.contains("line 1")));
        assert!(matches!(outcome("[]\n"), Err(AuditError::Malformed { at: At::Line(1), .. })));
        assert!(matches!(outcome("\n"), Err(AuditError::Malformed { at: At::Line(1), .. })));
        let event_out_of_shape = "{\"kind\":\"event\",\"position\":\"one\"}\n";
        assert!(matches!(outcome(event_out_of_shape), Err(AuditError::Malformed { at: At::Line(1), .. })));
    }
}
