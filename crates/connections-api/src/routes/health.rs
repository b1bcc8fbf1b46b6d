//! `GET /health`: the server is up and the database answers.

use axum::extract::State;
use axum::Json;
use connections_store::StoreError;
use serde_json::{json, Value};

use crate::problem::ApiError;
use crate::state::AppState;

/// Answers 200 when a database round trip succeeds.
pub async fn health(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    client.query_one("SELECT 1", &[]).await.map_err(StoreError::from)?;
    Ok(Json(json!({ "status": "ok" })))
}
