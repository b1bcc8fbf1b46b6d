//! `/v1/services/{service}/default`: set and clear the owner's default.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use connections_domain::{Command, ConnectionId, ServiceName};
use serde_json::json;
use std::sync::Arc;

use super::{run_command, CommandRoute, Idempotent};
use crate::auth::AuthenticatedUser;
use crate::body::{path_param, JsonObject};
use crate::commands::{Decided, Target};
use crate::problem::ApiError;
use crate::state::AppState;

/// `PUT /v1/services/{service}/default` {connection_id}.
pub async fn set_default(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    Path(service): Path<String>,
    idempotent: Idempotent,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let service = path_param("service", &service, |s| ServiceName::parse(s))?;
    body.only(&["connection_id"])?;
    let connection_id = body.required("connection_id", |raw| ConnectionId::parse(&raw))?;
    let command = Command::SetDefault { connection_id };
    let route = CommandRoute {
        actor,
        target: Target::Service(service.clone()),
        command,
        credential: None,
        idempotent,
        body: &body.raw,
    };
    run_command(&app, route, |d| (StatusCode::OK, default_view(&service, d))).await
}

/// `DELETE /v1/services/{service}/default`.
pub async fn clear_default(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    Path(service): Path<String>,
    idempotent: Idempotent,
) -> Result<Response, ApiError> {
    let service = path_param("service", &service, |s| ServiceName::parse(s))?;
    let target = Target::Service(service.clone());
    let route = CommandRoute { actor, target, command: Command::ClearDefault, credential: None, idempotent, body: b"" };
    run_command(&app, route, |d| (StatusCode::OK, default_view(&service, d))).await
}

fn default_view(service: &ServiceName, decided: &Decided) -> serde_json::Value {
    json!({
        "service": service,
        "default_connection_id": decided.state.default,
        "position": decided.position,
    })
}
