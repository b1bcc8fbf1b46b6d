//! The dashboard projection against the real Postgres: row-level security,
//! idempotent redelivery, gap detection, and rebuild = live projection.

use connections_domain::*;
use connections_fanout::Envelope;
use connections_projections::projector::{apply_batch, ProjectorError};
use connections_projections::rebuild::rebuild;
use connections_store::codec::encode;
use connections_store::{
    EventLog, LogCursor, Metadata, NewEvent, RecordedEvent, StreamAppend, StreamId, StreamVersion,
};
use connections_testkit::TestDatabase;
use rand::{Rng, SeedableRng};

/// Runs `count` random commands (seeded) for three owners on two services
/// through the real domain and log; returns the log in its global order.
async fn random_history(db: &TestDatabase, count: usize, seed: u64) -> Vec<RecordedEvent> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut client = db.database.pool().get().await.expect("pool");
    let mut ids: Vec<(String, String, ConnectionId)> = Vec::new();
    for _ in 0..count {
        let owner = ["alice", "bob", "carol"][rng.gen_range(0..3)];
        let service = ["github", "google-calendar"][rng.gen_range(0..2)];
        let agent = AgentId::parse(format!("agent-{}", rng.gen_range(0..4))).expect("valid");
        let mine: Vec<ConnectionId> =
            ids.iter().filter(|(o, s, _)| o == owner && s == service).map(|(_, _, id)| *id).collect();
        let pick = |rng: &mut rand::rngs::StdRng| mine.get(rng.gen_range(0..mine.len().max(1))).copied();
        let command = match (rng.gen_range(0..11), pick(&mut rng)) {
            (0..=2, _) | (_, None) => {
                let id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
                ids.push((owner.into(), service.into(), id));
                Command::CreateConnection {
                    connection_id: id,
                    service: ServiceName::parse(service).expect("valid"),
                    name: ConnectionName::parse("c").expect("valid"),
                    credential_kind: CredentialKind::ApiKey,
                    agent_id: rng.gen_bool(0.5).then_some(agent),
                    skill: None,
                }
            }
            (3 | 4, Some(id)) => Command::AssignToAgent { connection_id: id, agent_id: agent },
            (5, Some(id)) => Command::UnassignFromAgent { connection_id: id, agent_id: agent },
            (6, Some(id)) => Command::SetDefault { connection_id: id },
            (7, _) => Command::ClearDefault,
            (8, Some(id)) => Command::RotateCredential { connection_id: id, credential_kind: CredentialKind::Basic },
            (9, Some(id)) => {
                let new_connection_id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
                ids.push((owner.into(), service.into(), new_connection_id));
                Command::ReplaceConnection {
                    connection_id: id,
                    new_connection_id,
                    name: None,
                    credential_kind: CredentialKind::ApiKey,
                }
            }
            (_, Some(id)) => Command::RevokeConnection { connection_id: id },
        };
        let owner_id = OwnerId::parse(owner).expect("valid");
        let stream_id = StreamId::owner_service(&owner_id, &ServiceName::parse(service).expect("valid"));
        let transaction = client.transaction().await.expect("begin");
        let (history, version) = EventLog::read_stream(&transaction, &stream_id).await.expect("read");
        let mut state = OwnerService::default();
        for recorded in &history {
            state.apply(
                &connections_store::codec::decode(&recorded.event_type, recorded.schema_version, &recorded.data)
                    .expect("decode"),
            );
        }
        let Ok(events) = decide(&state, &Request { actor: owner_id, command }) else { continue };
        let new_events = events
            .iter()
            .map(|e| {
                let (event_type, schema_version, data) = encode(e);
                NewEvent { event_id: uuid::Uuid::now_v7(), event_type, schema_version, data }
            })
            .collect();
        let append = StreamAppend { stream_id, expected_version: Some(StreamVersion(version.0)), events: new_events };
        let metadata =
            Metadata { actor: owner.into(), command_id: uuid::Uuid::now_v7(), correlation_id: uuid::Uuid::now_v7() };
        EventLog::append(&transaction, &[append], &metadata).await.expect("append");
        transaction.commit().await.expect("commit");
    }
    // Read the whole log through the gap-safe reader. Its horizon is
    // cluster-wide (other tests' transactions hold it back for a moment), so
    // follow it until it has returned every committed event.
    let committed: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0);
    let mut log = Vec::new();
    let mut cursor = LogCursor::default();
    let started = std::time::Instant::now();
    while (log.len() as i64) < committed {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the log reader did not catch up");
        let batch = EventLog::read_after(&client, cursor, 1000).await.expect("read");
        match batch.last() {
            Some(last) => cursor = last.cursor(),
            None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
        log.extend(batch);
    }
    log
}

fn envelopes(log: &[RecordedEvent]) -> Vec<Envelope> {
    let mut previous = None;
    log.iter()
        .map(|event| {
            let envelope = connections_fanout::envelope_of(event, previous).expect("owner-service stream");
            previous = Some(event.cursor());
            envelope
        })
        .collect()
}

/// Every read-model row, sorted, as text (read as the table owner).
async fn snapshot(db: &TestDatabase) -> Vec<String> {
    let client = db.client().await;
    let mut rows = Vec::new();
    for table in ["rm_connections", "rm_services", "rm_connection_agents", "rm_changes"] {
        for row in client
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY row_to_json(t)::text"), &[])
            .await
            .expect("snapshot")
        {
            rows.push(format!("{table}: {}", row.get::<_, String>(0)));
        }
    }
    rows
}

