//! Side tables written with the events: idempotency keys, locator, secrets.

use connections_domain::{ConnectionId, OwnerId, ServiceName};
use connections_sealing::WrappedDataKey;
use connections_store::{
    ConnectionLocation, EventLog, IdempotencyClaim, LocationCache, StoredCredential, StoredResponse, StreamAppend,
    StreamVersion,
};
use connections_testkit::TestDatabase;
use serde_json::json;

/// Idempotency records live a day.
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

#[tokio::test]
async fn an_idempotency_key_replays_its_first_answer_and_refuses_another_request() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool connection");
    let tx = client.transaction().await.expect("begin");
    assert_eq!(
        IdempotencyClaim::claim(&tx, "alice", "k1", b"hash-a", DAY).await.expect("claim"),
        IdempotencyClaim::Fresh
    );
    let answer = StoredResponse { status: 201, body: json!({"position": 7}) };
    IdempotencyClaim::record(&tx, "alice", "k1", &answer).await.expect("record");
    tx.commit().await.expect("commit");

    let tx = client.transaction().await.expect("begin");
    assert_eq!(
        IdempotencyClaim::claim(&tx, "alice", "k1", b"hash-a", DAY).await.expect("claim"),
        IdempotencyClaim::Replay(answer)
    );
    assert_eq!(
        IdempotencyClaim::claim(&tx, "alice", "k1", b"hash-b", DAY).await.expect("claim"),
        IdempotencyClaim::Mismatch
    );
    // Keys are per owner: bob's k1 is a different key.
    assert_eq!(
        IdempotencyClaim::claim(&tx, "bob", "k1", b"hash-b", DAY).await.expect("claim"),
        IdempotencyClaim::Fresh
    );
}

#[tokio::test]
async fn a_rolled_back_claim_frees_the_key() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool connection");
    let tx = client.transaction().await.expect("begin");
    IdempotencyClaim::claim(&tx, "alice", "k1", b"h", DAY).await.expect("claim");
    tx.rollback().await.expect("rollback");
    let tx = client.transaction().await.expect("begin");
    assert_eq!(IdempotencyClaim::claim(&tx, "alice", "k1", b"h", DAY).await.expect("claim"), IdempotencyClaim::Fresh);
}

#[tokio::test]
async fn the_locator_finds_a_connection_once_and_refuses_a_second_location() {
    let db = TestDatabase::new().await;
    let client = db.database.pool().get().await.expect("pool connection");
    let id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let location = ConnectionLocation {
        owner: OwnerId::parse("alice").expect("valid"),
        service: ServiceName::parse("github").expect("valid"),
    };
    assert_eq!(ConnectionLocation::find(&client, id).await.expect("find"), None);
    ConnectionLocation::insert(&client, id, &location).await.expect("insert");
    assert_eq!(ConnectionLocation::find(&client, id).await.expect("find"), Some(location.clone()));
    assert_eq!(location.stream_id().as_str(), "owner-service/alice/github");
    assert!(ConnectionLocation::insert(&client, id, &location).await.is_err());
}

#[tokio::test]
async fn locate_and_lock_queues_behind_the_streams_writers_and_reads_the_head_they_leave() {
    // The function spells the stream id and its lock key in SQL: it must
    // take the lock `EventLog::lock_stream` takes, and read the head after
    // the lock is granted (not from the snapshot its statement began with).
    // A location known from before takes the same lock and reads the same
    // head without the function.
    for known in [false, true] {
        let db = TestDatabase::new().await;
        let mut holder_client = db.database.pool().get().await.expect("pool connection");
        let mut waiter_client = db.database.pool().get().await.expect("pool connection");
        let id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
        let location = ConnectionLocation {
            owner: OwnerId::parse("alice").expect("valid"),
            service: ServiceName::parse("github").expect("valid"),
        };
        let locations = LocationCache::default();
        let unknown = ConnectionId::from_uuid(uuid::Uuid::now_v7());
        let located = ConnectionLocation::locate_and_lock(&waiter_client, &locations, unknown).await.expect("locate");
        assert_eq!((located, locations.len()), (None, 0), "an unknown connection is not kept");
        ConnectionLocation::insert(&holder_client, id, &location).await.expect("insert");
        let fresh = ConnectionLocation::locate_and_lock(&waiter_client, &locations, id)
            .await
            .expect("locate")
            .expect("located");
        assert_eq!(
            (fresh.location.clone(), fresh.version, fresh.last_position),
            (location.clone(), StreamVersion(0), 0)
        );
        assert_eq!(locations.get(id), Some(location.clone()), "a location found is kept");
        let locations = if known { locations } else { LocationCache::default() };

        let holder = holder_client.transaction().await.expect("begin");
        EventLog::lock_stream(&holder, &location.stream_id()).await.expect("lock");
        let waiter = waiter_client.transaction().await.expect("begin");
        let queued = async {
            let started = std::time::Instant::now();
            let locked =
                ConnectionLocation::locate_and_lock(&waiter, &locations, id).await.expect("locate").expect("located");
            (locked, started.elapsed())
        };
        let holding = async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let append = StreamAppend {
                stream_id: location.stream_id(),
                expected_version: Some(StreamVersion(0)),
                events: vec![crate::event(1)],
            };
            let positions = EventLog::append(&holder, &[append], &crate::metadata()).await.expect("append");
            holder.commit().await.expect("commit");
            positions[0]
        };
        let ((locked, waited), position) =
            tokio::time::timeout(std::time::Duration::from_secs(10), async { tokio::join!(queued, holding) })
                .await
                .expect("bounded");
        assert!(waited >= std::time::Duration::from_millis(150), "known {known}: it waited for the lock: {waited:?}");
        assert_eq!((locked.location, locked.version, locked.last_position), (location, StreamVersion(1), position));
        waiter.rollback().await.expect("rollback");
    }
}

#[test]
fn the_location_cache_keeps_at_most_its_capacity() {
    let locations = LocationCache::new(2);
    let location = ConnectionLocation {
        owner: OwnerId::parse("alice").expect("valid"),
        service: ServiceName::parse("github").expect("valid"),
    };
    let ids: Vec<ConnectionId> = (0..3).map(|_| ConnectionId::from_uuid(uuid::Uuid::now_v7())).collect();
    for id in &ids {
        locations.insert(*id, &location);
    }
    assert_eq!(locations.len(), 2);
    assert_eq!(locations.get(ids[2]), Some(location), "the newest is kept");
}

#[tokio::test]
async fn destroying_a_data_key_removes_it() {
    let db = TestDatabase::new().await;
    let client = db.database.pool().get().await.expect("pool connection");
    let id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let wrapped = WrappedDataKey { master_key_id: "k1".into(), bytes: vec![1, 2, 3] };
    StoredCredential::insert_data_key(&client, id, &wrapped).await.expect("insert");
    assert_eq!(StoredCredential::data_key(&client, id).await.expect("load"), Some(wrapped));
    StoredCredential::destroy_data_key(&client, id).await.expect("destroy");
    assert_eq!(StoredCredential::data_key(&client, id).await.expect("load"), None);
}
