//! `schemas/openapi.json` and the router agree: every documented operation
//! is mounted, and every mounted route is documented.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use connections_api::ROUTES;

use crate::TestApp;

fn documented() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/openapi.json");
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read openapi.json")).expect("openapi.json is JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

#[test]
fn the_route_table_matches_the_openapi_document() {
    let mounted: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(mounted, documented());
}

#[tokio::test]
async fn every_documented_operation_is_mounted_with_that_method() {
    let app = TestApp::new().await;
    for (method, path) in documented() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{agent_id}", "agent-1")
            .replace("{service}", "github")
            .replace("{name}", "app.js");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let answer = app.send(method.clone(), &concrete, None, None).await;
        assert_ne!(answer.body["type"], "urn:connections:problem:no-such-route", "{method} {path} is not mounted");
        assert_ne!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is not mounted with that method");
    }
    // A method the document does not list on a mounted path is refused.
    let answer = app.send(Method::PATCH, &format!("/v1/connections/{}", uuid::Uuid::now_v7()), None, None).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// The document, loaded once.
pub(crate) fn document() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read openapi.json")).expect("openapi.json is JSON")
}

/// Asserts that `answer` is documented for (method, path template): its
/// status is listed, and its body matches that response's schema (the
/// document is the root, so `#/components/...` references resolve).
#[track_caller]
pub(crate) fn assert_documented(document: &serde_json::Value, method: &str, path: &str, answer: &crate::Answer) {
    let status = answer.status.as_u16().to_string();
    let response = &document["paths"][path][method]["responses"][&status];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the document does not list: {}",
        answer.body
    );
    let media = answer
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    let Some(content) = response["content"].as_object() else {
        return;
    };
    assert!(content.contains_key(&media), "{method} {path} {status}: content type {media:?} is not documented");
    let validator = response_validator(document, method, path, &status, &media);
    let errors: Vec<String> =
        validator.iter_errors(&answer.body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {path} {status} does not match its schema: {errors:?}\n{}", answer.body);
}

/// The schema of one documented response, with the whole document as the
/// root so that `#/components/...` references resolve.
fn response_validator(
    document: &serde_json::Value,
    method: &str,
    path: &str,
    status: &str,
    media: &str,
) -> jsonschema::Validator {
    let escape = |text: &str| text.replace('~', "~0").replace('/', "~1").replace('{', "%7B").replace('}', "%7D");
    let mut root = document.clone();
    root["$ref"] = serde_json::json!(format!(
        "#/paths/{}/{method}/responses/{status}/content/{}/schema",
        escape(path),
        escape(media)
    ));
    jsonschema::validator_for(&root).expect("the response schema compiles")
}

#[test]
fn the_schema_check_refuses_an_undocumented_body() {
    let document = document();
    let created = response_validator(&document, "post", "/v1/connections", "201", "application/json");
    assert!(!created.is_valid(&serde_json::json!({"status": "active"})), "a body without its required fields passed");
    let problem = response_validator(&document, "get", "/v1/services", "401", "application/problem+json");
    assert!(!problem.is_valid(&serde_json::json!({"detail": 42})));
}

