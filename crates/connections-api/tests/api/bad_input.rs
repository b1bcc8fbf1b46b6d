//! Bad input on every input path: the documented 4xx problem naming the
//! field, nothing stored, never a 500, never a secret echoed.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::TestApp;

const CANARY: &str = "canary-bad-input-7c1d";

fn valid_create() -> Value {
    json!({"service": "github", "name": "Work", "credential": {"kind": "api_key", "key": CANARY}})
}

fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().expect("object").remove(field);
    body
}

#[tokio::test]
async fn create_refuses_each_kind_of_bad_body_and_stores_nothing() {
    let app = TestApp::new().await;
    let before = app.fingerprint().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("missing service", without(valid_create(), "service"), "service"),
        ("missing name", without(valid_create(), "name"), "name"),
        ("missing credential", without(valid_create(), "credential"), "credential"),
        ("service wrong type", with(valid_create(), "service", json!(42)), "service"),
        ("service uppercase", with(valid_create(), "service", json!("GitHub")), "service"),
        ("service empty", with(valid_create(), "service", json!("")), "service"),
        ("service too long", with(valid_create(), "service", json!("a".repeat(65))), "service"),
        ("name empty", with(valid_create(), "name", json!("")), "name"),
        ("name too long", with(valid_create(), "name", json!("n".repeat(201))), "name"),
        ("name control char", with(valid_create(), "name", json!("bad\u{0007}name")), "name"),
        ("agent invalid chars", with(valid_create(), "agent_id", json!("agent.1")), "agent_id"),
        ("agent too long", with(valid_create(), "agent_id", json!("a".repeat(129))), "agent_id"),
        ("agent wrong type", with(valid_create(), "agent_id", json!(["a"])), "agent_id"),
        ("skill control char", with(valid_create(), "skill", json!("s\nkill")), "skill"),
        ("unknown field", with(valid_create(), "owner", json!("mallory")), "owner"),
        ("credential not object", with(valid_create(), "credential", json!(CANARY)), "credential"),
        ("unknown kind", with(valid_create(), "credential", json!({"kind": "ssh", "key": CANARY})), "credential.kind"),
        ("missing kind", with(valid_create(), "credential", json!({"key": CANARY})), "credential.kind"),
        ("key wrong type", with(valid_create(), "credential", json!({"kind": "api_key", "key": 5})), "credential.key"),
        ("key empty", with(valid_create(), "credential", json!({"kind": "api_key", "key": ""})), "credential.key"),
        (
            "unknown credential field",
            with(valid_create(), "credential", json!({"kind": "api_key", "key": CANARY, "password": CANARY})),
            "credential.password",
        ),
        (
            "basic missing password",
            with(valid_create(), "credential", json!({"kind": "basic", "username": CANARY})),
            "credential.password",
        ),
        (
            "oauth bad expiry",
            with(valid_create(), "credential", json!({"kind": "oauth2", "access_token": CANARY, "expires_at": CANARY})),
            "credential.expires_at",
        ),
        (
            "oauth bad scopes",
            with(
                valid_create(),
                "credential",
                json!({"kind": "oauth2", "access_token": CANARY, "scopes": [CANARY, 1]}),
            ),
            "credential.scopes",
        ),
        (
            "credential over 16 KiB",
            with(valid_create(), "credential", json!({"kind": "api_key", "key": CANARY.repeat(1700)})),
            "credential",
        ),
        ("body not an object", json!([valid_create()]), "body"),
    ];
    for (case, body, field) in cases {
        let answer = app.send(Method::POST, "/v1/connections", Some("alice"), Some(body)).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{case}: the problem must name the field");
        assert!(!answer.body.to_string().contains(CANARY), "{case}: the problem echoed a secret");
    }
    assert_eq!(app.fingerprint().await, before, "bad input must store nothing");
}

fn raw(method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>, token: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(Body::from(body)).expect("request")
}

