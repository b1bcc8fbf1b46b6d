//! Hash chains: what the append statement and the access log's insert compute
//! is what `chain` recomputes from the stored rows.

use connections_domain::{AgentId, ConnectionId, OwnerId};
use connections_store::chain::{self, ChainHash};
use connections_store::{Access, EventLog, StoreError, StreamAppend, StreamId, StreamVersion};
use connections_testkit::TestDatabase;

use crate::{append_to, event, metadata};

#[tokio::test]
async fn every_appended_event_links_to_the_previous_one_in_its_stream() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool connection");
    for (expected, count) in [(0, 3), (3, 1), (4, 2)] {
        let tx = client.transaction().await.expect("begin");
        let appends = [append_to("s-1", expected, (0..count).map(event).collect()), append_to("s-2", expected, vec![])];
        EventLog::append(&tx, &appends, &metadata()).await.expect("append");
        tx.commit().await.expect("commit");
    }
    let (events, _) = EventLog::read_stream(&client, &crate::stream("s-1")).await.expect("read");
    assert_eq!(events.len(), 6);
    let mut previous = ChainHash::GENESIS;
    for e in &events {
        assert_eq!(e.previous_hash, Some(previous), "version {}", e.stream_version);
        let hash = chain::recorded_event_hash(&previous, e);
        assert_eq!(e.hash, Some(hash), "version {}", e.stream_version);
        previous = hash;
    }
}

#[tokio::test]
async fn an_append_by_a_transaction_older_than_the_streams_head_is_a_conflict() {
    // Keeps version order equal to the log's global order within a stream,
    // which the chain verifier relies on.
    let db = TestDatabase::new().await;
    let mut older = db.database.pool().get().await.expect("pool connection");
    let mut newer = db.database.pool().get().await.expect("pool connection");
    let old_tx = older.transaction().await.expect("begin");
    old_tx.query_one("SELECT pg_current_xact_id()", &[]).await.expect("take a transaction id first");
    let new_tx = newer.transaction().await.expect("begin");
    let unchecked = |events| StreamAppend { stream_id: crate::stream("s"), expected_version: None, events };
    EventLog::append(&new_tx, &[unchecked(vec![event(1)])], &metadata()).await.expect("newer append");
    new_tx.commit().await.expect("commit");
    let late = EventLog::append(&old_tx, &[unchecked(vec![event(2)])], &metadata()).await;
    assert!(matches!(late, Err(StoreError::Conflict { .. })), "{late:?}");
}

#[tokio::test]
async fn access_records_are_chained_per_connection() {
    let db = TestDatabase::new().await;
    let mut client = db.database.pool().get().await.expect("pool connection");
    let owner = OwnerId::parse("alice").expect("owner");
    let agent = AgentId::parse("agent-1").expect("agent");
    let connections = [ConnectionId::from_uuid(uuid::Uuid::now_v7()), ConnectionId::from_uuid(uuid::Uuid::now_v7())];
    for round in 0..3 {
        for (i, connection_id) in connections.iter().enumerate() {
            let tx = client.transaction().await.expect("begin");
            let access = Access {
                connection_id: *connection_id,
                credential_version: 1 + round + i as u32,
                agent_id: &agent,
                owner: &owner,
                request_id: uuid::Uuid::now_v7(),
            };
            access.record(&tx).await.expect("record");
            tx.commit().await.expect("commit");
        }
    }
    for connection_id in connections {
        let rows = client
            .query(
                "SELECT access_id, credential_version, agent_id, owner_id, request_id, accessed_at, previous_hash, hash \
                 FROM access_log WHERE connection_id = $1 ORDER BY access_id",
                &[&connection_id.as_uuid()],
            )
            .await
            .expect("read");
        assert_eq!(rows.len(), 3);
        let mut previous = ChainHash::GENESIS;
        for row in rows {
            let content =
                chain::access_content(connection_id.as_uuid(), row.get(1), row.get(2), row.get(3), row.get(4));
            let hash = chain::access_hash(&previous, &content, row.get(0), row.get(5));
            assert_eq!(ChainHash::from_slice(row.get(6)), Some(previous));
            assert_eq!(ChainHash::from_slice(row.get(7)), Some(hash));
            previous = hash;
        }
    }
}

#[tokio::test]
async fn the_logs_refuse_a_hash_of_the_wrong_length_and_versions_below_one() {
    let db = TestDatabase::new().await;
    let sql = db.client().await;
    let zeros = "decode(repeat('00', 32), 'hex')";
    let short = "decode('00', 'hex')";
    let insert = |stream_version: i64, schema_version: i32, hash: &str| {
        format!(
            "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata, \
             previous_hash, hash) VALUES (gen_random_uuid(), 'owner-service/o/svc', {stream_version}, 'test_event', \
             {schema_version}, '{{}}', '{{}}', {zeros}, {hash})"
        )
    };
    for (what, statement) in [
        ("a short hash", insert(1, 1, short)),
        ("stream version 0", insert(0, 1, zeros)),
        ("schema version 0", insert(1, 0, zeros)),
        (
            "a short access hash",
            format!(
                "INSERT INTO access_log (connection_id, credential_version, agent_id, owner_id, request_id, \
                 previous_hash, hash) VALUES (gen_random_uuid(), 1, 'agent', 'owner', gen_random_uuid(), {zeros}, {short})"
            ),
        ),
    ] {
        let error = sql.batch_execute(&statement).await.expect_err(what);
        let code = error.as_db_error().map(|e| e.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("23514"), "{what}: {error:?}");
    }
    let stored: i64 = sql
        .query_one("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM access_log)", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0, "nothing refused is stored");
    sql.batch_execute(&insert(1, 1, zeros)).await.expect("a well-formed row is taken");
}

