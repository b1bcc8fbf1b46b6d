//! Hash chains: the tamper evidence of the event log and the access log.
//!
//! Every event row carries `hash = SHA-256(previous_hash ‖ content ‖ place)`,
//! chained per stream (see ARCHITECTURE.md, "Hash chains"):
//!
//! - `content` is computed here, in Rust, from what the application decides:
//!   a domain tag, the event id, stream id, type, schema version, and the
//!   canonical JSON of its data and metadata, each length-prefixed;
//! - `place` is what Postgres assigns in the append statement: the stream
//!   version, the position, the transaction id and the recording time in
//!   microseconds, each as 8 big-endian bytes (`int8send`).
//!
//! The append statement computes the hash with Postgres' `sha256()`; the
//! verifier recomputes it here from a stored row or an exported line. Access
//! records are chained per connection the same way.
//!
//! Canonical JSON sorts object keys and writes no whitespace; it does not
//! depend on serde_json's `preserve_order` feature, which another crate in a
//! build could switch on.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A SHA-256 link in a chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The previous hash of a chain's first entry.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// From stored bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        self.write_hex(&mut out);
        out
    }

    /// Appends the lower-case hex to `out`.
    pub fn write_hex(&self, out: &mut String) {
        for byte in self.0 {
            out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
        }
    }

    /// From 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        let mut invalid = 0u8;
        for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (high, low) = (HEX_VALUE[usize::from(pair[0])], HEX_VALUE[usize::from(pair[1])]);
            invalid |= (high | low) & 0x10;
            *byte = high << 4 | (low & 0x0f);
        }
        if invalid != 0 {
            return None;
        }
        Some(Self(out))
    }
}

/// Each byte's value as a hex digit; 0x10 marks a byte that is not one.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0x10u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

impl std::fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ChainHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ChainHash::from_hex(&text).ok_or_else(|| serde::de::Error::custom("a hash is 64 hex digits"))
    }
}

impl std::fmt::Display for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The application-decided part of an event's hashed bytes.
pub fn event_content(
    event_id: Uuid,
    stream_id: &str,
    event_type: &str,
    schema_version: i32,
    data: &Value,
    metadata: &Value,
) -> Vec<u8> {
    let mut data_json = Vec::with_capacity(128);
    canonical_json(data, &mut data_json);
    let mut metadata_json = Vec::with_capacity(128);
    canonical_json(metadata, &mut metadata_json);
    event_content_canonical(event_id, stream_id, event_type, schema_version, &data_json, &metadata_json)
}

/// [`event_content`] from data and metadata already in canonical JSON.
pub fn event_content_canonical(
    event_id: Uuid,
    stream_id: &str,
    event_type: &str,
    schema_version: i32,
    data_json: &[u8],
    metadata_json: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + stream_id.len() + event_type.len() + data_json.len() + metadata_json.len());
    event_fields(event_id, stream_id, event_type, schema_version, data_json, metadata_json, |bytes| {
        out.extend_from_slice(bytes)
    });
    out
}

/// The one definition of an event's content bytes: each field as a 4-byte
/// big-endian length and the bytes, handed to `emit` piece by piece (into a
/// buffer, or straight into a hasher).
fn event_fields(
    event_id: Uuid,
    stream_id: &str,
    event_type: &str,
    schema_version: i32,
    data_json: &[u8],
    metadata_json: &[u8],
    mut emit: impl FnMut(&[u8]),
) {
    let fields: [&[u8]; 7] = [
        b"connections.event.v1",
        event_id.as_bytes(),
        stream_id.as_bytes(),
        event_type.as_bytes(),
        &schema_version.to_be_bytes(),
        data_json,
        metadata_json,
    ];
    for bytes in fields {
        emit(&(bytes.len() as u32).to_be_bytes());
        emit(bytes);
    }
}

/// Where Postgres put an event: the part of its hashed bytes the append
/// statement adds.
#[derive(Debug, Clone, Copy)]
pub struct EventPlace {
    /// Version within the stream.
    pub stream_version: u64,
    /// Global position.
    pub position: i64,
    /// Appending transaction.
    pub transaction_id: u64,
    /// Recording time.
    pub recorded_at: DateTime<Utc>,
}

