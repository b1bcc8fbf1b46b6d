//! Integration tests of the event log and side tables against the real
//! Postgres server, each on a fresh database.

mod append;
mod chain;
mod codec;
mod follow;
mod global_order;
mod pools;
mod side_tables;
mod stream_state;

use connections_store::{EventLog, Metadata, NewEvent, StreamAppend, StreamId, StreamVersion};
use connections_testkit::TestDatabase;
use serde_json::json;

fn metadata() -> Metadata {
    Metadata { actor: "test".into(), command_id: uuid::Uuid::now_v7(), correlation_id: uuid::Uuid::now_v7() }
}

fn event(n: u64) -> NewEvent {
    NewEvent { event_id: uuid::Uuid::now_v7(), event_type: "test_event", schema_version: 1, data: json!({ "n": n }) }
}

/// The stream of owner `name`'s connections for service `svc`.
fn stream(name: &str) -> StreamId {
    let owner = connections_domain::OwnerId::parse(name).expect("owner id");
    StreamId::owner_service(&owner, &connections_domain::ServiceName::parse("svc").expect("service name"))
}

fn append_to(name: &str, expected: u64, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend { stream_id: stream(name), expected_version: Some(StreamVersion(expected)), events }
}

/// Appends in a transaction of its own, and commits it.
async fn commit(db: &TestDatabase, appends: &[StreamAppend]) {
    let mut client = db.database.pool().get().await.expect("pool connection");
    let tx = client.transaction().await.expect("begin");
    EventLog::append(&tx, appends, &metadata()).await.expect("append");
    tx.commit().await.expect("commit");
}
