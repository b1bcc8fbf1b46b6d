//! The JSON payload of an event message on JetStream
//! (`schemas/nats/envelope.v1.json`). It carries the event's data and
//! metadata as stored in the log — never secret material, which the log
//! does not hold — and the cursor of the previous event, so that a consumer
//! can prove it has missed nothing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A place in the log's global order, as carried in envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EnvelopeCursor {
    /// The appending transaction's id.
    pub transaction_id: u64,
    /// The event's position.
    pub position: i64,
}

/// One event as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always 1 for this layout.
    pub envelope_version: u32,
    /// The event's id (also `Nats-Msg-Id`).
    pub event_id: uuid::Uuid,
    /// Where the event is in the log.
    pub cursor: EnvelopeCursor,
    /// The event before it in the log, `None` for the first.
    pub previous: Option<EnvelopeCursor>,
    /// Its stream and version in that stream.
    pub stream_id: String,
    /// Its version within the stream.
    pub stream_version: u64,
    /// The owner and service its stream belongs to.
    pub owner: String,
    /// The service.
    pub service: String,
    /// Its stable type name and schema version (`schemas/events/`).
    pub event_type: String,
    /// The schema version of `data`.
    pub schema_version: i32,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The event data.
    pub data: Value,
    /// Actor, command id, correlation id.
    pub metadata: Value,
}
