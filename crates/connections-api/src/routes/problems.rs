//! `POST /v1/connections/{id}/problems`: an agent runtime reports that the
//! provider rejected the credential it was handed.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use connections_domain::{Command, ConnectionId, ProblemDetail};
use connections_sealing::open;
use connections_store::{Access, StoreError, StoredCredential};
use serde_json::{json, Value};
use std::sync::Arc;

use super::answer;
use crate::auth::AuthenticatedAgent;
use crate::body::JsonObject;
use crate::commands::{execute_for_runtime, CommandInput, Target};
use crate::problem::ApiError;
use crate::state::AppState;

/// `POST /v1/connections/{id}/problems` {kind: "rejected", status?, detail?,
/// credential_version?} with an agent token, for a connection that agent was
/// handed. The first report of a version appends `credential_rejected`; the
/// connection needs attention until it is rotated, replaced or revoked.
pub async fn report(
    State(app): State<Arc<AppState>>,
    agent: AuthenticatedAgent,
    id: Result<Path<String>, PathRejection>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let connection_id = super::connections::connection_id(id)?;
    body.only(&["kind", "status", "detail", "credential_version"])?;
    match body.value("kind")? {
        Value::String(kind) if kind == "rejected" => {}
        _ => return Err(ApiError::invalid("kind", "must be \"rejected\"")),
    }
    let status = body.optional_integer("status", 400, 599)?.map(|s| s as u16);
    let detail = body.optional("detail", ProblemDetail::parse)?;
    let reported_version = body.optional_integer("credential_version", 1, i32::MAX as u64)?.map(|v| v as u32);
    app.settings.reports.admit(connection_id.as_uuid(), agent.agent.as_str())?;

    // Only a connection this agent was handed, and only a version it had.
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    let handed = Access::last_version_handed(&client, connection_id, &agent.owner, &agent.agent)
        .await?
        .ok_or(ApiError::NotFound)?;
    let credential_version = match reported_version {
        Some(version) if version > handed => {
            return Err(ApiError::invalid("credential_version", "is not a version this agent was handed"))
        }
        Some(version) => version,
        None => handed,
    };
    if let Some(detail) = &detail {
        refuse_secrets(&app, &client, connection_id, &agent, credential_version, detail).await?;
    }
    drop(client);

    let input = CommandInput {
        actor: agent.owner.clone(),
        target: Target::Connection(connection_id),
        command: Command::ReportRejected {
            connection_id,
            agent_id: Some(agent.agent.clone()),
            credential_version,
            status,
            detail,
        },
        credential: None,
        idempotency: None,
    };
    Ok(answer(
        execute_for_runtime(&app, input, |decided| {
            let connection = decided.state.connections.get(&connection_id);
            let body = json!({
                "connection_id": connection_id,
                "credential_version": credential_version,
                "recorded": !decided.events.is_empty(),
                "needs_attention": connection.is_some_and(|c| c.needs_attention),
                "current_version": connection.map(|c| c.credential_version),
                "position": decided.position,
            });
            (StatusCode::OK, body)
        })
        .await?,
    ))
}

/// Refuses a detail that contains one of the reported credential's secret
/// values: the detail goes into the log, which never holds a secret.
async fn refuse_secrets(
    app: &AppState,
    client: &deadpool_postgres::Object,
    connection_id: ConnectionId,
    agent: &AuthenticatedAgent,
    credential_version: u32,
    detail: &ProblemDetail,
) -> Result<(), ApiError> {
    // Without a data key the connection is revoked: the command refuses it.
    let Some(wrapped) = StoredCredential::data_key(client, connection_id).await? else {
        return Ok(());
    };
    let data_key = app.master_key.unwrap(&wrapped, connection_id).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let Some(sealed) = StoredCredential::sealed(client, connection_id, credential_version).await? else {
        return Ok(());
    };
    let credential = open(&data_key, &sealed, connection_id, &agent.owner, credential_version)
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let leaks = credential.secret_values().iter().any(|secret| {
        let value = secret.expose();
        value.chars().count() >= 4 && detail.as_str().contains(value)
    });
    if leaks {
        return Err(ApiError::invalid("detail", "must not contain the credential"));
    }
    Ok(())
}
