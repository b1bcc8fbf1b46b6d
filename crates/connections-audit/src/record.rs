//! The records of an audit and their export lines.
//!
//! An export file is JSON Lines: `{"kind":"event",…}` for each event (the
//! stored row, hashes included), `{"kind":"access",…}` for each access
//! record, and a closing `{"kind":"checkpoint",…}` line. The exact shapes
//! are in `schemas/audit/export.v1.json`.

use chrono::{DateTime, Utc};
use connections_store::chain::{self, ChainHash};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkpoint::Checkpoint;
use crate::event::EventLine;
use crate::AuditError;

/// Where a record is: a line of a file, or a row of the live log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Line number (1-based) in an export file.
    Line(u64),
    /// An event's position in the live log.
    Position(i64),
    /// An access record's id in the live access log.
    AccessId(i64),
    /// The comparison with an earlier checkpoint, after every record.
    EarlierCheckpoint,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Line(line) => write!(f, "line {line}"),
            At::Position(position) => write!(f, "event position {position}"),
            At::AccessId(id) => write!(f, "access record {id}"),
            At::EarlierCheckpoint => write!(f, "the comparison with the earlier checkpoint"),
        }
    }
}

/// One hand-out of a credential, as the access log stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// Its id (increasing within a connection's chain).
    pub access_id: i64,
    /// The connection whose credential was handed out.
    pub connection_id: Uuid,
    /// Which version of it.
    pub credential_version: i32,
    /// The agent that received it.
    pub agent_id: String,
    /// The owner it acted for.
    pub owner_id: String,
    /// The request that asked.
    pub request_id: Uuid,
    /// When.
    pub accessed_at: DateTime<Utc>,
    /// The connection's previous record's hash (zeros for the first).
    pub previous_hash: Option<ChainHash>,
    /// This record's link.
    pub hash: Option<ChainHash>,
}

impl AccessRecord {
    /// The hash this record must carry if `previous` is its predecessor's.
    pub fn expected_hash(&self, previous: &ChainHash) -> ChainHash {
        let content = chain::access_content(
            self.connection_id,
            self.credential_version,
            &self.agent_id,
            &self.owner_id,
            self.request_id,
        );
        chain::access_hash(previous, &content, self.access_id, self.accessed_at)
    }
}

/// One line of an export file.
#[derive(Debug)]
pub enum Line<'a> {
    /// An event (borrowed from the line's text).
    Event(EventLine<'a>),
    /// An access record.
    Access(AccessRecord),
    /// The closing checkpoint.
    Checkpoint(Box<Checkpoint>),
}

const EVENT: &str = r#"{"kind":"event","#;
const ACCESS: &str = r#"{"kind":"access","#;
/// How a checkpoint line starts (readers stream it rather than buffer it: it
/// holds every head).
pub const CHECKPOINT: &str = r#"{"kind":"checkpoint","#;

/// The kind of an export line.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `{"kind":"event",…}`
    Event,
    /// `{"kind":"access",…}`
    Access,
    /// `{"kind":"checkpoint",…}`
    Checkpoint,
}

/// Writes `value` (a JSON object with at least one field) as one line of
/// `kind`, the kind first so that readers can dispatch on a prefix.
pub fn write_line(out: &mut Vec<u8>, kind: Kind, value: &impl Serialize) {
    out.extend_from_slice(
        match kind {
            Kind::Event => EVENT,
            Kind::Access => ACCESS,
            Kind::Checkpoint => CHECKPOINT,
        }
        .as_bytes(),
    );
    let start = out.len();
    serde_json::to_writer(&mut *out, value).expect("records always serialize");
    // Drop the object's own opening brace: the prefix opened it.
    out.remove(start);
    out.push(b'\n');
}

/// Parses one line of an export file.
pub fn parse_line(at: At, text: &str) -> Result<Line<'_>, AuditError> {
    let malformed = |message: String| AuditError::Malformed { at, message };
    // Fast path: the kind comes first, as the exporter writes it; the
    // record types ignore the "kind" field itself.
    if text.starts_with(EVENT) {
        return serde_json::from_str(text).map(Line::Event).map_err(|e| malformed(e.to_string()));
    }
    if text.starts_with(ACCESS) {
        return serde_json::from_str(text).map(Line::Access).map_err(|e| malformed(e.to_string()));
    }
    if text.starts_with(CHECKPOINT) {
        return serde_json::from_str(text).map(|c| Line::Checkpoint(Box::new(c))).map_err(|e| malformed(e.to_string()));
    }
    // Anything else (a checkpoint, or keys in another order).
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
    let kind = value.as_object_mut().and_then(|object| object.remove("kind"));
    match kind.as_ref().and_then(|kind| kind.as_str()) {
        Some("event") => {
            return Err(malformed("an event line must start with {\"kind\":\"event\", as exported".into()))
        }
        Some("access") => serde_json::from_value(value).map(Line::Access),
        Some("checkpoint") => serde_json::from_value(value).map(|c| Line::Checkpoint(Box::new(c))),
        _ => return Err(malformed("no known \"kind\"".into())),
    }
    .map_err(|e| malformed(e.to_string()))
}
