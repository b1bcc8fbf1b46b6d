//! The gap-safe global order: a reader following the log never skips an
//! event that commits late, with concurrent writers, random delays and rollbacks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connections_store::{EventLog, LogCursor};
use connections_testkit::TestDatabase;
use rand::Rng;

use crate::{append_to, event, metadata};

const TARGET_EVENTS: u64 = 100_000;
const WRITERS: usize = 8;
const TIME_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_following_reader_sees_every_committed_event_exactly_once_in_order() {
    let db = TestDatabase::new().await;
    let started = Instant::now();
    let committed_events = Arc::new(AtomicU64::new(0));
    let committed_ids = Arc::new(Mutex::new(HashSet::new()));
    let writers_done = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let pool = db.database.pool().clone();
        let committed_events = committed_events.clone();
        let committed_ids = committed_ids.clone();
        writers.push(tokio::spawn(async move {
            let mut client = pool.get().await.expect("pool connection");
            let mut version = 0u64;
            let mut rollbacks = 0u64;
            while committed_events.load(Ordering::Relaxed) < TARGET_EVENTS && started.elapsed() < TIME_LIMIT {
                let (count, delay_ms, roll_back) = {
                    let mut rng = rand::thread_rng();
                    (
                        rng.gen_range(1..=4u64),
                        if rng.gen_bool(0.2) { rng.gen_range(1..=3) } else { 0 },
                        rng.gen_bool(0.1),
                    )
                };
                let events: Vec<_> = (0..count).map(event).collect();
                let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
                let tx = client.transaction().await.expect("begin");
                EventLog::append(&tx, &[append_to(&format!("writer-{writer}"), version, events)], &metadata())
                    .await
                    .expect("append to the writer's own stream");
                // Hold the transaction open after taking positions, so that
                // later transactions commit first.
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                if roll_back {
                    tx.rollback().await.expect("rollback");
                    rollbacks += 1;
                    continue;
                }
                tx.commit().await.expect("commit");
                version += count;
                committed_ids.lock().expect("lock").extend(ids);
                committed_events.fetch_add(count, Ordering::Relaxed);
            }
            rollbacks
        }));
    }

    let reader = {
        let pool = db.database.pool().clone();
        let writers_done = writers_done.clone();
        let committed_events = committed_events.clone();
        tokio::spawn(async move {
            let client = pool.get().await.expect("pool connection");
            let mut cursor = LogCursor::default();
            let mut seen = Vec::new();
            loop {
                let batch = EventLog::read_after(&client, cursor, 5_000).await.expect("read after cursor");
                for (i, recorded) in batch.iter().enumerate() {
                    assert!(
                        recorded.cursor() > cursor,
                        "the global order went backwards: {:?} after {:?} (index {i} in a batch of {}, first {:?})",
                        recorded.cursor(),
                        cursor,
                        batch.len(),
                        batch.first().map(|e| e.cursor())
                    );
                    cursor = recorded.cursor();
                    seen.push(recorded.event_id);
                }
                let done = writers_done.load(Ordering::Acquire);
                if batch.is_empty() {
                    if done && seen.len() as u64 >= committed_events.load(Ordering::Acquire) {
                        break;
                    }
                    if started.elapsed() > TIME_LIMIT + Duration::from_secs(30) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            seen
        })
    };

    let mut rollbacks = 0;
    for writer in writers {
        rollbacks += writer.await.expect("writer task");
    }
    writers_done.store(true, Ordering::Release);
    let seen = reader.await.expect("reader task");

    let committed = committed_ids.lock().expect("lock").clone();
    assert!(committed.len() as u64 >= TARGET_EVENTS, "only {} events committed in the time limit", committed.len());
    assert!(rollbacks > 0, "the test must include rolled-back transactions");
    let unique: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "the reader saw an event twice");
    let skipped = committed.difference(&unique).count();
    let phantom = unique.difference(&committed).count();
    assert_eq!(skipped, 0, "the reader skipped {skipped} committed events");
    assert_eq!(phantom, 0, "the reader saw {phantom} events that were rolled back");

    // The same stream read naively by position would have skipped events
    // whenever a later position committed first; count how often that happened.
    let client = db.client().await;
    let overtaken: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT transaction_id, position, \
             lag(transaction_id) OVER (ORDER BY position) AS previous FROM events) t \
             WHERE previous IS NOT NULL AND previous > transaction_id",
            &[],
        )
        .await
        .expect("count position/transaction inversions")
        .get(0);
    println!(
        "followed {} events ({} rollbacks) in {:?}; {} places where position order differs from commit-safe order",
        seen.len(),
        rollbacks,
        started.elapsed(),
        overtaken
    );
}
