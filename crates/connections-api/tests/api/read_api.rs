//! The dashboard read API over the real relay, JetStream and projector.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::TestApp;

async fn position_of(app: &TestApp) -> i64 {
    app.db.client().await.query_one("SELECT max(position) FROM events", &[]).await.expect("head").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_list_and_usage_reflect_commands_with_read_your_writes() {
    let app = TestApp::with_fanout().await;
    let first = app.create("alice", "github", Some("agent-1")).await;
    let second = app.create("alice", "github", None).await;
    let third = app.create("alice", "github", None).await;
    let slack = app.create("alice", "slack", Some("agent-2")).await;
    app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": second}))).await;
    let revoked = app.send(Method::DELETE, format!("/v1/connections/{third}"), Some("alice"), None).await;
    let position = revoked.body["position"].as_i64().expect("position");

    let cards = app.send(Method::GET, format!("/v1/services?min_position={position}"), Some("alice"), None).await;
    assert_eq!(cards.status, StatusCode::OK, "{}", cards.body);
    assert_eq!(
        cards.body["services"],
        json!([
            {"service": "github", "active_connections": 2, "default_connection_id": second, "agent_count": 1, "needs_attention": 0},
            {"service": "slack", "active_connections": 1, "default_connection_id": null, "agent_count": 1, "needs_attention": 0},
        ])
    );
    let active = app.send(Method::GET, format!("/v1/connections?min_position={position}"), Some("alice"), None).await;
    let ids: Vec<&str> = active.body["connections"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["connection_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec![first.as_str(), second.as_str(), slack.as_str()], "active connections in creation order");
    assert_eq!(active.body["connections"][1]["is_default"], true);
    assert_eq!(active.body["connections"][0]["agent_count"], 1);
    let all = app.send(Method::GET, "/v1/connections?status=all&service=github", Some("alice"), None).await;
    assert_eq!(all.body["connections"].as_array().expect("list").len(), 3);
    let only_revoked = app.send(Method::GET, "/v1/connections?status=revoked", Some("alice"), None).await;
    assert_eq!(only_revoked.body["connections"][0]["connection_id"], json!(third));
    assert_eq!(only_revoked.body["connections"][0]["status"], "revoked");

    let usage = app.send(Method::GET, format!("/v1/connections/{first}/agents"), Some("alice"), None).await;
    assert_eq!(usage.status, StatusCode::OK);
    assert_eq!(usage.body["agents"][0]["agent_id"], "agent-1");
    assert_eq!(usage.body["agents"][0]["source"], "created");
    assert!(usage.body["agents"][0]["since"].is_string());

    let status = app.send(Method::GET, "/v1/status", Some("alice"), None).await;
    assert_eq!(status.body["projections"]["dashboard"]["events"], 0, "caught up: {}", status.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_connection_once_in_order() {
    let app = TestApp::with_fanout().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.create("alice", "github", None).await);
    }
    let position = position_of(&app).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(cursor) => format!("/v1/connections?limit=2&cursor={cursor}&min_position={position}"),
            None => format!("/v1/connections?limit=2&min_position={position}"),
        };
        let page = app.send(Method::GET, path, Some("alice"), None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for connection in page.body["connections"].as_array().expect("list") {
            seen.push(connection["connection_id"].as_str().expect("id").to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_projection_cannot_reach_answers_503_with_a_retry_hint() {
    let app = TestApp::new().await; // no projector: nothing is ever applied
    let id = app.create("alice", "github", None).await;
    let position = position_of(&app).await;
    let started = Instant::now();
    let answer = app.send(Method::GET, format!("/v1/services?min_position={position}"), Some("alice"), None).await;
    answer.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "not-yet-projected");
    assert_eq!(answer.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(4), "the wait is bounded");
    // A position that is already applied (0: nothing to wait for) answers at once.
    let now = app.send(Method::GET, format!("/v1/connections/{id}?min_position=0"), Some("alice"), None).await;
    assert_eq!(now.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owner_sees_nothing_of_alices_read_models() {
    let app = TestApp::with_fanout().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let position = position_of(&app).await;
    let alice = app.send(Method::GET, format!("/v1/services?min_position={position}"), Some("alice"), None).await;
    assert_eq!(alice.body["services"].as_array().expect("cards").len(), 1);

    let cards = app.send(Method::GET, format!("/v1/services?min_position={position}"), Some("bob"), None).await;
    assert_eq!(cards.body["services"], json!([]));
    let list = app.send(Method::GET, "/v1/connections?status=all", Some("bob"), None).await;
    assert_eq!(list.body["connections"], json!([]));
    let usage = app.send(Method::GET, format!("/v1/connections/{id}/agents"), Some("bob"), None).await;
    usage.assert_problem(StatusCode::NOT_FOUND, "not-found");
    let missing =
        app.send(Method::GET, format!("/v1/connections/{}/agents", uuid::Uuid::now_v7()), Some("bob"), None).await;
    assert_eq!(missing.body, usage.body, "not yours and absent are indistinguishable");
    let bobs_stream = sse_events(&app, "bob", None, 1, Duration::from_millis(800)).await;
    assert!(bobs_stream.is_empty(), "bob's stream shows alice's changes: {bobs_stream:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_stream_resumes_after_the_last_event_id() {
    let app = TestApp::with_fanout().await;
    app.create("alice", "github", Some("agent-1")).await;
    let events = sse_events(&app, "alice", None, 2, Duration::from_secs(10)).await;
    assert_eq!(events.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), vec!["connection_created", "agent_assigned"]);
    let resumed = sse_events(&app, "alice", Some(&events[0].0), 1, Duration::from_secs(10)).await;
    assert_eq!(resumed[0].0, events[1].0, "resuming after the first event starts at the second");
    app.create("alice", "slack", None).await;
    let later = sse_events(&app, "alice", Some(&events[1].0), 1, Duration::from_secs(10)).await;
    assert_eq!(later[0].1, "connection_created");
    assert_eq!(later[0].2["service"], "slack");
}

#[tokio::test]
async fn bad_query_parameters_are_refused_naming_the_parameter() {
    let app = TestApp::new().await;
    let id = uuid::Uuid::now_v7();
    let cases = [
        ("/v1/connections?status=bogus", "status"),
        ("/v1/connections?limit=0", "limit"),
        ("/v1/connections?limit=201", "limit"),
        ("/v1/connections?limit=ten", "limit"),
        ("/v1/connections?cursor=nope", "cursor"),
        ("/v1/connections?service=Git_Hub", "service"),
        ("/v1/connections?min_position=-1", "min_position"),
        ("/v1/connections?min_position=x", "min_position"),
        ("/v1/connections?owner=bob", "owner"),
        ("/v1/services?min_position=1.5", "min_position"),
        ("/v1/services?service=github", "service"),
        (&format!("/v1/connections/{id}/agents?min_position=no"), "min_position"),
        (&format!("/v1/connections/{id}?min_position=no"), "min_position"),
        ("/v1/connections/not-a-uuid/agents", "id"),
        ("/v1/stream?after=garbage", "after"),
        ("/v1/stream?from=1", "from"),
    ];
    for (path, field) in cases {
        let answer = app.send(Method::GET, path, Some("alice"), None).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{path}");
    }
    let request = Request::builder()
        .uri("/v1/stream")
        .header("authorization", format!("Bearer {}", app.token("alice")))
        .header("last-event-id", "not-a-cursor")
        .body(Body::empty())
        .expect("request");
    let answer = app.raw(request).await;
    answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    assert_eq!(answer.body["field"], "Last-Event-ID");
}

/// Reads up to `count` SSE events as (id, event, data) within `limit`.
pub(crate) async fn sse_events(
    app: &TestApp,
    user: &str,
    last_event_id: Option<&str>,
    count: usize,
    limit: Duration,
) -> Vec<(String, String, Value)> {
    let mut request =
        Request::builder().uri("/v1/stream").header("authorization", format!("Bearer {}", app.token(user)));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = app.router.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while events.len() < count {
        let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await else { break };
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
            if let (Some(id), Some(event), Some(data)) = (field("id:"), field("event:"), field("data:")) {
                events.push((id, event, serde_json::from_str(&data).expect("data is JSON")));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_stream_resumes_to_what_a_rebuild_gives() {
    let mut app = TestApp::with_fanout().await;
    for n in 0..15 {
        app.create(["alice", "bob"][n % 2], "github", Some("agent-1")).await;
    }
    app.crash_and_restart_projector().await;
    for n in 0..15 {
        app.create(["alice", "bob"][n % 2], "slack", None).await;
    }
    let position = position_of(&app).await;
    let cards = app.send(Method::GET, format!("/v1/services?min_position={position}"), Some("alice"), None).await;
    assert_eq!(cards.status, StatusCode::OK, "{}", cards.body);
    let counts: Vec<i64> = cards.body["services"]
        .as_array()
        .expect("cards")
        .iter()
        .map(|c| c["active_connections"].as_i64().expect("count"))
        .collect();
    assert_eq!(counts, vec![8, 8], "alice's cards after the restart: {}", cards.body);
    let live = read_model_rows(&app.db).await;
    connections_projections::rebuild::rebuild(&app.db.database, "dashboard").await.expect("rebuild");
    assert_eq!(read_model_rows(&app.db).await, live, "after a projector crash the read models must equal a rebuild");
}

/// Every row of the dashboard's read models, as JSON text, table by table.
async fn read_model_rows(db: &connections_testkit::TestDatabase) -> Vec<String> {
    let client = db.client().await;
    let mut rows = Vec::new();
    for table in ["rm_connections", "rm_services", "rm_connection_agents", "rm_changes"] {
        for row in
            client.query(&format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY 1"), &[]).await.expect("rows")
        {
            rows.push(row.get::<_, String>(0));
        }
    }
    rows
}

/// The projector commits asynchronously (its rows are derived from the
/// log): a Postgres crash may lose its last batches after their messages
/// were acknowledged, leaving the checkpoint behind the consumer. A running
/// projector finds that at the next event (a gap), a starting one at once;
/// either replays the stream and ends where a rebuild does. Here every
/// batch is lost, the worst case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_lost_with_postgres_after_their_ack_are_replayed_from_the_stream() {
    let mut app = TestApp::with_fanout().await;
    for n in 0..6 {
        app.create(["alice", "bob"][n % 2], "github", Some("agent-1")).await;
    }
    assert!(caught_up_within(&app, Duration::from_secs(20)).await, "the first events were projected");
    let projected = read_model_rows(&app.db).await;
    assert!(!projected.is_empty());
    let client = app.db.client().await;
    let lose_every_batch = "DELETE FROM rm_connection_agents; DELETE FROM rm_connections; DELETE FROM rm_services; \
                            DELETE FROM rm_changes; DELETE FROM projector_checkpoints WHERE name = 'dashboard'";

    // A running projector: the next event is a gap.
    client.batch_execute(lose_every_batch).await.expect("lose the projector's batches");
    app.create("alice", "slack", None).await;
    assert!(caught_up_within(&app, Duration::from_secs(20)).await, "the projector did not replay the stream in 20 s");
    let replayed = read_model_rows(&app.db).await;
    assert!(replayed.len() > projected.len(), "the new event was projected too");

    // A projector that starts (as after the crash): no event needed.
    client.batch_execute(lose_every_batch).await.expect("lose the projector's batches");
    app.crash_and_restart_projector().await;
    assert!(caught_up_within(&app, Duration::from_secs(20)).await, "the restarted projector did not replay in 20 s");
    assert_eq!(read_model_rows(&app.db).await, replayed, "the replay gives back the same rows");
    connections_projections::rebuild::rebuild(&app.db.database, "dashboard").await.expect("rebuild");
    assert_eq!(read_model_rows(&app.db).await, replayed, "after the replay the read models must equal a rebuild");
}

/// Waits (at most `limit`) until the projection has applied the whole log:
/// its newest event. Not the lag's backlog: that counts only events below the
/// cluster's horizon, which a long transaction of a test running alongside
/// (in another database) holds back, so it could read 0 before anything was
/// applied.
async fn caught_up_within(app: &TestApp, limit: Duration) -> bool {
    use connections_projections::queries::{position_status, PositionStatus};
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let head = {
            let client = app.db.database.pool().get().await.expect("a connection");
            connections_store::EventLog::head_position(&client).await.expect("the head")
        };
        let applied = match head {
            None => true,
            Some(head) => position_status(&app.db.database, head).await.expect("status") == PositionStatus::Applied,
        };
        if applied {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_whose_consumer_is_deleted_catches_up_within_seconds() {
    let app = TestApp::with_fanout().await;
    app.create("alice", "github", None).await;
    assert!(caught_up_within(&app, Duration::from_secs(20)).await, "the first event was projected");
    // The server ends the waiting pull ("consumer deleted"); the projector
    // starts a session on a new consumer, replays the stream and skips what
    // its checkpoint covers. (A pull lost with a NATS node, which no status
    // ends, is tested on a cluster in tests/e2e/cluster.rs.)
    app.delete_projector_consumer().await;
    let started = Instant::now();
    app.create("alice", "slack", None).await;
    assert!(caught_up_within(&app, Duration::from_secs(15)).await, "the projector did not catch up in 15 s");
    println!("caught up {:?} after its consumer was deleted", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_no_answer_can_have_carried_is_refused_at_once() {
    let app = TestApp::new().await;
    app.create("alice", "github", None).await;
    let head = position_of(&app).await;
    for path in [
        format!("/v1/services?min_position={}", head + 1_000_000),
        "/v1/services?min_position=900000000000".to_owned(),
        format!("/v1/connections?min_position={}", head + 1),
    ] {
        let started = Instant::now();
        let answer = app.send(Method::GET, path.clone(), Some("alice"), None).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], "min_position", "{path}");
        assert!(answer.body["detail"].as_str().is_some_and(|d| d.contains("beyond the end of the log")));
        assert!(started.elapsed() < Duration::from_millis(500), "{path} waited {:?}", started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_streams_are_limited_per_user_and_freed_when_closed() {
    let app = TestApp::new().await; // the default limit: 16 per user
    let open = |user: &str| {
        let request = Request::builder()
            .uri("/v1/stream")
            .header("authorization", format!("Bearer {}", app.token(user)))
            .body(Body::empty())
            .expect("request");
        app.router.clone().oneshot(request)
    };
    let mut streams = Vec::new();
    for _ in 0..16 {
        let response = open("alice").await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    let refused = open("alice").await.expect("response");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    // Another user is not affected.
    assert_eq!(open("bob").await.expect("response").status(), StatusCode::OK);
    // Closing one frees its slot.
    drop(streams.pop());
    assert_eq!(open("alice").await.expect("response").status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_ends_when_its_token_expires() {
    let app = TestApp::new().await;
    let exp = chrono::Utc::now().timestamp() + 2;
    let claims = connections_api::auth::Claims { sub: "alice".into(), exp, role: None, owner: None };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(app.secret()),
    )
    .expect("sign");
    let request =
        Request::builder().uri("/v1/stream").header("authorization", format!("Bearer {token}")).body(Body::empty());
    let response = app.router.clone().oneshot(request.expect("request")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let started = Instant::now();
    // Keep-alive comments may come; the body must end, within the token's life plus a margin.
    loop {
        match tokio::time::timeout(Duration::from_secs(6), body.frame()).await {
            Ok(None) => break,
            Ok(Some(_)) => {}
            Err(_) => panic!("the stream outlived its token by seconds"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(500), "ended early: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_ends_every_binding_in_the_read_models_with_its_one_event() {
    let app = TestApp::with_fanout().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    app.create("alice", "github", None).await; // keeps the service's card
    let assigned = app
        .send(Method::POST, format!("/v1/connections/{id}/agents"), Some("alice"), Some(json!({"agent_id": "agent-2"})))
        .await;
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.body);
    let revoked = app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(revoked.body["affected_agents"], json!(["agent-1", "agent-2"]));
    let position = revoked.body["position"].as_i64().expect("position");
    let types = app.event_types().await;
    assert_eq!(
        types,
        ["connection_created", "agent_assigned", "connection_created", "agent_assigned", "connection_revoked"]
    );

    let cards = app.send(Method::GET, format!("/v1/services?min_position={position}"), Some("alice"), None).await;
    assert_eq!(cards.status, StatusCode::OK, "{}", cards.body);
    assert_eq!(cards.body["services"][0]["agent_count"], 0, "{}", cards.body);
    assert_eq!(cards.body["services"][0]["active_connections"], 1, "{}", cards.body);
    let usage = app.send(Method::GET, format!("/v1/connections/{id}/agents"), Some("alice"), None).await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.body);
    assert_eq!(usage.body["agents"], json!([]), "{}", usage.body);
    let listed = app.send(Method::GET, "/v1/connections?status=revoked", Some("alice"), None).await;
    assert_eq!(listed.body["connections"][0]["agent_count"], 0, "{}", listed.body);
}