/// Every operation, on its success and its usual refusals, answers bodies
/// that match the document (schemathesis in ops/fuzz does the same with
/// generated input; this runs in every `cargo test`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_their_documented_schemas() {
    let document = document();
    let app = TestApp::with_fanout().await;
    let check = |method: &str, path: &str, answer: &crate::Answer| assert_documented(&document, method, path, answer);
    let created = app
        .send(
            Method::POST,
            "/v1/connections",
            Some("alice"),
            Some(serde_json::json!({"service": "github", "name": "Work", "agent_id": "agent-1",
                "credential": {"kind": "oauth2", "access_token": "t", "scopes": ["repo"]}})),
        )
        .await;
    check("post", "/v1/connections", &created);
    let id = created.body["connection_id"].as_str().expect("id").to_owned();
    let position = created.body["position"].as_i64().expect("position");
    let by_id = |suffix: &str| format!("/v1/connections/{id}{suffix}");
    let assigned =
        app.send(Method::POST, by_id("/agents"), Some("alice"), Some(serde_json::json!({"agent_id": "agent-2"}))).await;
    check("post", "/v1/connections/{id}/agents", &assigned);
    let default = app
        .send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(serde_json::json!({"connection_id": id})))
        .await;
    check("put", "/v1/services/{service}/default", &default);
    let rotated = app
        .send(
            Method::PUT,
            by_id("/credential"),
            Some("alice"),
            Some(serde_json::json!({"credential": {"kind": "api_key", "key": "k2"}})),
        )
        .await;
    check("put", "/v1/connections/{id}/credential", &rotated);
    let resolved = app.resolve("agent-1", "alice", "github").await;
    check("post", "/v1/resolve", &resolved);
    let report = |agent: &str, body: serde_json::Value| {
        let request = axum::http::Request::builder()
            .method(Method::POST)
            .uri(by_id("/problems"))
            .header("authorization", format!("Bearer {}", app.agent_token(agent, "alice")))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .expect("request");
        app.raw(request)
    };
    let reported = report("agent-1", serde_json::json!({"kind": "rejected", "status": 403})).await;
    assert_eq!(reported.status.as_u16(), 200, "{}", reported.body);
    check("post", "/v1/connections/{id}/problems", &reported);
    check("post", "/v1/connections/{id}/problems", &report("agent-9", serde_json::json!({"kind": "rejected"})).await);
    check("post", "/v1/connections/{id}/problems", &report("agent-1", serde_json::json!({"kind": "x"})).await);
    let latest = rotated.body["position"].as_i64().unwrap_or(position);
    for (path, template) in [
        (format!("/v1/services?min_position={latest}"), "/v1/services"),
        (format!("/v1/connections?status=all&min_position={latest}"), "/v1/connections"),
        (by_id(&format!("?min_position={latest}")), "/v1/connections/{id}"),
        (by_id(&format!("/agents?min_position={latest}")), "/v1/connections/{id}/agents"),
        (by_id("/history?limit=2"), "/v1/connections/{id}/history"),
        ("/v1/status".to_owned(), "/v1/status"),
        ("/v1/providers".to_owned(), "/v1/providers"),
        (format!("/v1/review?max_agents=1&min_position={latest}"), "/v1/review"),
        ("/health".to_owned(), "/health"),
    ] {
        let answer = app.send(Method::GET, path.clone(), Some("alice"), None).await;
        assert_eq!(answer.status.as_u16(), 200, "{path}: {}", answer.body);
        check("get", template, &answer);
    }
    let spare = app.create("alice", "github", Some("agent-3")).await;
    let replace = |id: &str| format!("/v1/connections/{id}/replace");
    let body = serde_json::json!({"credential": {"kind": "api_key", "key": "k3"}, "name": "Fresh"});
    let replaced = app.send(Method::POST, replace(&spare), Some("alice"), Some(body.clone())).await;
    assert_eq!(replaced.status.as_u16(), 201, "{}", replaced.body);
    check("post", "/v1/connections/{id}/replace", &replaced);
    check(
        "post",
        "/v1/connections/{id}/replace",
        &app.send(Method::POST, replace(&spare), Some("alice"), Some(body.clone())).await,
    );
    check(
        "post",
        "/v1/connections/{id}/replace",
        &app.send(Method::POST, replace(&spare), Some("bob"), Some(body)).await,
    );
    let unassigned = app.send(Method::DELETE, by_id("/agents/agent-2"), Some("alice"), None).await;
    check("delete", "/v1/connections/{id}/agents/{agent_id}", &unassigned);
    let cleared = app.send(Method::DELETE, "/v1/services/github/default", Some("alice"), None).await;
    check("delete", "/v1/services/{service}/default", &cleared);
    let revoked = app.send(Method::DELETE, by_id(""), Some("alice"), None).await;
    check("delete", "/v1/connections/{id}", &revoked);
    // Refusals are documented problems too.
    check("get", "/v1/connections/{id}", &app.send(Method::GET, by_id(""), Some("bob"), None).await);
    check("delete", "/v1/connections/{id}", &app.send(Method::DELETE, by_id(""), Some("alice"), None).await);
    check("post", "/v1/resolve", &app.resolve("agent-1", "alice", "github").await);
    check("get", "/v1/services", &app.send(Method::GET, "/v1/services?min_position=x", Some("alice"), None).await);
    check("get", "/v1/services", &app.send(Method::GET, "/v1/services", None, None).await);
    check("get", "/v1/review", &app.send(Method::GET, "/v1/review?old_days=0", Some("alice"), None).await);
    check(
        "post",
        "/v1/connections",
        &app.send(Method::POST, "/v1/connections", Some("alice"), Some(serde_json::json!({"service": "x"}))).await,
    );
}