/// [`event_hash`] of [`event_content_canonical`], fed to the hasher field
/// by field without building the content (the verifier's hot path).
#[allow(clippy::too_many_arguments)]
pub fn event_hash_canonical(
    previous: &ChainHash,
    event_id: Uuid,
    stream_id: &str,
    event_type: &str,
    schema_version: i32,
    data_json: &[u8],
    metadata_json: &[u8],
    place: &EventPlace,
) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(previous.0);
    event_fields(event_id, stream_id, event_type, schema_version, data_json, metadata_json, |bytes| {
        hasher.update(bytes)
    });
    finish_event_hash(hasher, place)
}

fn finish_event_hash(mut hasher: Sha256, place: &EventPlace) -> ChainHash {
    hasher.update((place.stream_version as i64).to_be_bytes());
    hasher.update(place.position.to_be_bytes());
    hasher.update((place.transaction_id as i64).to_be_bytes());
    hasher.update(place.recorded_at.timestamp_micros().to_be_bytes());
    ChainHash(hasher.finalize().into())
}

/// `SHA-256(previous ‖ content ‖ place)`, as the append statement computes it.
pub fn event_hash(previous: &ChainHash, content: &[u8], place: &EventPlace) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(previous.0);
    hasher.update(content);
    finish_event_hash(hasher, place)
}

/// The hash a stored event must carry if `previous` is its predecessor's.
pub fn recorded_event_hash(previous: &ChainHash, event: &crate::RecordedEvent) -> ChainHash {
    let content = event_content(
        event.event_id,
        &event.stream_id,
        &event.event_type,
        event.schema_version,
        &event.data,
        &event.metadata,
    );
    let place = EventPlace {
        stream_version: event.stream_version,
        position: event.position,
        transaction_id: event.transaction_id,
        recorded_at: event.recorded_at,
    };
    event_hash(previous, &content, &place)
}

/// The application-decided part of an access record's hashed bytes.
pub fn access_content(
    connection_id: Uuid,
    credential_version: i32,
    agent_id: &str,
    owner_id: &str,
    request_id: Uuid,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    field(&mut out, b"connections.access.v1");
    field(&mut out, connection_id.as_bytes());
    field(&mut out, &credential_version.to_be_bytes());
    field(&mut out, agent_id.as_bytes());
    field(&mut out, owner_id.as_bytes());
    field(&mut out, request_id.as_bytes());
    out
}

/// `SHA-256(previous ‖ content ‖ access_id ‖ accessed_at µs)`, as the
/// access log's insert computes it.
pub fn access_hash(previous: &ChainHash, content: &[u8], access_id: i64, accessed_at: DateTime<Utc>) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(previous.0);
    hasher.update(content);
    hasher.update(access_id.to_be_bytes());
    hasher.update(accessed_at.timestamp_micros().to_be_bytes());
    ChainHash(hasher.finalize().into())
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Compact JSON with object keys sorted by their UTF-8 bytes.
pub fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
                out.push(b':');
                canonical_json(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_drops_whitespace() {
        let value: Value = serde_json::from_str(r#"{ "b": [ {"z": 1, "a": "x"} ], "a": null }"#).expect("valid JSON");
        let mut out = Vec::new();
        canonical_json(&value, &mut out);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), r#"{"a":null,"b":[{"a":"x","z":1}]}"#);
    }

    #[test]
    fn hashing_field_by_field_equals_hashing_the_built_content() {
        let data = serde_json::json!({"connection_id": "c", "n": 1});
        let metadata = serde_json::json!({"actor": "alice"});
        let place = EventPlace { stream_version: 3, position: 42, transaction_id: 7, recorded_at: chrono::Utc::now() };
        let (mut d, mut m) = (Vec::new(), Vec::new());
        canonical_json(&data, &mut d);
        canonical_json(&metadata, &mut m);
        let id = Uuid::now_v7();
        let previous = ChainHash([7; 32]);
        assert_eq!(
            event_hash_canonical(&previous, id, "s", "t", 1, &d, &m, &place),
            event_hash(&previous, &event_content(id, "s", "t", 1, &data, &metadata), &place)
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let hash = ChainHash([0xab; 32]);
        assert_eq!(ChainHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(ChainHash::from_hex("ab"), None);
        assert_eq!(ChainHash::from_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn content_fields_are_length_prefixed_so_shifting_bytes_between_them_changes_the_hash() {
        let id = Uuid::nil();
        let data = serde_json::json!({});
        let a = event_content(id, "ab", "c", 1, &data, &data);
        let b = event_content(id, "a", "bc", 1, &data, &data);
        assert_ne!(a, b);
    }
}