#[tokio::test]
async fn malformed_json_wrong_content_type_and_oversize_bodies_are_refused_on_every_body_route() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", None).await;
    let before = app.fingerprint().await;
    let token = app.token("alice");
    let routes = [
        (Method::POST, "/v1/connections".to_owned()),
        (Method::POST, format!("/v1/connections/{id}/agents")),
        (Method::PUT, format!("/v1/connections/{id}/credential")),
        (Method::PUT, "/v1/services/github/default".to_owned()),
    ];
    for (method, path) in routes {
        let malformed = app
            .raw(raw(
                method.clone(),
                &path,
                Some("application/json"),
                format!("{{\"key\": \"{CANARY}").into_bytes(),
                &token,
            ))
            .await;
        malformed.assert_problem(StatusCode::BAD_REQUEST, "malformed-json");
        assert!(!malformed.body.to_string().contains(CANARY));

        let empty = app.raw(raw(method.clone(), &path, Some("application/json"), vec![], &token)).await;
        empty.assert_problem(StatusCode::BAD_REQUEST, "malformed-json");

        let text = app.raw(raw(method.clone(), &path, Some("text/plain"), b"{}".to_vec(), &token)).await;
        text.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
        let none = app.raw(raw(method.clone(), &path, None, b"{}".to_vec(), &token)).await;
        none.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");

        let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(70 * 1024)).into_bytes();
        let oversize = app.raw(raw(method.clone(), &path, Some("application/json"), huge, &token)).await;
        oversize.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    }
    assert_eq!(app.fingerprint().await, before, "refused requests must store nothing");
}

#[tokio::test]
async fn invalid_path_parameters_and_bodies_of_the_other_commands_name_the_field() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", None).await;
    let before = app.fingerprint().await;
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/v1/connections/not-a-uuid".into(), None, "id"),
        (Method::DELETE, "/v1/connections/123".into(), None, "id"),
        (Method::POST, "/v1/connections/zzz/agents".into(), Some(json!({"agent_id": "a"})), "id"),
        (Method::POST, format!("/v1/connections/{id}/agents"), Some(json!({})), "agent_id"),
        (Method::POST, format!("/v1/connections/{id}/agents"), Some(json!({"agent_id": "a b"})), "agent_id"),
        (Method::POST, format!("/v1/connections/{id}/agents"), Some(json!({"agent_id": 1})), "agent_id"),
        (Method::POST, format!("/v1/connections/{id}/agents"), Some(json!({"agent_id": "a", "x": 1})), "x"),
        (Method::DELETE, format!("/v1/connections/{id}/agents/a%20b"), None, "agent_id"),
        (Method::DELETE, format!("/v1/connections/{id}/agents/{}", "a".repeat(129)), None, "agent_id"),
        (Method::PUT, format!("/v1/connections/{id}/credential"), Some(json!({})), "credential"),
        (
            Method::PUT,
            format!("/v1/connections/{id}/credential"),
            Some(json!({"credential": {"kind": "x"}})),
            "credential.kind",
        ),
        (Method::PUT, "/v1/services/GitHub/default".into(), Some(json!({"connection_id": id})), "service"),
        (Method::PUT, "/v1/services/github/default".into(), Some(json!({"connection_id": "nope"})), "connection_id"),
        (Method::PUT, "/v1/services/github/default".into(), Some(json!({})), "connection_id"),
        (Method::DELETE, "/v1/services/git_hub/default".into(), None, "service"),
    ];
    for (method, path, body, field) in cases {
        let answer = app.send(method.clone(), &path, Some("alice"), body).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{method} {path}");
    }
    let bad_key = Request::builder()
        .method(Method::DELETE)
        .uri(format!("/v1/connections/{id}"))
        .header("authorization", format!("Bearer {}", app.token("alice")))
        .header("idempotency-key", "has space")
        .body(Body::empty())
        .expect("request");
    let answer = app.raw(bad_key).await;
    answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    assert_eq!(answer.body["field"], "Idempotency-Key");
    assert_eq!(app.fingerprint().await, before, "refused requests must store nothing");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problems() {
    let app = TestApp::new().await;
    app.send(Method::GET, "/v1/nothing-here", Some("alice"), None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no-such-route");
    app.send(Method::PATCH, "/v1/connections", Some("alice"), None)
        .await
        .assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
}
