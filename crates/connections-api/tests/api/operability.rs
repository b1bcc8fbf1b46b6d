//! What operators ask of an instance: `/health`, `/ready`, `/metrics`, and
//! the request id every answer carries.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::TestApp;

async fn get_text(app: &TestApp, path: &str) -> (StatusCode, String, String) {
    let request = Request::builder().uri(path).body(Body::empty()).expect("request");
    let response = app.router.clone().oneshot(request).await.expect("answer");
    let status = response.status();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, content_type, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

#[tokio::test]
async fn health_names_the_instance_and_ready_turns_503_when_shutting_down() {
    let app = TestApp::new().await;
    let health = app.send(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(health.body["instance"], "local");
    assert_eq!(health.body["roles"], serde_json::json!([]), "an instance without a relay holds no role");

    let ready = app.send(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["status"], "ready");

    app.state.lifecycle.stopping.send_replace(true);
    let stopping = app.send(Method::GET, "/ready", None, None).await;
    assert_eq!(stopping.status, StatusCode::SERVICE_UNAVAILABLE, "{}", stopping.body);
    assert_eq!(stopping.headers["content-type"], "application/problem+json");
    assert_eq!(stopping.body["type"], "urn:connections:problem:not-ready");
    assert!(stopping.body["detail"].as_str().unwrap_or_default().contains("shutting down"), "{}", stopping.body);
    // Alive all the same: liveness is not readiness.
    assert_eq!(app.send(Method::GET, "/health", None, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn ready_names_a_database_without_the_current_migrations() {
    let app = TestApp::new().await;
    app.db.client().await.execute("DELETE FROM refinery_schema_history WHERE version > 1", &[]).await.expect("delete");
    let ready = app.send(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.body);
    assert!(ready.body["detail"].as_str().unwrap_or_default().contains("migrations"), "{}", ready.body);
}

#[tokio::test]
async fn metrics_count_commands_resolves_and_answers_without_naming_anyone() {
    let app = TestApp::new().await;
    app.create("metrics-owner-7f3a", "github", Some("metrics-agent-7f3a")).await;
    let resolved = app.resolve("metrics-agent-7f3a", "metrics-owner-7f3a", "github").await;
    assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.body);
    let refused = app.resolve("metrics-agent-7f3a", "metrics-owner-7f3a", "slack").await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);

    let (status, content_type, text) = get_text(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    for expected in [
        "connections_command_duration_seconds_count{command=\"create_connection\",outcome=\"accepted\"} ",
        "connections_resolve_duration_seconds_count{outcome=\"granted\"} ",
        "connections_resolve_duration_seconds_count{outcome=\"refused\"} ",
        "connections_http_responses_total{method=\"POST\",class=\"2xx\"} ",
        "connections_http_responses_total{method=\"POST\",class=\"4xx\"} ",
        "connections_db_pool_wait_seconds_bucket{pool=\"default\",le=\"+Inf\"} ",
        "connections_db_pool_connections{pool=\"default\",state=\"in_use\"} ",
        "connections_role_held{role=\"relay\"} 0",
        "connections_shutting_down 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("metrics-owner-7f3a") && !text.contains("metrics-agent-7f3a"), "ids leaked into labels");
    // Every sample line is `name{labels} value` with a numeric value, and
    // every family is introduced by HELP and TYPE.
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("a value");
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line:?}");
        let name = series.split('{').next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            text.contains(&format!("# TYPE {family} ")) || text.contains(&format!("# TYPE {name} ")),
            "{name} has no TYPE"
        );
    }
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_a_plausible_one_is_kept() {
    let app = TestApp::new().await;
    let fresh = app.send(Method::GET, "/v1/status", Some("alice"), None).await;
    let id = fresh.headers["x-request-id"].to_str().expect("ascii");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "a fresh id is a UUID: {id}");
    let unknown = app.send(Method::GET, "/no/such/route", None, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.headers.contains_key("x-request-id"), "problems carry one too");

    let with = |value: &'static str| {
        Request::builder().uri("/health").header("x-request-id", value).body(Body::empty()).expect("request")
    };
    assert_eq!(app.raw(with("trace-42.abc")).await.headers["x-request-id"], "trace-42.abc");
    let replaced = app.raw(with("no spaces <script>")).await;
    let replaced = replaced.headers["x-request-id"].to_str().expect("ascii");
    assert!(uuid::Uuid::parse_str(replaced).is_ok(), "an implausible id is replaced: {replaced}");
}
