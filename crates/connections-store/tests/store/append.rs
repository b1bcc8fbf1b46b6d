//! Appends: optimistic concurrency, atomicity, append-only, durability setting.

use connections_store::{EventLog, StoreError, StreamVersion};
use connections_testkit::TestDatabase;

use crate::{append_to, event, metadata};

#[tokio::test]
async fn appends_are_read_back_in_stream_order_with_versions() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool connection");
    let tx = client.transaction().await.expect("begin");
    let positions = EventLog::append(&tx, &[append_to("s-1", 0, vec![event(1), event(2)])], &metadata())
        .await
        .expect("first append");
    tx.commit().await.expect("commit");
    assert_eq!(positions.len(), 2);
    let (events, version) = EventLog::read_stream(&client, &crate::stream("s-1")).await.expect("read stream");
    assert_eq!(version, StreamVersion(2));
    assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(events[0].data["n"], 1);
    assert_eq!(events[0].metadata["actor"], "test");
}

#[tokio::test]
async fn a_stale_expected_version_is_a_typed_conflict_and_writes_nothing() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool connection");
    crate::commit(&db, &[append_to("s-1", 0, vec![event(1)])]).await;

    let tx = client.transaction().await.expect("begin");
    let stale = EventLog::append(&tx, &[append_to("s-1", 0, vec![event(2)])], &metadata()).await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "expected a conflict, got {stale:?}");
    drop(tx);
    let (events, _) = EventLog::read_stream(&client, &crate::stream("s-1")).await.expect("read stream");
    assert_eq!(events.len(), 1, "a conflicting append must write nothing");
}

#[tokio::test]
async fn a_stale_append_of_several_events_is_a_conflict_and_writes_nothing() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool connection");
    crate::commit(&db, &[append_to("s-1", 0, vec![event(1)])]).await;

    // One statement an event: the second expects version 1, which the
    // stream is at, but the first's refusal fails the whole append.
    let tx = client.transaction().await.expect("begin");
    let stale = EventLog::append(&tx, &[append_to("s-1", 0, vec![event(2), event(3)])], &metadata()).await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "expected a conflict, got {stale:?}");
    drop(tx);
    let (events, version) = EventLog::read_stream(&client, &crate::stream("s-1")).await.expect("read stream");
    assert_eq!((events.len(), version), (1, StreamVersion(1)), "a conflicting append must write nothing");

    crate::commit(&db, &[append_to("s-1", 1, vec![event(2), event(3)])]).await;
    let (events, _) = EventLog::read_stream(&client, &crate::stream("s-1")).await.expect("read stream");
    assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(events.windows(2).all(|pair| pair[0].position < pair[1].position), "positions follow versions");
    assert_eq!(events[1].recorded_at, events[2].recorded_at, "one append's events share their instant");
    assert!(events[0].recorded_at < events[1].recorded_at);
}

#[tokio::test]
async fn concurrent_appends_at_the_same_version_let_exactly_one_win() {
    let db = TestDatabase::new().await;
    let mut tasks = Vec::new();
    for n in 0..16 {
        let pool = db.database.pool().clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pool.get().await.expect("pool connection");
            let tx = client.transaction().await.expect("begin");
            match EventLog::append(&tx, &[append_to("race", 0, vec![event(n)])], &metadata()).await {
                Ok(_) => tx.commit().await.is_ok(),
                Err(StoreError::Conflict { .. }) => false,
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.expect("task"));
    }
    assert_eq!(winners, 1, "exactly one writer may append version 1");
    let client = db.client().await;
    let count: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_multi_stream_append_is_all_or_nothing() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool connection");
    crate::commit(&db, &[append_to("b", 0, vec![event(1)])]).await;

    // The first stream is fine, the second is stale: neither may be written.
    let tx = client.transaction().await.expect("begin");
    let result =
        EventLog::append(&tx, &[append_to("a", 0, vec![event(2)]), append_to("b", 0, vec![event(3)])], &metadata())
            .await;
    assert!(matches!(result, Err(StoreError::Conflict { .. })));
    drop(tx);
    let (a, _) = EventLog::read_stream(&client, &crate::stream("a")).await.expect("read a");
    assert!(a.is_empty(), "stream a must not keep half of a failed command");

    crate::commit(&db, &[append_to("a", 0, vec![event(4)]), append_to("b", 1, vec![event(5)])]).await;
    let client = db.client().await;
    let count: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0);
    assert_eq!(count, 3);
}

#[tokio::test]
async fn the_log_refuses_update_delete_and_truncate() {
    let db = TestDatabase::new().await;
    crate::commit(&db, &[append_to("s", 0, vec![event(1)])]).await;
    let sql = db.client().await;
    for statement in ["UPDATE events SET data = '{}'", "DELETE FROM events", "TRUNCATE events"] {
        let error = sql.batch_execute(statement).await.expect_err("the log is append-only");
        assert!(format!("{error:?}").contains("append-only"), "{statement}: {error:?}");
    }
}

#[tokio::test]
async fn pool_connections_commit_synchronously() {
    let db = TestDatabase::new().await;
    let client = db.database.pool().get().await.expect("pool connection");
    let setting: String = client.query_one("SHOW synchronous_commit", &[]).await.expect("show").get(0);
    assert_eq!(setting, "on", "an acknowledged command must be flushed before the answer");
}

#[tokio::test]
async fn a_pipelined_transaction_dropped_midway_rolls_back_and_leaves_the_pool_clean() {
    let db = TestDatabase::new().await;
    let transaction = connections_store::PipelinedTransaction::new(db.database.pool().get().await.expect("pool"));
    let (begun, appended) = futures_util::future::join(
        transaction.begin(),
        EventLog::append(transaction.client(), &[append_to("s", 0, vec![event(1)])], &metadata()),
    )
    .await;
    begun.expect("begin");
    appended.expect("append inside the transaction");
    let pooled_before = db.database.pool().status().size;
    drop(transaction); // a cancelled request: neither commit nor rollback
    assert_eq!(db.database.pool().status().size, pooled_before - 1, "the connection must leave the pool");
    let client = db.database.pool().get().await.expect("pool");
    let in_transaction: bool =
        client.query_one("SELECT pg_current_xact_id_if_assigned() IS NOT NULL", &[]).await.expect("query").get(0);
    assert!(!in_transaction, "a pooled connection must not be inside a transaction");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let count: i64 = db.client().await.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0);
    assert_eq!(count, 0, "the dropped transaction must roll back");
}

#[tokio::test]
async fn an_append_without_an_expected_version_goes_after_whatever_the_stream_holds() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool");
    for n in 0..3 {
        let tx = client.transaction().await.expect("begin");
        let mut append = append_to("blind", 0, vec![event(n)]);
        append.expected_version = None;
        EventLog::append(&tx, &[append], &metadata()).await.expect("blind append");
        tx.commit().await.expect("commit");
    }
    let (events, version) = EventLog::read_stream(&client, &crate::stream("blind")).await.expect("read");
    assert_eq!(version, StreamVersion(3));
    assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![1, 2, 3]);
}