#[tokio::test]
async fn migrate_seals_rows_written_before_chaining_and_later_appends_chain_onto_them() {
    let db = TestDatabase::new().await;
    let sql = db.client().await;
    // Rows as a server before V6 wrote them: no hashes (a NULL hash
    // passes the `chain_hash` domain, as it passed V6's check).
    sql.batch_execute(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata) VALUES \
           (gen_random_uuid(), 'owner-service/old/svc', 1, 'test_event', 1, '{\"n\": 1}', '{\"actor\": \"a\"}'), \
           (gen_random_uuid(), 'owner-service/old/svc', 2, 'test_event', 1, '{\"n\": 2}', '{\"actor\": \"a\"}'); \
         INSERT INTO access_log (connection_id, credential_version, agent_id, owner_id, request_id) VALUES \
           (gen_random_uuid(), 1, 'agent', 'owner', gen_random_uuid());",
    )
    .await
    .expect("legacy rows");
    connections_store::migrate(&db.url).await.expect("migrate again");
    let unsealed: i64 = sql
        .query_one(
            "SELECT (SELECT count(*) FROM events WHERE hash IS NULL) + (SELECT count(*) FROM access_log WHERE hash IS NULL)",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(unsealed, 0);
    let mut client = db.database.pool().get().await.expect("pool connection");
    let tx = client.transaction().await.expect("begin");
    EventLog::append(&tx, &[append_to("old", 2, vec![event(3)])], &metadata()).await.expect("append after sealing");
    tx.commit().await.expect("commit");
    let (events, _) = EventLog::read_stream(&client, &crate::stream("old")).await.expect("read");
    let mut previous = ChainHash::GENESIS;
    for e in &events {
        previous = chain::recorded_event_hash(&previous, e);
        assert_eq!(e.hash, Some(previous), "version {}", e.stream_version);
    }
    // The seal-only exception is for unchained rows: a sealed row stays immutable.
    let error = sql.batch_execute("UPDATE events SET hash = NULL, previous_hash = NULL WHERE stream_version = 1").await;
    assert!(format!("{error:?}").contains("append-only"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_began_first_but_queued_on_the_stream_lock_appends_after_the_holder() {
    // The case the stream lock exists for: `waiter` begins (and would be
    // "older" by its start time) before `holder` takes the lock and appends.
    // Queued on the lock, the waiter reads the holder's commit and appends
    // after it without a conflict, in version, transaction-id and time order.
    let db = TestDatabase::new().await;
    let stream = StreamId::owner_service(
        &connections_domain::OwnerId::parse("alice").expect("owner"),
        &connections_domain::ServiceName::parse("github").expect("service"),
    );
    let mut waiter_client = db.database.pool().get().await.expect("pool connection");
    let mut holder_client = db.database.pool().get().await.expect("pool connection");
    let waiter = waiter_client.transaction().await.expect("begin");
    waiter.query_one("SELECT now()", &[]).await.expect("the waiter's transaction has started");
    let holder = holder_client.transaction().await.expect("begin");
    EventLog::lock_stream(&holder, &stream).await.expect("lock");
    let queued = async {
        let (locked, read) =
            futures_util::join!(EventLog::lock_stream(&waiter, &stream), EventLog::read_stream(&waiter, &stream));
        locked.expect("lock after the holder");
        let (_, version) = read.expect("read after the holder's commit");
        let append =
            StreamAppend { stream_id: stream.clone(), expected_version: Some(version), events: vec![event(2)] };
        EventLog::append(&waiter, &[append], &metadata()).await
    };
    let holding = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let append = StreamAppend {
            stream_id: stream.clone(),
            expected_version: Some(StreamVersion(0)),
            events: vec![event(1)],
        };
        EventLog::append(&holder, &[append], &metadata()).await.expect("holder appends");
        holder.commit().await.expect("holder commits");
    };
    // Without the lock the waiter would append first and the holder would
    // wait on it forever: bound the wait so that this fails instead.
    let (appended, ()) =
        tokio::time::timeout(std::time::Duration::from_secs(10), async { tokio::join!(queued, holding) })
            .await
            .expect("the waiter queued behind the holder instead of appending first");
    appended.expect("the queued append does not conflict");
    waiter.commit().await.expect("commit");
    let (events, _) =
        EventLog::read_stream(&db.database.pool().get().await.expect("pool"), &stream).await.expect("read");
    assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), [1, 2]);
    assert!(events[0].transaction_id < events[1].transaction_id);
    assert!(events[0].recorded_at <= events[1].recorded_at);
}
