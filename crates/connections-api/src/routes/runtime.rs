//! `POST /v1/runtime/nats-credentials`: an agent runtime obtains the NATS
//! credentials for its own notices.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use std::sync::Arc;

use crate::auth::AuthenticatedAgent;
use crate::body::JsonObject;
use crate::problem::ApiError;
use crate::state::AppState;

/// `POST /v1/runtime/nats-credentials` {public_key?} with an agent token.
pub async fn nats_credentials(
    State(app): State<Arc<AppState>>,
    agent: AuthenticatedAgent,
    body: JsonObject,
) -> Result<Response, ApiError> {
    body.only(&["public_key"])?;
    let public_key = match body.fields.get("public_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(key.as_str()),
        Some(_) => return Err(ApiError::invalid("public_key", "must be a string")),
    };
    let credentials = app.runtime_nats.issue(&agent, public_key, chrono::Utc::now().timestamp())?;
    let mut response = Json(credentials).into_response();
    // It may carry a seed: nothing on the way may keep it.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
