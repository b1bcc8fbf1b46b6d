//! `/v1/connections…`: create, show, assign, unassign, rotate, replace, revoke.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use connections_domain::{
    AgentId, Command, ConnectionId, ConnectionName, ConnectionStatus, OwnerId, ServiceName, SkillName,
};
use connections_sealing::{Credential, CredentialError};
use serde_json::{json, Value};

use super::{run_command, CommandRoute, Idempotent};
use crate::auth::AuthenticatedUser;
use crate::body::{path_param, JsonObject};
use crate::commands::{load_connection_stream, Decided, Target};
use crate::problem::ApiError;
use crate::state::AppState;
use crate::views;

/// `POST /v1/connections` {service, name, credential, agent_id?, skill?}.
pub async fn create(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    idempotent: Idempotent,
    body: JsonObject,
) -> Result<Response, ApiError> {
    body.only(&["service", "name", "credential", "agent_id", "skill"])?;
    let service = body.required("service", ServiceName::parse)?;
    let name = body.required("name", ConnectionName::parse)?;
    let agent_id = body.optional("agent_id", AgentId::parse)?;
    let skill = body.optional("skill", SkillName::parse)?;
    let credential = parse_credential(body.value("credential")?)?;
    let connection_id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let route = CommandRoute {
        actor,
        target: Target::Service(service.clone()),
        command: Command::CreateConnection {
            connection_id,
            service,
            name,
            credential_kind: credential.kind(),
            agent_id,
            skill,
        },
        credential: Some(credential),
        idempotent,
        body: &body.raw,
    };
    run_command(&app, route, |d| (StatusCode::CREATED, with_position(d, connection_id))).await
}

/// `GET /v1/connections/{id}`: status, default flag, agents and since when.
pub async fn show(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let connection_id = connection_id(id)?;
    // Read from the authoritative stream, which is always current; the
    // parameter is accepted (and waited for) so clients can use it uniformly.
    super::dashboard::min_position_only(&app, query).await?;
    let (state, history) = load_connection_stream(&app, connection_id).await?.ok_or(ApiError::NotFound)?;
    state.connection_for(&actor, connection_id).ok_or(ApiError::NotFound)?;
    let mut view = views::connection(&state, connection_id, Some(&history));
    view["position"] = history.last().map_or(Value::from(0), |e| Value::from(e.position));
    Ok(Json(view).into_response())
}

/// `DELETE /v1/connections/{id}`: revoke; answers the agents that were using it.
pub async fn revoke(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    idempotent: Idempotent,
) -> Result<Response, ApiError> {
    let connection_id = connection_id(id)?;
    let command = Command::RevokeConnection { connection_id };
    on_connection(&app, actor, connection_id, command, None, idempotent, b"").await
}

/// `POST /v1/connections/{id}/agents` {agent_id}.
pub async fn assign(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    idempotent: Idempotent,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let connection_id = connection_id(id)?;
    body.only(&["agent_id"])?;
    let agent_id = body.required("agent_id", AgentId::parse)?;
    let command = Command::AssignToAgent { connection_id, agent_id };
    on_connection(&app, actor, connection_id, command, None, idempotent, &body.raw).await
}

/// `DELETE /v1/connections/{id}/agents/{agent_id}`.
pub async fn unassign(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    ids: Result<Path<(String, String)>, PathRejection>,
    idempotent: Idempotent,
) -> Result<Response, ApiError> {
    let Path((id, agent)) = ids.map_err(|_| ApiError::invalid("path", "is malformed"))?;
    let connection_id = path_param("id", &id, ConnectionId::parse)?;
    let agent_id = path_param("agent_id", &agent, |raw| AgentId::parse(raw))?;
    let command = Command::UnassignFromAgent { connection_id, agent_id };
    on_connection(&app, actor, connection_id, command, None, idempotent, b"").await
}

/// `PUT /v1/connections/{id}/credential` {credential}: rotate.
pub async fn rotate(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    idempotent: Idempotent,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let connection_id = connection_id(id)?;
    body.only(&["credential"])?;
    let credential = parse_credential(body.value("credential")?)?;
    let command = Command::RotateCredential { connection_id, credential_kind: credential.kind() };
    on_connection(&app, actor, connection_id, command, Some(credential), idempotent, &body.raw).await
}

/// `POST /v1/connections/{id}/replace` {credential, name?}: a new connection
/// with the new credential takes over the old one's agents and default, and
/// the old one is revoked, in one transaction. Answers the new connection
/// and the agents moved to it.
pub async fn replace(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    idempotent: Idempotent,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let connection_id = connection_id(id)?;
    body.only(&["credential", "name"])?;
    let name = body.optional("name", ConnectionName::parse)?;
    let credential = parse_credential(body.value("credential")?)?;
    let new_connection_id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let route = CommandRoute {
        actor,
        target: Target::Connection(connection_id),
        command: Command::ReplaceConnection {
            connection_id,
            new_connection_id,
            name,
            credential_kind: credential.kind(),
        },
        credential: Some(credential),
        idempotent,
        body: &body.raw,
    };
    run_command(&app, route, |decided| {
        let mut view = with_position(decided, new_connection_id);
        let moved = match decided.state.connections.get(&connection_id).map(|c| &c.status) {
            Some(ConnectionStatus::Revoked { affected_agents, .. }) => json!(affected_agents),
            _ => json!([]),
        };
        view["moved_agents"] = moved;
        (StatusCode::CREATED, view)
    })
    .await
}

/// Runs a command on an existing connection and answers with the
/// connection's view and the command's position.
async fn on_connection(
    app: &AppState,
    actor: OwnerId,
    connection_id: ConnectionId,
    command: Command,
    credential: Option<Credential>,
    idempotent: Idempotent,
    body: &[u8],
) -> Result<Response, ApiError> {
    let route =
        CommandRoute { actor, target: Target::Connection(connection_id), command, credential, idempotent, body };
    run_command(app, route, |d| (StatusCode::OK, with_position(d, connection_id))).await
}

/// The `{id}` path parameter as a connection id; a malformed one is a 400 naming `id`.
pub(super) fn connection_id(id: Result<Path<String>, PathRejection>) -> Result<ConnectionId, ApiError> {
    let Path(raw) = id.map_err(|_| ApiError::invalid("id", "is malformed"))?;
    path_param("id", &raw, ConnectionId::parse)
}

fn with_position(decided: &Decided, connection_id: ConnectionId) -> Value {
    let mut view = views::connection(&decided.state, connection_id, None);
    view["position"] = Value::from(decided.position);
    view
}

/// A credential from the body, with problems that name the field and never
/// echo a value.
fn parse_credential(value: &Value) -> Result<Credential, ApiError> {
    Credential::parse(value).map_err(|error| match error {
        CredentialError::NotAnObject => ApiError::invalid("credential", "must be a JSON object"),
        CredentialError::UnknownKind => {
            ApiError::invalid("credential.kind", "must be one of \"oauth2\", \"api_key\", \"basic\"")
        }
        CredentialError::Missing(field) => ApiError::invalid(format!("credential.{field}"), "is required"),
        CredentialError::Invalid { field, expected } => {
            ApiError::invalid(format!("credential.{field}"), format!("must be {expected}"))
        }
        CredentialError::UnknownField(field) => {
            ApiError::invalid(format!("credential.{field}"), "is not a field of this credential kind")
        }
        CredentialError::TooLarge => {
            ApiError::invalid("credential", error.to_string().trim_start_matches("credential "))
        }
    })
}
