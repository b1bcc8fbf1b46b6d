//! `POST /v1/connections/{id}/problems`: runtimes report a credential the
//! provider rejected; the owner sees it until they act.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::TestApp;

async fn report(app: &TestApp, agent: &str, owner: &str, id: &str, body: Value) -> crate::Answer {
    app.raw(
        Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/connections/{id}/problems"))
            .header("authorization", format!("Bearer {}", app.agent_token(agent, owner)))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request"),
    )
    .await
}

/// Alice's github connection, handed to agent-1 once.
async fn handed(app: &TestApp) -> String {
    let id = app.create("alice", "github", Some("agent-1")).await;
    assert_eq!(app.resolve("agent-1", "alice", "github").await.status, StatusCode::OK);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_report_is_recorded_and_the_owner_sees_it_everywhere_until_a_rotation() {
    let app = TestApp::with_fanout().await;
    let id = handed(&app).await;
    let first =
        report(&app, "agent-1", "alice", &id, json!({"kind": "rejected", "status": 401, "detail": "invalid_token"}))
            .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["recorded"], true);
    assert_eq!(first.body["needs_attention"], true);
    assert_eq!(first.body["credential_version"], 1);
    let position = first.body["position"].as_i64().expect("position");
    let again = report(&app, "agent-1", "alice", &id, json!({"kind": "rejected"})).await;
    assert_eq!(
        (again.status, again.body["recorded"].clone()),
        (StatusCode::OK, json!(false)),
        "a repeat changes nothing"
    );

    let events = app
        .db
        .client()
        .await
        .query("SELECT data FROM events WHERE event_type = 'credential_rejected'", &[])
        .await
        .expect("events");
    assert_eq!(events.len(), 1, "recorded once");
    let data: Value = events[0].get(0);
    assert_eq!(
        data,
        json!({"connection_id": id, "agent_id": "agent-1", "credential_version": 1, "status": 401, "detail": "invalid_token"})
    );

    // The connection, the list, the card, the usage overview and the change stream show it.
    let view = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(view.body["needs_attention"], true);
    let list = app.send(Method::GET, format!("/v1/connections?min_position={position}"), Some("alice"), None).await;
    assert_eq!(list.body["connections"][0]["needs_attention"], true, "{}", list.body);
    let cards = app.send(Method::GET, "/v1/services", Some("alice"), None).await;
    assert_eq!(cards.body["services"][0]["needs_attention"], 1, "{}", cards.body);
    let usage = app.send(Method::GET, format!("/v1/connections/{id}/agents"), Some("alice"), None).await;
    assert_eq!(usage.body["connection"]["needs_attention"], true);
    let changes = crate::read_api::sse_events(&app, "alice", None, 3, Duration::from_secs(3)).await;
    assert!(changes.iter().any(|(_, _, data)| data["event_type"] == "credential_rejected"), "{changes:?}");
    let review = app.send(Method::GET, "/v1/review", Some("alice"), None).await;
    assert_eq!(review.body["findings"][0]["kind"], "rejected", "{}", review.body);

    // Resolving keeps working: the owner decides.
    let resolved = app.resolve("agent-1", "alice", "github").await;
    assert_eq!(resolved.status, StatusCode::OK);
    assert_eq!(resolved.body["needs_attention"], true);

    // A rotation clears it; the new version can be reported again.
    let rotated = app
        .send(
            Method::PUT,
            format!("/v1/connections/{id}/credential"),
            Some("alice"),
            Some(json!({"credential": {"kind": "api_key", "key": "k2"}})),
        )
        .await;
    assert_eq!(rotated.body["needs_attention"], false);
    let position = rotated.body["position"].as_i64().expect("position");
    let cards = app.send(Method::GET, format!("/v1/services?min_position={position}"), Some("alice"), None).await;
    assert_eq!(cards.body["services"][0]["needs_attention"], 0);
    let stale = report(&app, "agent-1", "alice", &id, json!({"kind": "rejected", "credential_version": 1})).await;
    assert_eq!((stale.body["recorded"].clone(), stale.body["needs_attention"].clone()), (json!(false), json!(false)));
    let too_new = report(&app, "agent-1", "alice", &id, json!({"kind": "rejected", "credential_version": 2})).await;
    too_new.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    assert_eq!(too_new.body["field"], "credential_version", "agent-1 was never handed version 2");
    assert_eq!(app.resolve("agent-1", "alice", "github").await.body["credential_version"], 2);
    let current = report(&app, "agent-1", "alice", &id, json!({"kind": "rejected"})).await;
    assert_eq!((current.body["recorded"].clone(), current.body["credential_version"].clone()), (json!(true), json!(2)));
}

