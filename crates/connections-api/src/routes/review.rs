//! `GET /v1/review`: the hygiene review of the caller's own connections.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use connections_projections::review::{review as run_review, Thresholds};

use super::dashboard::{wait_for_position, Params};
use crate::auth::AuthenticatedUser;
use crate::problem::ApiError;
use crate::state::AppState;

/// `GET /v1/review?unused_days=&max_agents=&old_days=&expiring_hours=&min_position=`:
/// read-only; another owner's connections are simply not in it.
pub async fn review(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(owner): AuthenticatedUser,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["unused_days", "max_agents", "old_days", "expiring_hours", "min_position"])?;
    let defaults = Thresholds::default();
    let thresholds = Thresholds {
        unused_days: params.bounded("unused_days", defaults.unused_days, 1, 3650)?,
        max_agents: params.bounded("max_agents", defaults.max_agents, 1, 100_000)?,
        old_days: params.bounded("old_days", defaults.old_days, 1, 3650)?,
        expiring_hours: params.bounded("expiring_hours", defaults.expiring_hours, 1, 8760)?,
    };
    wait_for_position(&app, params.min_position()?).await?;
    let review = run_review(&app.reads, owner.as_str(), &thresholds).await?;
    Ok(Json(review).into_response())
}
