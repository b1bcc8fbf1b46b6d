//! Refreshing an OAuth connection's tokens when a resolve finds its access
//! token expired or about to expire: one refresh per connection at a time in
//! this process (the others wait for it and then read the new version), and
//! across instances the domain appends a refresh only onto the version whose
//! refresh token was used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use connections_domain::{AgentId, Command, ConnectionId, OwnerId, ProblemDetail, ServiceName};
use connections_sealing::Credential;
use serde_json::Value;

use crate::commands::{execute, load_connection_stream, CommandInput, Target};
use crate::oauth::{self, Refusal};
use crate::state::AppState;

/// A token expiring within this long is refreshed before it is handed out.
pub const MARGIN: Duration = Duration::from_secs(60);

/// One lock per connection being refreshed.
#[derive(Debug, Default)]
pub struct RefreshFlights(Mutex<HashMap<ConnectionId, Arc<tokio::sync::Mutex<()>>>>);

/// What a refresh came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A newer version exists now (this refresh, or one that came first).
    Done,
    /// The provider could not be reached or failed: nothing changed.
    Transient,
    /// The provider refused the refresh token: the connection needs its
    /// owner (recorded as `credential_rejected`).
    Rejected,
}

/// Whether `credential` must be refreshed before it is handed out for
/// `service`, and if so whether it has already expired. Only OAuth
/// credentials with a refresh token, for a service with a provider.
pub fn due(app: &AppState, service: &ServiceName, credential: &Credential) -> Option<bool> {
    let Credential::Oauth2 { refresh_token: Some(_), expires_at: Some(expires_at), .. } = credential else {
        return None;
    };
    app.settings.providers.get(service)?;
    let now = Utc::now();
    let margin = chrono::Duration::from_std(MARGIN).expect("a minute");
    (*expires_at <= now + margin).then_some(*expires_at <= now)
}

/// Refreshes the connection's tokens, unless another refresh got there first.
pub async fn refresh(
    app: &AppState,
    owner: &OwnerId,
    agent: &AgentId,
    service: &ServiceName,
    connection_id: ConnectionId,
    from_version: u32,
    credential: &Credential,
) -> Outcome {
    let Credential::Oauth2 { refresh_token: Some(refresh_token), scopes, .. } = credential else {
        return Outcome::Transient;
    };
    let Some(provider) = app.settings.providers.get(service) else {
        return Outcome::Transient;
    };
    let flight = {
        let mut flights = app.settings.refreshes.0.lock().expect("refresh flights");
        flights.entry(connection_id).or_default().clone()
    };
    let turn = flight.lock().await;
    let outcome = async {
        // Another refresh (or a rotation) may have come first.
        match load_connection_stream(app, connection_id).await {
            Ok(Some((state, _)))
                if state.connections.get(&connection_id).map(|c| c.credential_version) != Some(from_version) =>
            {
                return Outcome::Done;
            }
            Ok(Some(_)) => {}
            _ => return Outcome::Transient,
        }
        let asked = scopes.clone().unwrap_or_default();
        let (command, credential) = match oauth::refresh(provider, refresh_token, &asked).await {
            Ok(tokens) => {
                let refreshed = Credential::Oauth2 {
                    access_token: tokens.access_token,
                    // A provider that does not rotate refresh tokens keeps the old one valid.
                    refresh_token: tokens.refresh_token.or_else(|| Some(refresh_token.clone())),
                    expires_at: tokens.expires_in.map(|s| Utc::now() + chrono::Duration::seconds(s as i64)),
                    scopes: tokens.scopes.or_else(|| scopes.clone()),
                };
                (Command::RefreshCredential { connection_id, from_version }, Some(refreshed))
            }
            Err(Refusal::TokenRefused(code)) => {
                let detail = ProblemDetail::parse(format!("the provider refused to refresh the tokens ({code})")).ok();
                let report = Command::ReportRejected {
                    connection_id,
                    agent_id: agent.clone(),
                    credential_version: from_version,
                    status: None,
                    detail,
                };
                (report, None)
            }
            Err(_) => return Outcome::Transient,
        };
        let rejected = credential.is_none();
        let input = CommandInput {
            actor: owner.clone(),
            target: Target::Connection(connection_id),
            command,
            credential,
            idempotency: None,
        };
        match execute(app, input, |_| (StatusCode::OK, Value::Null)).await {
            Ok(_) if rejected => Outcome::Rejected,
            Ok(_) => Outcome::Done,
            Err(error) => {
                tracing::warn!(%error, %connection_id, "recording a refresh failed");
                Outcome::Transient
            }
        }
    }
    .await;
    drop(turn);
    // Forget the lock once nobody waits on it.
    let mut flights = app.settings.refreshes.0.lock().expect("refresh flights");
    if flights.get(&connection_id).is_some_and(|f| Arc::strong_count(f) <= 2) {
        flights.remove(&connection_id);
    }
    outcome
}
