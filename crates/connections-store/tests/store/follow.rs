//! Following the log: what a follower is told about commits held back
//! behind an older running transaction, and which transactions hold back.

use std::time::{Duration, Instant};

use connections_store::{EventLog, Following, LogCursor};
use connections_testkit::TestDatabase;

use crate::{append_to, event, metadata, stream};

/// Appends `count` events to `name`'s stream in a transaction of its own.
async fn commit_events(db: &TestDatabase, name: &str, count: u64) {
    crate::commit(db, &[append_to(name, 0, (0..count).map(event).collect())]).await;
}

async fn follow(db: &TestDatabase, cursor: LogCursor, limit: i64, bystanders: &[i64]) -> Following {
    let client = db.database.pool().get().await.expect("pool connection");
    EventLog::follow(&client, cursor, limit, bystanders).await.expect("follow")
}

/// What [`follow`] finds once nothing else holds the horizon: transaction
/// ids are cluster-wide, so other tests' transactions (in their own
/// databases) hold it back for moments. Bounded: 10 s.
async fn follow_settled(db: &TestDatabase, cursor: LogCursor, limit: i64, bystanders: &[i64]) -> Following {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let following = follow(db, cursor, limit, bystanders).await;
        if !following.held_back || Instant::now() > deadline {
            return following;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_commit_behind_an_older_running_transaction_is_held_back_until_it_ends() {
    let db = TestDatabase::new().await;
    let mut older = db.database.pool().get().await.expect("pool connection");
    let older = older.transaction().await.expect("begin");
    EventLog::append(&older, &[append_to("older", 0, vec![event(0)])], &metadata()).await.expect("append");
    commit_events(&db, "later", 2).await;

    let behind = follow(&db, LogCursor::default(), 10, &[]).await;
    assert!(behind.events.is_empty(), "nothing may pass the older transaction");
    assert!(behind.held_back, "the later commit is reported as held back");

    older.commit().await.expect("commit");
    let after = follow_settled(&db, LogCursor::default(), 10, &[]).await;
    assert_eq!(after.events.len(), 3);
    assert_eq!(after.events[0].stream_id, stream("older").as_str(), "the older transaction's event comes first");
    assert!(!after.held_back);
}

#[tokio::test]
async fn a_registered_bystander_holds_nothing_back_and_an_unregistered_one_does() {
    let db = TestDatabase::new().await;
    let mut bystander = db.database.pool().get().await.expect("pool connection");
    let bystander = bystander.transaction().await.expect("begin");
    // A transaction that has an id (as one writing the read models has)
    // but never appends.
    let id: String = bystander.query_one("SELECT pg_current_xact_id()::text", &[]).await.expect("id").get(0);
    let id: i64 = id.parse().expect("a transaction id");
    commit_events(&db, "later", 1).await;

    let unregistered = follow(&db, LogCursor::default(), 10, &[]).await;
    assert!(unregistered.events.is_empty() && unregistered.held_back);
    let registered = follow_settled(&db, LogCursor::default(), 10, &[id]).await;
    assert_eq!(registered.events.len(), 1, "the bystander is not waited for");
    assert!(!registered.held_back);
    // Someone else's id in the list changes nothing.
    let other = follow(&db, LogCursor::default(), 10, &[id + 1_000_000]).await;
    assert!(other.events.is_empty() && other.held_back);
    bystander.rollback().await.expect("rollback");
}

#[tokio::test]
async fn a_follower_takes_at_most_its_limit_and_then_the_rest() {
    let db = TestDatabase::new().await;
    commit_events(&db, "one", 3).await;

    let first = follow_settled(&db, LogCursor::default(), 2, &[]).await;
    assert_eq!(first.events.len(), 2);
    assert!(!first.held_back, "nothing waits: the batch was only full");
    let rest = follow_settled(&db, first.events[1].cursor(), 2, &[]).await;
    assert_eq!(rest.events.len(), 1);
    assert!(!rest.held_back);
    let none = follow_settled(&db, rest.events[0].cursor(), 2, &[]).await;
    assert!(none.events.is_empty() && !none.held_back, "a follower at the end is told to wait for a commit");
}
