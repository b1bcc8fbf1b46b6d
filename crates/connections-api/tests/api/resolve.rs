//! Credential resolution for agent runtimes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::TestApp;

#[tokio::test]
async fn resolution_uses_the_binding_then_the_default_recorded_as_a_binding_then_asks_for_authorization() {
    let app = TestApp::new().await;
    let assigned = app.create("alice", "github", Some("agent-1")).await;
    let fallback = app.create("alice", "github", None).await;

    let mine = app.resolve("agent-1", "alice", "github").await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.body);
    assert_eq!(mine.body["connection_id"], json!(assigned));
    assert_eq!(mine.body["via"], "assigned");
    assert_eq!(mine.body["credential"], json!({"kind": "api_key", "key": "k-123"}));
    assert!(mine.body["lease_seconds"].as_u64().expect("lease") > 0);
    assert_eq!(mine.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));

    let none = app.resolve("agent-2", "alice", "github").await;
    none.assert_problem(StatusCode::CONFLICT, "authorization-required");
    assert_eq!(none.body["service"], "github");

    app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": fallback}))).await;
    let by_default = app.resolve("agent-2", "alice", "github").await;
    assert_eq!(by_default.body["connection_id"], json!(fallback));
    assert_eq!(by_default.body["via"], "default");
    let view = app.send(Method::GET, format!("/v1/connections/{fallback}"), Some("alice"), None).await;
    assert_eq!(view.body["agents"][0]["agent_id"], "agent-2", "the default binding is recorded and counted");
    assert_eq!(view.body["agents"][0]["source"], "default");

    // Later interactions keep using it, even when the owner changes the default.
    app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": assigned}))).await;
    let again = app.resolve("agent-2", "alice", "github").await;
    assert_eq!(again.body["connection_id"], json!(fallback));
    let bindings: i64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE event_type = 'agent_assigned' AND data->>'source' = 'default'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(bindings, 1, "the default binding is recorded once");
}

#[tokio::test]
async fn every_hand_out_is_in_the_access_log_and_rotation_hands_out_the_new_version() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    app.resolve("agent-1", "alice", "github").await;
    app.send(
        Method::PUT,
        format!("/v1/connections/{id}/credential"),
        Some("alice"),
        Some(json!({"credential": {"kind": "basic", "username": "u", "password": "p2"}})),
    )
    .await;
    let rotated = app.resolve("agent-1", "alice", "github").await;
    assert_eq!(rotated.body["credential_version"], 2);
    assert_eq!(rotated.body["credential"], json!({"kind": "basic", "username": "u", "password": "p2"}));
    let rows = app
        .db
        .client()
        .await
        .query("SELECT agent_id, owner_id, credential_version FROM access_log ORDER BY access_id", &[])
        .await
        .expect("access log");
    let log: Vec<(String, String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(log, vec![("agent-1".into(), "alice".into(), 1), ("agent-1".into(), "alice".into(), 2)]);
}

#[tokio::test]
async fn if_the_hand_out_cannot_be_recorded_nothing_is_handed_out() {
    let app = TestApp::new().await;
    app.create("alice", "github", Some("agent-1")).await;
    app.db
        .client()
        .await
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON access_log FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .expect("break the access log");
    let answer = app.resolve("agent-1", "alice", "github").await;
    answer.assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!answer.body.to_string().contains("k-123"), "a secret left without being recorded");
}

#[tokio::test]
async fn agent_tokens_resolve_only_for_their_owner_and_cannot_call_user_endpoints() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": id}))).await;
    // The same agent id acting for bob gets nothing of alice's.
    let for_bob = app.resolve("agent-1", "bob", "github").await;
    for_bob.assert_problem(StatusCode::CONFLICT, "authorization-required");
    // An agent token on a user endpoint.
    let request = Request::builder()
        .uri(format!("/v1/connections/{id}"))
        .header("authorization", format!("Bearer {}", app.agent_token("agent-1", "alice")))
        .body(Body::empty())
        .expect("request");
    app.raw(request).await.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    // A user token on the resolve endpoint.
    let answer = app.send(Method::POST, "/v1/resolve", Some("alice"), Some(json!({"service": "github"}))).await;
    answer.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let logged: i64 =
        app.db.client().await.query_one("SELECT count(*) FROM access_log", &[]).await.expect("count").get(0);
    assert_eq!(logged, 0);
}

#[tokio::test]
async fn bad_resolve_requests_are_refused_naming_the_field() {
    let app = TestApp::new().await;
    let token = app.agent_token("agent-1", "alice");
    let send = |content_type: &'static str, body: String| {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/resolve")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .body(Body::from(body))
            .expect("request");
        app.raw(request)
    };
    for (body, field) in [
        (json!({}), "service"),
        (json!({"service": "Git Hub"}), "service"),
        (json!({"service": 7}), "service"),
        (json!({"service": "github", "agent_id": "other"}), "agent_id"),
    ] {
        let answer = send("application/json", body.to_string()).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field);
    }
    send("application/json", "{".into()).await.assert_problem(StatusCode::BAD_REQUEST, "malformed-json");
    send("text/plain", "{}".into()).await.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_resolve_that_starts_after_the_revoke_returned_gets_the_secret() {
    let app = Arc::new(TestApp::new().await);
    let id = app.create("alice", "github", Some("agent-1")).await;
    let revoked_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut hammers = Vec::new();
    for _ in 0..6 {
        let app = app.clone();
        let id = id.clone();
        hammers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let answer = app.resolve("agent-1", "alice", "github").await;
                let handed_out = answer.status == StatusCode::OK && answer.body["connection_id"] == json!(id);
                outcomes.push((started, handed_out));
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let revoke = app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(revoke.status, StatusCode::OK);
    *revoked_at.lock().expect("lock") = Some(Instant::now());
    let returned = revoked_at.lock().expect("lock").expect("revoke returned");
    let mut before = 0;
    let mut after = 0;
    for hammer in hammers {
        for (started, handed_out) in hammer.await.expect("hammer") {
            if started > returned {
                after += 1;
                assert!(!handed_out, "a resolve that started after the revoke returned got the secret");
            } else if handed_out {
                before += 1;
            }
        }
    }
    assert!(before > 0 && after > 0, "the race must have resolves on both sides ({before} before, {after} after)");
}