#[tokio::test]
async fn a_rebuild_from_the_log_equals_the_live_projection() {
    let db = TestDatabase::new().await;
    let log = random_history(&db, 400, 7).await;
    // Every other batch as its instance's relay's bystander (as when the
    // relay leads here), the rest not: the rows are the same.
    let bystanders = connections_store::Bystanders::default();
    for (n, chunk) in envelopes(&log).chunks(37).enumerate() {
        let registering = (n % 2 == 0).then_some(&bystanders);
        apply_batch(&db.database, registering, chunk).await.expect("apply");
        assert!(bystanders.ids().is_empty(), "a batch stays registered only while it runs");
    }
    let live = snapshot(&db).await;
    assert!(live.len() > 400, "the scenario must produce a real read model");
    let report = rebuild(&db.database, "dashboard").await.expect("rebuild");
    assert_eq!(report.events as usize, log.len());
    assert_eq!(snapshot(&db).await, live, "the rebuilt read model differs from the live one");
    // The projector continues after the swap from where the tables stand.
    let more = random_history(&db, 20, 8).await;
    let all = envelopes(&more);
    let fresh: Vec<_> = all.into_iter().skip(log.len()).collect();
    apply_batch(&db.database, None, &fresh).await.expect("apply after the swap");
}

#[tokio::test]
async fn redelivered_events_change_nothing() {
    let db = TestDatabase::new().await;
    let log = random_history(&db, 60, 1).await;
    let envelopes = envelopes(&log);
    apply_batch(&db.database, None, &envelopes).await.expect("apply");
    let before = snapshot(&db).await;
    assert_eq!(apply_batch(&db.database, None, &envelopes).await.expect("redeliver"), None);
    assert_eq!(apply_batch(&db.database, None, &envelopes[10..20]).await.expect("redeliver a part"), None);
    assert_eq!(snapshot(&db).await, before);
}

#[tokio::test]
async fn a_missing_event_is_a_gap_not_a_silent_skip() {
    let db = TestDatabase::new().await;
    let log = random_history(&db, 30, 2).await;
    let envelopes = envelopes(&log);
    apply_batch(&db.database, None, &envelopes[..5]).await.expect("apply the first five");
    let before = snapshot(&db).await;
    let result = apply_batch(&db.database, None, &envelopes[6..]).await;
    assert!(matches!(result, Err(ProjectorError::Gap { .. })), "expected a gap, got {result:?}");
    assert_eq!(snapshot(&db).await, before, "a batch with a gap must apply nothing");
}

#[tokio::test]
async fn row_level_security_scopes_every_read_to_the_named_owner() {
    let db = TestDatabase::new().await;
    let log = random_history(&db, 120, 3).await;
    apply_batch(&db.database, None, &envelopes(&log)).await.expect("apply");
    let mut client = db.client().await;
    let owners_in = |rows: Vec<tokio_postgres::Row>| -> std::collections::BTreeSet<String> {
        rows.iter().map(|r| r.get(0)).collect()
    };

    let tx = client.transaction().await.expect("begin");
    tx.batch_execute("SET LOCAL ROLE connections_reader").await.expect("switch role");
    for table in ["rm_connections", "rm_services", "rm_connection_agents", "rm_changes"] {
        let count: i64 = tx.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0);
        assert_eq!(count, 0, "{table}: a reader with no owner set must see nothing");
    }
    tx.rollback().await.expect("rollback");

    let tx = client.transaction().await.expect("begin");
    tx.batch_execute("SET LOCAL ROLE connections_reader; SELECT set_config('connections.owner', 'alice', true)")
        .await
        .expect("scope to alice");
    for table in ["rm_connections", "rm_services", "rm_connection_agents", "rm_changes"] {
        // No WHERE clause: the policy alone must keep other owners out.
        let owners = owners_in(tx.query(&format!("SELECT owner_id FROM {table}"), &[]).await.expect("select"));
        assert_eq!(owners.into_iter().collect::<Vec<_>>(), vec!["alice".to_owned()], "{table}");
    }
    let write = tx.execute("DELETE FROM rm_connections", &[]).await;
    assert!(write.is_err(), "a reader must not write read models");
    tx.rollback().await.expect("rollback");

    // The reader role is what the API uses; it is not privileged.
    let row = client
        .query_one("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'connections_reader'", &[])
        .await
        .expect("role");
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (false, false));
    let forced: bool = client
        .query_one("SELECT relforcerowsecurity AND relrowsecurity FROM pg_class WHERE relname = 'rm_connections'", &[])
        .await
        .expect("class")
        .get(0);
    assert!(forced, "row-level security must be enabled and forced");
}

#[tokio::test]
async fn envelopes_of_another_log_are_refused_and_change_nothing() {
    let db = TestDatabase::new().await;
    let other = TestDatabase::new().await;
    let ours = random_history(&db, 10, 4).await;
    let theirs = random_history(&other, 10, 5).await;
    apply_batch(&db.database, None, &envelopes(&ours)).await.expect("apply our log");
    let before = snapshot(&db).await;
    let result = apply_batch(&db.database, None, &envelopes(&theirs)).await;
    assert!(matches!(result, Err(ProjectorError::ForeignStream)), "got {result:?}");
    assert_eq!(snapshot(&db).await, before, "a foreign stream must not touch the read models");
}
