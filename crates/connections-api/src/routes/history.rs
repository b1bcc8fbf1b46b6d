//! `GET /v1/connections/{id}/history`: the owner's audit trail of one
//! connection, from the event log (never secrets: events hold none).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use connections_domain::ConnectionId;
use connections_fanout::{format_cursor, parse_cursor};
use connections_store::{history, ConnectionLocation, StoreError};
use serde_json::{json, Value};

use crate::auth::AuthenticatedUser;
use crate::body::path_param;
use crate::problem::ApiError;
use crate::routes::dashboard::Params;
use crate::state::AppState;

/// Events per page unless `limit` says otherwise; the most a page holds.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 500;

/// The events about the connection, in log order, with time and actor, a
/// page at a time: `?limit=` (1–500, default 100) and `?cursor=` (the
/// previous page's `next_cursor`).
pub async fn connection_history(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(actor): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = id.map_err(|_| ApiError::invalid("id", "is malformed"))?;
    let connection_id = path_param("id", &raw, ConnectionId::parse)?;
    let params = Params::parse(query, &["limit", "cursor"])?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = params
        .get("cursor")
        .map(|raw| parse_cursor(raw).ok_or_else(|| ApiError::invalid("cursor", "is not a cursor from a previous page")))
        .transpose()?;
    let client = app.reads.pool().get().await.map_err(StoreError::from)?;
    let location = ConnectionLocation::find(&client, connection_id).await?.ok_or(ApiError::NotFound)?;
    if location.owner != actor {
        return Err(ApiError::NotFound);
    }
    let mut page = history::connection_history_page(&client, connection_id, after, limit + 1).await?;
    let more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    let next_cursor = if more { page.last().map(|e| format_cursor(e.cursor())) } else { None };
    let events: Vec<Value> = page
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
    Ok(Json(json!({ "connection_id": connection_id, "events": events, "next_cursor": next_cursor })).into_response())
}
