//! What operators and orchestrators ask of an instance, without a token:
//! `GET /health` (the process answers), `GET /ready` (it can serve: Postgres
//! reachable with every migration applied, NATS connected, not shutting
//! down) and `GET /metrics` (Prometheus text format).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

use crate::state::AppState;

/// 200 while the process serves HTTP, with the instance's name and the
/// single-leader roles it holds now (relay, projector, upkeep).
pub async fn health(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "instance": &*app.lifecycle.instance,
        "roles": app.signals.roles.held(),
    }))
}

/// 200 when the instance can serve requests, 503 (problem+json naming
/// every failed check) when it cannot or is shutting down.
pub async fn ready(State(app): State<Arc<AppState>>) -> Response {
    let mut failed = Vec::new();
    if app.lifecycle.is_stopping() {
        failed.push("shutting down".to_owned());
    }
    match database_ready(&app).await {
        Ok(true) => {}
        Ok(false) => failed.push("migrations are not all applied".to_owned()),
        Err(error) => failed.push(format!("Postgres: {error}")),
    }
    if let Some(connected) = &app.lifecycle.nats_connected {
        if !connected() {
            failed.push("NATS is not connected".to_owned());
        }
    }
    if failed.is_empty() {
        return Json(json!({
            "status": "ready",
            "instance": &*app.lifecycle.instance,
            "roles": app.signals.roles.held(),
        }))
        .into_response();
    }
    let body = json!({
        "type": "urn:connections:problem:not-ready",
        "title": "Not Ready",
        "status": 503,
        "detail": failed.join("; "),
        "instance": &*app.lifecycle.instance,
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/problem+json"));
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

async fn database_ready(app: &AppState) -> Result<bool, String> {
    let check = async {
        let client = app.reads.client().await.map_err(|e| e.to_string())?;
        connections_store::migrations_current(&client).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), check).await.unwrap_or_else(|_| Err("timed out".into()))
}

/// The metrics in Prometheus text format 0.0.4.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    connections_metrics::render(&mut out);
    let held = app.signals.roles.held();
    let roles: Vec<(Vec<String>, f64)> = connections_fanout::roles::ALL
        .iter()
        .map(|role| (vec![(*role).to_owned()], f64::from(u8::from(held.iter().any(|h| h == role)))))
        .collect();
    connections_metrics::render_gauge(
        &mut out,
        "connections_role_held",
        "Whether this instance holds a single-leader role (1) or not (0), by role.",
        &["role"],
        &roles,
    );
    let mut pools = Vec::new();
    for database in [&app.database, &app.reads] {
        let status = database.pool().status();
        let in_use = status.size.saturating_sub(status.available);
        pools.push((vec![database.name().to_owned(), "in_use".to_owned()], in_use as f64));
        pools.push((vec![database.name().to_owned(), "idle".to_owned()], status.available as f64));
        pools.push((vec![database.name().to_owned(), "max".to_owned()], status.max_size as f64));
        pools.push((vec![database.name().to_owned(), "waiting".to_owned()], status.waiting as f64));
    }
    connections_metrics::render_gauge(
        &mut out,
        "connections_db_pool_connections",
        "Postgres connections of a pool, by pool and state (in_use, idle, max; waiting: callers queued).",
        &["pool", "state"],
        &pools,
    );
    if let Some(connected) = &app.lifecycle.nats_connected {
        connections_metrics::render_gauge(
            &mut out,
            "connections_nats_connected",
            "Whether this instance's NATS connection is up (1) or not (0).",
            &[],
            &[(Vec::new(), f64::from(u8::from(connected())))],
        );
    }
    connections_metrics::render_gauge(
        &mut out,
        "connections_shutting_down",
        "Whether this instance is shutting down (1) or serving (0).",
        &[],
        &[(Vec::new(), f64::from(u8::from(app.lifecycle.is_stopping())))],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}
