//! Refreshing an OAuth connection's tokens at its provider, for a resolve
//! that finds its access token expired or about to expire and for the
//! background refresher (`crate::upkeep`): one refresh per connection at a
//! time in this process (the others wait for it and then read the new
//! version), and across instances the domain appends a refresh only onto
//! the version whose refresh token was used.
//!
//! A refresh that loses to a revocation is discarded: its tokens are queued
//! for revocation at the provider, never sealed as a version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use connections_domain::{AgentId, Command, ConnectionId, OwnerId, ProblemDetail, ServiceName};
use connections_sealing::{open, Credential};
use connections_store::{RefreshSchedule, StoreError, StoredCredential};

use crate::commands::{execute_for_owner, load_connection_state, CommandInput, Target};
use crate::oauth::{self, Refusal};
use crate::problem::ApiError;
use crate::state::AppState;
use crate::upstream;

/// A token expiring within this long is refreshed before a resolve hands
/// it out.
pub const MARGIN: Duration = Duration::from_secs(60);

/// One lock per connection being refreshed.
#[derive(Debug, Default)]
pub struct RefreshFlights(Mutex<HashMap<ConnectionId, Arc<tokio::sync::Mutex<()>>>>);

/// What a refresh came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A newer version exists now (this refresh, or one that came first).
    Done,
    /// The provider could not be reached, failed or throttled (asking to
    /// wait this long, if it said): nothing changed.
    Transient(Option<Duration>),
    /// The provider refused the refresh token: the connection needs its
    /// owner (recorded as `credential_rejected`) and leaves the schedule.
    Rejected,
    /// The connection was revoked (or is gone): nothing to refresh.
    Revoked,
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

/// Whether a credential can be refreshed (and so belongs on the schedule).
pub fn refreshable(credential: &Credential) -> bool {
    matches!(credential, Credential::Oauth2 { refresh_token: Some(_), .. })
}

/// The plaintext of a connection's `credential_version`, if its data key
/// still exists.
pub async fn current_credential(
    app: &AppState,
    connection_id: ConnectionId,
    owner: &OwnerId,
    credential_version: u32,
) -> Result<Option<Credential>, ApiError> {
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    let Some(wrapped) = StoredCredential::data_key(&client, connection_id).await? else {
        return Ok(None);
    };
    let Some(sealed) = StoredCredential::sealed(&client, connection_id, credential_version).await? else {
        return Ok(None);
    };
    let data_key = app.master_key.unwrap(&wrapped, connection_id).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let credential = open(&data_key, &sealed, connection_id, owner, credential_version)
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Some(credential))
}

/// Refreshes the connection's tokens, unless another refresh got there
/// first. `agent` is the resolving agent (none for the background
/// refresher): a refusal is recorded as its report.
pub async fn refresh(
    app: &AppState,
    owner: &OwnerId,
    agent: Option<&AgentId>,
    service: &ServiceName,
    connection_id: ConnectionId,
    from_version: u32,
    credential: &Credential,
) -> Outcome {
    let Credential::Oauth2 { refresh_token: Some(refresh_token), scopes, .. } = credential else {
        return Outcome::Transient(None);
    };
    let Some(provider) = app.settings.providers.get(service) else {
        return Outcome::Transient(None);
    };
    let flight = {
        let mut flights = app.settings.refreshes.0.lock().expect("refresh flights");
        flights.entry(connection_id).or_default().clone()
    };
    let turn = flight.lock().await;
    let outcome = async {
        // Another refresh (or a rotation, or a revocation) may have come first.
        match load_connection_state(app, connection_id).await {
            Ok(Some(state)) => match state.connections.get(&connection_id) {
                Some(connection) if !connection.is_active() => return Outcome::Revoked,
                Some(connection) if connection.credential_version != from_version => return Outcome::Done,
                Some(_) => {}
                None => return Outcome::Revoked,
            },
            Ok(None) => return Outcome::Revoked,
            Err(_) => return Outcome::Transient(None),
        }
        let asked = scopes.clone().unwrap_or_default();
        let (command, refreshed) = match oauth::refresh(provider, refresh_token, &asked).await {
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
                    agent_id: agent.cloned(),
                    credential_version: from_version,
                    status: None,
                    detail,
                };
                (report, None)
            }
            Err(Refusal::Throttled(seconds)) => return Outcome::Transient(seconds.map(Duration::from_secs)),
            Err(_) => return Outcome::Transient(None),
        };
        let input = CommandInput {
            actor: owner.clone(),
            target: Target::Connection(connection_id),
            command,
            credential: refreshed.clone(),
            idempotency: None,
        };
        match execute_for_owner(app, input, "refresher").await {
            Ok(_) if refreshed.is_none() => {
                unschedule(app, connection_id, from_version).await;
                Outcome::Rejected
            }
            Ok(_) => Outcome::Done,
            Err(ApiError::Revoked | ApiError::NotFound) => {
                // The revoke won: the new tokens are never sealed as a
                // version, and the provider is asked to revoke them too.
                if let Some(refreshed) = &refreshed {
                    upstream::discard(app, connection_id, owner, service, refreshed).await;
                }
                Outcome::Revoked
            }
            Err(error) => {
                tracing::warn!(%error, %connection_id, "recording a refresh failed");
                Outcome::Transient(None)
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

/// Takes a refused version off the schedule (a reconnect schedules anew).
async fn unschedule(app: &AppState, connection_id: ConnectionId, credential_version: u32) {
    let removed = async {
        let client = app.database.pool().get().await.map_err(StoreError::from)?;
        RefreshSchedule::remove_version(&client, connection_id, credential_version).await
    };
    if let Err(error) = removed.await {
        tracing::warn!(%error, %connection_id, "could not take a refused connection off the refresh schedule");
    }
}
