//! `GET /v1/providers`: the services that can be connected through their
//! OAuth 2.0 provider (the others take pasted credentials).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

use crate::auth::AuthenticatedUser;
use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /v1/providers` (user token): service, default scopes and PKCE;
/// never the client's credentials or endpoints.
pub async fn list(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(_): AuthenticatedUser,
) -> Result<Response, ApiError> {
    let providers: Vec<_> = app
        .settings
        .providers
        .iter()
        .map(|p| {
            json!({
                "service": p.service,
                "scopes": p.scopes,
                "pkce": p.pkce,
            })
        })
        .collect();
    Ok(Json(json!({ "providers": providers })).into_response())
}
