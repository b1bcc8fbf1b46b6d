//! Side tables written with the events: idempotency keys, locator, secrets.

use connections_domain::{ConnectionId, OwnerId, ServiceName};
use connections_sealing::WrappedDataKey;
use connections_store::{ConnectionLocation, IdempotencyClaim, StoredCredential, StoredResponse};
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