#[tokio::test]
async fn only_an_agent_that_was_handed_the_connection_may_report_on_it() {
    let app = TestApp::new().await;
    let id = handed(&app).await;
    let bound_never_handed = app.create("alice", "slack", Some("agent-2")).await;
    let before = app.fingerprint().await;
    let body = json!({"kind": "rejected"});
    let unknown = uuid::Uuid::now_v7().to_string();
    let never = report(&app, "agent-2", "alice", &id, body.clone()).await;
    never.assert_problem(StatusCode::NOT_FOUND, "not-found");
    let absent = report(&app, "agent-2", "alice", &unknown, body.clone()).await;
    assert_eq!(absent.body, never.body, "a connection never handed is indistinguishable from none");
    report(&app, "agent-2", "alice", &bound_never_handed, body.clone())
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    // The same agent id acting for another owner is another agent.
    report(&app, "agent-1", "mallory", &id, body.clone()).await.assert_problem(StatusCode::NOT_FOUND, "not-found");
    // A user token, even the owner's, is not an agent token.
    let user =
        app.send(Method::POST, format!("/v1/connections/{id}/problems"), Some("alice"), Some(body.clone())).await;
    assert_eq!(user.status, StatusCode::UNAUTHORIZED);
    let anonymous = app.send(Method::POST, format!("/v1/connections/{id}/problems"), None, Some(body)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.fingerprint().await, before, "nothing was stored");
    let view = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(view.body["needs_attention"], false);
}

#[tokio::test]
async fn bad_reports_name_the_field_and_a_detail_holding_the_credential_is_refused() {
    let app = TestApp::new().await;
    let id = handed(&app).await;
    let before = app.fingerprint().await;
    for (body, field) in [
        (json!({}), "kind"),
        (json!({"kind": "expired"}), "kind"),
        (json!({"kind": 1}), "kind"),
        (json!({"kind": "rejected", "status": 200}), "status"),
        (json!({"kind": "rejected", "status": "401"}), "status"),
        (json!({"kind": "rejected", "detail": ""}), "detail"),
        (json!({"kind": "rejected", "detail": "a".repeat(201)}), "detail"),
        (json!({"kind": "rejected", "detail": "line\nbreak"}), "detail"),
        (json!({"kind": "rejected", "detail": "the key k-123 was refused"}), "detail"),
        (json!({"kind": "rejected", "credential_version": 0}), "credential_version"),
        (json!({"kind": "rejected", "agent_id": "someone-else"}), "agent_id"),
    ] {
        let answer = report(&app, "agent-1", "alice", &id, body.clone()).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{body}: {}", answer.body);
        assert!(!answer.body.to_string().contains("k-123"), "the problem echoes the secret");
    }
    report(&app, "agent-1", "alice", "nope", json!({"kind": "rejected"}))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    assert_eq!(app.fingerprint().await, before, "nothing was stored");
}

#[tokio::test]
async fn reports_are_rate_limited_per_connection_and_agent() {
    let app = TestApp::new().await;
    let id = handed(&app).await;
    let other = app.create("alice", "slack", Some("agent-1")).await;
    assert_eq!(app.resolve("agent-1", "alice", "slack").await.status, StatusCode::OK);
    for n in 0..6 {
        let answer = report(&app, "agent-1", "alice", &id, json!({"kind": "rejected"})).await;
        assert_eq!(answer.status, StatusCode::OK, "report {n}: {}", answer.body);
    }
    let limited = report(&app, "agent-1", "alice", &id, json!({"kind": "rejected"})).await;
    limited.assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-reports");
    let retry: u64 = limited.headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let elsewhere = report(&app, "agent-1", "alice", &other, json!({"kind": "rejected"})).await;
    assert_eq!(elsewhere.status, StatusCode::OK, "another connection has its own budget");
    let events: i64 = app
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM events WHERE event_type = 'credential_rejected'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(events, 2, "one per connection, whatever the number of reports");
}

#[tokio::test]
async fn reporting_on_a_revoked_connection_is_refused() {
    let app = TestApp::new().await;
    let id = handed(&app).await;
    app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    let answer = report(&app, "agent-1", "alice", &id, json!({"kind": "rejected", "detail": "gone"})).await;
    answer.assert_problem(StatusCode::CONFLICT, "connection-revoked");
}
