//! Integration tests of the event log and side tables against the real
//! Postgres server, each on a fresh database.

mod append;
mod chain;
mod codec;
mod global_order;
mod side_tables;

use connections_store::{Metadata, NewEvent, StreamAppend, StreamId, StreamVersion};
use serde_json::json;

fn metadata() -> Metadata {
    Metadata { actor: "test".into(), command_id: uuid::Uuid::now_v7(), correlation_id: uuid::Uuid::now_v7() }
}

fn event(n: u64) -> NewEvent {
    NewEvent { event_id: uuid::Uuid::now_v7(), event_type: "test_event", schema_version: 1, data: json!({ "n": n }) }
}

fn append_to(stream: &str, expected: u64, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend { stream_id: StreamId::from_raw(stream), expected_version: Some(StreamVersion(expected)), events }
}
