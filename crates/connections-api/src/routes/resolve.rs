//! `POST /v1/resolve`: an agent runtime asks for the credential to use.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use connections_domain::ServiceName;
use serde_json::json;
use std::sync::Arc;

use crate::auth::AuthenticatedAgent;
use crate::body::JsonObject;
use crate::problem::ApiError;
use crate::resolution::{resolve, LEASE_SECONDS};
use crate::state::AppState;

/// `POST /v1/resolve` {service} with an agent token.
pub async fn resolve_credential(
    State(app): State<Arc<AppState>>,
    agent: AuthenticatedAgent,
    body: JsonObject,
) -> Result<Response, ApiError> {
    body.only(&["service"])?;
    let service = body.required("service", ServiceName::parse)?;
    let resolution = resolve(&app, &agent, &service).await?;
    let mut response = Json(json!({
        "connection_id": resolution.connection_id,
        "credential_version": resolution.credential_version,
        "credential": resolution.credential.expose_json(),
        "via": resolution.via,
        "needs_attention": resolution.needs_attention,
        "lease_seconds": LEASE_SECONDS,
        "position": resolution.position,
    }))
    .into_response();
    // The body carries a secret: nothing on the way may keep it.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
