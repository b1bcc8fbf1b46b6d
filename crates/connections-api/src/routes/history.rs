//! `GET /v1/connections/{id}/history`: the owner's audit trail of one
//! connection, from the event log (never secrets: events hold none).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use connections_domain::ConnectionId;
use connections_store::{history, ConnectionLocation, StoreError};
use serde_json::{json, Value};

use crate::auth::AuthenticatedUser;
use crate::body::path_param;
use crate::problem::ApiError;
use crate::state::AppState;

/// Every event about the connection, in log order, with time and actor.
pub async fn connection_history(
    State(app): State<AppState>,
    AuthenticatedUser(actor): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = id.map_err(|_| ApiError::invalid("id", "is malformed"))?;
    let connection_id = path_param("id", &raw, ConnectionId::parse)?;
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    let location = ConnectionLocation::find(&client, connection_id).await?.ok_or(ApiError::NotFound)?;
    if location.owner != actor {
        return Err(ApiError::NotFound);
    }
    let events: Vec<Value> = history::connection_history(&client, connection_id)
        .await?
        .into_iter()
        .map(|event| {
            json!({
                "position": event.position,
                "transaction_id": event.transaction_id,
                "event_type": event.event_type,
                "schema_version": event.schema_version,
                "recorded_at": event.recorded_at.to_rfc3339(),
                "actor": event.metadata["actor"],
                "data": event.data,
            })
        })
        .collect();
    Ok(Json(json!({ "connection_id": connection_id, "events": events })).into_response())
}
