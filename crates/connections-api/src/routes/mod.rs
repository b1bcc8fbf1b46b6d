//! The router: every route the server mounts, and the fallbacks that keep
//! even unknown paths answering in problem+json.

mod connect;
mod connections;
pub mod dashboard;
mod health;
mod history;
mod page;
mod problems;
mod providers;
mod resolve;
mod review;
mod runtime;
mod services;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use serde_json::Value;
use std::sync::Arc;

use crate::body::MAX_BODY_BYTES;
use connections_domain::{Command, OwnerId};
use connections_sealing::Credential;

use crate::commands::{execute, CommandInput, Decided, IdempotencyRequest, Target};
use crate::problem::ApiError;
use crate::state::AppState;

/// Every (method, path) the router mounts, as written in `schemas/openapi.json`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/sign-in"),
    ("GET", "/assets/{name}"),
    ("GET", "/v1/session"),
    ("POST", "/v1/session"),
    ("DELETE", "/v1/session"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/v1/resolve"),
    ("POST", "/v1/runtime/nats-credentials"),
    ("GET", "/v1/status"),
    ("GET", "/v1/stream"),
    ("GET", "/v1/services"),
    ("GET", "/v1/review"),
    ("GET", "/v1/providers"),
    ("POST", "/v1/connect/{service}"),
    ("GET", "/v1/oauth/callback"),
    ("GET", "/v1/connections"),
    ("POST", "/v1/connections"),
    ("GET", "/v1/connections/{id}"),
    ("DELETE", "/v1/connections/{id}"),
    ("GET", "/v1/connections/{id}/agents"),
    ("GET", "/v1/connections/{id}/history"),
    ("POST", "/v1/connections/{id}/agents"),
    ("DELETE", "/v1/connections/{id}/agents/{agent_id}"),
    ("PUT", "/v1/connections/{id}/credential"),
    ("POST", "/v1/connections/{id}/replace"),
    ("POST", "/v1/connections/{id}/problems"),
    ("POST", "/v1/connections/{id}/reconnect"),
    ("PUT", "/v1/services/{service}/default"),
    ("DELETE", "/v1/services/{service}/default"),
];

/// The application's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/sign-in", get(page::sign_in))
        .route("/assets/{name}", get(page::asset))
        .route("/v1/session", get(page::show).post(page::create).delete(page::delete))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/v1/resolve", post(resolve::resolve_credential))
        .route("/v1/runtime/nats-credentials", post(runtime::nats_credentials))
        .route("/v1/status", get(dashboard::status))
        .route("/v1/stream", get(dashboard::stream))
        .route("/v1/services", get(dashboard::services))
        .route("/v1/review", get(review::review))
        .route("/v1/providers", get(providers::list))
        .route("/v1/connect/{service}", post(connect::connect))
        .route("/v1/oauth/callback", get(connect::callback))
        .route("/v1/connections", get(dashboard::list).post(connections::create))
        .route("/v1/connections/{id}", get(connections::show).delete(connections::revoke))
        .route("/v1/connections/{id}/agents", get(dashboard::agents).post(connections::assign))
        .route("/v1/connections/{id}/agents/{agent_id}", delete(connections::unassign))
        .route("/v1/connections/{id}/credential", put(connections::rotate))
        .route("/v1/connections/{id}/replace", post(connections::replace))
        .route("/v1/connections/{id}/problems", post(problems::report))
        .route("/v1/connections/{id}/reconnect", post(connect::reconnect))
        .route("/v1/connections/{id}/history", get(history::connection_history))
        .route("/v1/services/{service}/default", put(services::set_default).delete(services::clear_default))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(crate::telemetry::observe))
        .with_state(Arc::new(state))
}

fn method_not_allowed() -> Response {
    let body = serde_json::json!({
        "type": "urn:connections:problem:method-not-allowed",
        "title": "Method Not Allowed",
        "status": 405,
        "detail": "this route does not accept that method",
    });
    let mut response = (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/problem+json"));
    response
}

/// What the idempotency fingerprint key is derived for.
pub const IDEMPOTENCY_PURPOSE: &str = "idempotency";

/// A command request's `Idempotency-Key` header (if any), with the method
/// and path it came on, as the request line has them: the fingerprint that
/// tells a replay from a different request under the same key.
pub(crate) struct Idempotent {
    key: Option<axum::http::HeaderValue>,
    method: axum::http::Method,
    path: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Idempotent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            key: parts.headers.get("idempotency-key").cloned(),
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
        })
    }
}

impl Idempotent {
    /// The key (1–255 visible ASCII characters) and the request's
    /// fingerprint over method, path and `body`; `None` without a key.
    fn request(&self, app: &AppState, body: &[u8]) -> Result<Option<IdempotencyRequest>, ApiError> {
        let Some(value) = &self.key else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|key| !key.is_empty() && key.len() <= 255 && key.chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| ApiError::invalid("Idempotency-Key", "must be 1-255 visible ASCII characters"))?;
        let fingerprint_key = app.master_key.fingerprint_key(IDEMPOTENCY_PURPOSE);
        Ok(Some(IdempotencyRequest::new(
            key.to_owned(),
            &fingerprint_key,
            app.settings.idempotency_ttl,
            self.method.as_str(),
            &self.path,
            body,
        )))
    }
}

/// What a command route hands to [`run_command`]: the handlers differ only
/// in how they parse the request into these.
struct CommandRoute<'a> {
    actor: OwnerId,
    target: Target,
    command: Command,
    credential: Option<Credential>,
    idempotent: Idempotent,
    /// The request's body as received (empty for a body-less method).
    body: &'a [u8],
}

/// Runs a route's command (with its idempotency key, if any) and answers
/// with `respond`'s status and view.
async fn run_command(
    app: &AppState,
    route: CommandRoute<'_>,
    respond: impl Fn(&Decided) -> (StatusCode, Value) + Sync,
) -> Result<Response, ApiError> {
    let idempotency = route.idempotent.request(app, route.body)?;
    let input = CommandInput {
        actor: route.actor,
        target: route.target,
        command: route.command,
        credential: route.credential,
        idempotency,
    };
    Ok(answer(execute(app, input, respond).await?))
}

/// A command's answer as a JSON response.
fn answer(result: (StatusCode, Value)) -> Response {
    let (status, body) = result;
    if status.is_client_error() || status.is_server_error() {
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/problem+json"));
        return response;
    }
    (status, axum::Json(body)).into_response()
}
