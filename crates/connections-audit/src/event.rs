//! The event as an audit pass sees it: borrowed from a stored row or from a
//! line of an export file, so that reading a file parses data and metadata
//! only when a sink needs their values.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use connections_store::chain::{self, ChainHash, EventPlace};
use connections_store::{LogCursor, RecordedEvent};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

/// A JSON value: parsed (from Postgres) or raw text (from a file, as the
/// exporter wrote it: canonical JSON).
#[derive(Debug, Clone, Copy)]
pub enum Json<'a> {
    /// A parsed value.
    Value(&'a Value),
    /// Raw text.
    Raw(&'a RawValue),
}

impl Json<'_> {
    /// The canonical JSON bytes the chain hashes. Raw text is taken as it
    /// is: an export writes canonical JSON, so a reformatted file no longer
    /// matches its hashes (reported as edited).
    pub fn canonical(&self) -> Cow<'_, [u8]> {
        match self {
            Json::Value(value) => {
                let mut out = Vec::with_capacity(128);
                chain::canonical_json(value, &mut out);
                Cow::Owned(out)
            }
            Json::Raw(raw) => Cow::Borrowed(raw.get().as_bytes()),
        }
    }

    /// The parsed value.
    pub fn value(&self) -> Result<Cow<'_, Value>, serde_json::Error> {
        match self {
            Json::Value(value) => Ok(Cow::Borrowed(value)),
            Json::Raw(raw) => serde_json::from_str(raw.get()).map(Cow::Owned),
        }
    }

    /// A top-level string field (e.g. `connection_id`), without building
    /// the whole value from raw text.
    pub fn string_field(&self, key: &str) -> Option<String> {
        match self {
            Json::Value(value) => value.get(key)?.as_str().map(str::to_owned),
            Json::Raw(raw) => {
                let fields: std::collections::HashMap<Cow<'_, str>, &RawValue> =
                    serde_json::from_str(raw.get()).ok()?;
                serde_json::from_str::<String>(fields.get(key)?.get()).ok()
            }
        }
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Raw(raw) => raw.serialize(serializer),
            Json::Value(_) => {
                let text = String::from_utf8(self.canonical().into_owned()).map_err(serde::ser::Error::custom)?;
                RawValue::from_string(text).map_err(serde::ser::Error::custom)?.serialize(serializer)
            }
        }
    }
}

/// One event of the log, with its hashes.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent<'a> {
    /// Its position.
    pub position: i64,
    /// The transaction that appended it.
    pub transaction_id: u64,
    /// Its id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: &'a str,
    /// Its version within the stream.
    pub stream_version: u64,
    /// Its type.
    pub event_type: &'a str,
    /// Its data's schema version.
    pub schema_version: i32,
    /// Its data.
    pub data: Json<'a>,
    /// Its metadata (actor, command and correlation ids).
    pub metadata: Json<'a>,
    /// When the statement that appended it started (its transaction's start before V9).
    pub recorded_at: DateTime<Utc>,
    /// Its stream's previous hash.
    pub previous_hash: Option<ChainHash>,
    /// Its hash.
    pub hash: Option<ChainHash>,
}

impl<'a> AuditEvent<'a> {
    /// A stored event.
    pub fn from_recorded(event: &'a RecordedEvent) -> Self {
        Self {
            position: event.position,
            transaction_id: event.transaction_id,
            event_id: event.event_id,
            stream_id: &event.stream_id,
            stream_version: event.stream_version,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            data: Json::Value(&event.data),
            metadata: Json::Value(&event.metadata),
            recorded_at: event.recorded_at,
            previous_hash: event.previous_hash,
            hash: event.hash,
        }
    }

    /// Where it is in the global order.
    pub fn cursor(&self) -> LogCursor {
        LogCursor { transaction_id: self.transaction_id, position: self.position }
    }

    /// The hash it must carry if `previous` is its predecessor's.
    pub fn expected_hash(&self, previous: &ChainHash) -> ChainHash {
        let place = EventPlace {
            stream_version: self.stream_version,
            position: self.position,
            transaction_id: self.transaction_id,
            recorded_at: self.recorded_at,
        };
        chain::event_hash_canonical(
            previous,
            self.event_id,
            self.stream_id,
            self.event_type,
            self.schema_version,
            &self.data.canonical(),
            &self.metadata.canonical(),
            &place,
        )
    }

    /// The actor, from the metadata.
    pub fn actor(&self) -> Option<String> {
        self.metadata.string_field("actor")
    }
}

/// An event line of an export file, borrowed from the line's text.
#[derive(Debug, Deserialize)]
pub struct EventLine<'a> {
    position: i64,
    transaction_id: u64,
    event_id: Uuid,
    #[serde(borrow)]
    stream_id: Cow<'a, str>,
    stream_version: u64,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    schema_version: i32,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow)]
    metadata: &'a RawValue,
    recorded_at: DateTime<Utc>,
    previous_hash: Option<ChainHash>,
    hash: Option<ChainHash>,
}

impl EventLine<'_> {
    /// The event it holds.
    pub fn event(&self) -> AuditEvent<'_> {
        AuditEvent {
            position: self.position,
            transaction_id: self.transaction_id,
            event_id: self.event_id,
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            data: Json::Raw(self.data),
            metadata: Json::Raw(self.metadata),
            recorded_at: self.recorded_at,
            previous_hash: self.previous_hash,
            hash: self.hash,
        }
    }
}
