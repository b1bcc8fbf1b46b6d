//! Commands when the database fails under them: retried where nothing can
//! have been stored, and a clear 503 when it stays unreachable; never a 500.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use connections_api::auth::Authenticator;
use connections_api::{router, AppState};

use crate::TestApp;

#[tokio::test]
async fn commands_reads_and_resolves_while_the_database_is_unreachable_answer_503_unavailable() {
    let mut app = TestApp::new().await;
    let before = app.fingerprint().await;
    // Nothing listens on port 1: every connection attempt is refused.
    let unreachable =
        connections_store::connect_pool("postgres://postgres@127.0.0.1:1/nothing", 2).expect("a lazy pool");
    app.router = router(AppState {
        database: unreachable.clone(),
        reads: unreachable,
        master_key: app.master_key.clone(),
        authenticator: std::sync::Arc::new(Authenticator::hs256(app.secret()).expect("valid secret")),
        signals: connections_fanout::Signals::new(),
        runtime_nats: crate::runtime_nats(),
        settings: Default::default(),
        lifecycle: Default::default(),
    });
    let body = serde_json::json!({"service": "github", "name": "Work", "credential": {"kind": "api_key", "key": "k"}});
    let answer = app.send(Method::POST, "/v1/connections", Some("alice"), Some(body)).await;
    answer.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(answer.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(!answer.body["detail"].as_str().expect("detail").contains("127.0.0.1"), "no internals in the answer");
    assert_eq!(app.fingerprint().await, before);
    // Reads and resolution say the same, and hand out nothing.
    let read = app.send(Method::GET, "/v1/connections", Some("alice"), None).await;
    read.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let resolved = app.resolve("agent-1", "alice", "github").await;
    resolved.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(resolved.body.get("credential").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_whose_connection_dies_mid_transaction_runs_again_on_a_new_one() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    // Hold the table the revoke deletes the data key from, so that its
    // transaction is caught in the middle.
    let locker = app.db.client().await;
    locker.batch_execute("BEGIN; LOCK TABLE data_keys IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let revoke = app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None);
    let killer = async {
        let admin = app.db.client().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let waiting = "SELECT pid FROM pg_stat_activity \
                       WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()";
        let pid: i32 = loop {
            if let Some(row) = admin.query_opt(waiting, &[]).await.expect("pg_stat_activity") {
                break row.get(0);
            }
            assert!(Instant::now() < deadline, "the revoke never reached the locked table");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let killed: bool = admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminate").get(0);
        assert!(killed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        locker.batch_execute("COMMIT").await.expect("unlock");
    };
    let (answer, ()) = tokio::join!(revoke, killer);
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "revoked");
    assert_eq!(answer.body["affected_agents"], serde_json::json!(["agent-1"]));
    let client = app.db.client().await;
    let revoked: i64 = client
        .query_one("SELECT count(*) FROM events WHERE event_type = 'connection_revoked'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(revoked, 1, "the killed attempt stored nothing; the retry stored the revoke once");
    let keys: i64 = client.query_one("SELECT count(*) FROM data_keys", &[]).await.expect("count").get(0);
    assert_eq!(keys, 0, "the data key is destroyed");
}

/// Reads and commands draw from different pools, and waiting for a pooled
/// connection is bounded: with every read connection taken, a read answers
/// 503 within about a second, and a revoke still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_reads_answer_503_quickly_and_never_hold_back_a_revoke() {
    let mut app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let reads = connections_store::connect_pool(&app.db.url, 1).expect("pool");
    let held = reads.pool().get().await.expect("the only read connection");
    app.router = router(AppState {
        database: app.db.database.clone(),
        reads,
        master_key: app.master_key.clone(),
        authenticator: std::sync::Arc::new(Authenticator::hs256(app.secret()).expect("valid secret")),
        signals: connections_fanout::Signals::new(),
        runtime_nats: crate::runtime_nats(),
        settings: Default::default(),
        lifecycle: Default::default(),
    });
    let started = std::time::Instant::now();
    let read = app.send(Method::GET, "/v1/services", Some("alice"), None).await;
    read.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(read.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "waited {:?}", started.elapsed());
    let revoked = app.send(Method::DELETE, &format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(app.resolve("agent-1", "alice", "github").await.status, StatusCode::CONFLICT);
    drop(held);
}
