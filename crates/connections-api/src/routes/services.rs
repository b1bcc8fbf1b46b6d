//! `/v1/services/{service}/default`: set and clear the owner's default.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use connections_domain::{Command, ConnectionId, ServiceName};
use serde_json::json;

use super::{answer, idempotency};
use crate::auth::AuthenticatedUser;
use crate::body::{path_param, JsonObject};
use crate::commands::{execute, CommandInput, Decided, Target};
use crate::problem::ApiError;
use crate::state::AppState;

/// `PUT /v1/services/{service}/default` {connection_id}.
pub async fn set_default(
    State(app): State<AppState>,
    AuthenticatedUser(actor): AuthenticatedUser,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let service = path_param("service", &service, |s| ServiceName::parse(s))?;
    body.only(&["connection_id"])?;
    let connection_id = body.required("connection_id", |raw| ConnectionId::parse(&raw))?;
    let idempotency = idempotency(&app, &headers, "PUT", &format!("/v1/services/{service}/default"), &body.raw)?;
    let input = CommandInput {
        actor,
        target: Target::Service(service.clone()),
        command: Command::SetDefault { connection_id },
        credential: None,
        idempotency,
    };
    Ok(answer(execute(&app, input, |d| (StatusCode::OK, default_view(&service, d))).await?))
}

/// `DELETE /v1/services/{service}/default`.
pub async fn clear_default(
    State(app): State<AppState>,
    AuthenticatedUser(actor): AuthenticatedUser,
    Path(service): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let service = path_param("service", &service, |s| ServiceName::parse(s))?;
    let idempotency = idempotency(&app, &headers, "DELETE", &format!("/v1/services/{service}/default"), b"")?;
    let input = CommandInput {
        actor,
        target: Target::Service(service.clone()),
        command: Command::ClearDefault,
        credential: None,
        idempotency,
    };
    Ok(answer(execute(&app, input, |d| (StatusCode::OK, default_view(&service, d))).await?))
}

fn default_view(service: &ServiceName, decided: &Decided) -> serde_json::Value {
    json!({
        "service": service,
        "default_connection_id": decided.state.default,
        "position": decided.position,
    })
}
