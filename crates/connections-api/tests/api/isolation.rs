//! Another user gets 404 on every one of alice's endpoints, and nothing changes.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::TestApp;

#[tokio::test]
async fn bob_gets_not_found_on_every_one_of_alices_endpoints_and_the_log_is_unchanged() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": id}))).await;
    let before = app.fingerprint().await;
    let alice_view = app.send(Method::GET, &format!("/v1/connections/{id}"), Some("alice"), None).await.body;

    let attempts = [
        (Method::GET, format!("/v1/connections/{id}"), None),
        (Method::DELETE, format!("/v1/connections/{id}"), None),
        (Method::POST, format!("/v1/connections/{id}/agents"), Some(json!({"agent_id": "bobs-agent"}))),
        (Method::DELETE, format!("/v1/connections/{id}/agents/agent-1"), None),
        (
            Method::PUT,
            format!("/v1/connections/{id}/credential"),
            Some(json!({"credential": {"kind": "api_key", "key": "x"}})),
        ),
        (
            Method::POST,
            format!("/v1/connections/{id}/replace"),
            Some(json!({"credential": {"kind": "api_key", "key": "x"}})),
        ),
        (Method::PUT, "/v1/services/github/default".to_owned(), Some(json!({"connection_id": id}))),
    ];
    let absent = uuid::Uuid::now_v7();
    for (method, path, body) in attempts {
        let answer = app.send(method.clone(), &path, Some("bob"), body.clone()).await;
        answer.assert_problem(StatusCode::NOT_FOUND, "not-found");
        // The answer for someone else's connection is identical to the one for no connection at all.
        let absent_path = path.replace(&id, &absent.to_string());
        if absent_path != path {
            let missing = app.send(method, &absent_path, Some("bob"), body).await;
            assert_eq!(missing.status, answer.status);
            assert_eq!(missing.body, answer.body, "404 must not reveal that the connection exists");
        }
    }
    // Bob clearing his own default for the service touches nothing of alice's.
    let clear = app.send(Method::DELETE, "/v1/services/github/default", Some("bob"), None).await;
    assert_eq!(clear.status, StatusCode::OK);
    assert_eq!(clear.body["default_connection_id"], serde_json::Value::Null);

    assert_eq!(app.fingerprint().await, before, "bob's attempts must not change any table");
    let after = app.send(Method::GET, &format!("/v1/connections/{id}"), Some("alice"), None).await.body;
    assert_eq!(after, alice_view, "alice's connection is unchanged");
}
