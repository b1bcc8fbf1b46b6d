//! Credential resolution for agent runtimes: which connection an agent uses
//! for a service, and its plaintext, decided on the authoritative stream in
//! one transaction that also records the hand-out.
//!
//! Linearizable with revocation: the stream is read and the data key is
//! looked up inside the resolving transaction, after any revoke that has
//! returned (a revoke deletes the data key in its own transaction). A
//! resolve that starts after a revoke returned therefore sees either the
//! revoked state or no data key, and hands nothing out. One that finds the
//! key gone reads the stream again: across a replacement it answers the new
//! connection, never an error.

use connections_domain::{decide, BindingSource, Command, ConnectionId, Request, ServiceName, StateChanges};
use connections_sealing::{open, Credential};
use connections_store::{
    Access, EventLog, Metadata, StoreError, StoredCredential, StreamAppend, StreamId, StreamState,
};

use crate::auth::AuthenticatedAgent;
use crate::commands::{attempt_transaction, backoff, MAX_ATTEMPTS};
use crate::problem::ApiError;
use crate::refresh;
use crate::state::AppState;
use connections_store::codec::new_events;

/// How long a runtime may use a resolved credential without hearing from us:
/// the last safety net behind revocation notices and fail-closed caching.
pub const LEASE_SECONDS: u64 = 60;

/// What an agent is handed.
pub struct Resolution {
    /// The connection.
    pub connection_id: ConnectionId,
    /// The credential version handed out.
    pub credential_version: u32,
    /// The plaintext.
    pub credential: Credential,
    /// `assigned` (the owner chose it for this agent) or `default`.
    pub via: &'static str,
    /// The log position of the agent's binding (0 if none was appended).
    pub position: i64,
    /// Whether a runtime reported that the provider rejected this version.
    pub needs_attention: bool,
}

/// Resolves the credential `agent` should use for `service`.
pub async fn resolve(
    app: &AppState,
    agent: &AuthenticatedAgent,
    service: &ServiceName,
) -> Result<Resolution, ApiError> {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let span = tracing::info_span!("resolve", owner = %agent.owner, agent = %agent.agent, %service);
    let resolution = resolve_attempts(app, agent, service).instrument(span).await;
    let outcome = resolution.as_ref().map_or_else(ApiError::outcome, |_| "granted");
    connections_metrics::RESOLVE_SECONDS.observe_duration(&[outcome], started.elapsed());
    resolution
}

async fn resolve_attempts(
    app: &AppState,
    agent: &AuthenticatedAgent,
    service: &ServiceName,
) -> Result<Resolution, ApiError> {
    let request_id = uuid::Uuid::now_v7();
    let stream_id = StreamId::owner_service(&agent.owner, service);
    // At most one refresh per resolve: after it, the answer is whatever the
    // stream holds (never a token known to have expired).
    let mut may_refresh = true;
    let mut transient = None;
    for attempt in 1..=MAX_ATTEMPTS {
        // No connection free in time (many resolves queued on one stream's
        // lock, say): wait and try again, as a command does.
        let Some(transaction) = attempt_transaction(app, attempt, &mut transient).await? else {
            continue;
        };
        // Most resolves only read. One that lost a race to append (binding
        // the default) queues behind the stream's writers when it tries again.
        let lock = async {
            match attempt {
                1 => Ok(()),
                _ => EventLog::lock_stream(transaction.client(), &stream_id).await,
            }
        };
        let command = Command::ResolveForAgent { agent_id: agent.agent.clone() };
        let focus = command.focus();
        let (begun, locked, loaded) =
            futures::join!(transaction.begin(), lock, StreamState::load(transaction.client(), &stream_id, &focus));
        begun?;
        locked?;
        let loaded = loaded?;
        let request = Request { actor: agent.owner.clone(), command };
        let events = decide(&loaded.state, &request).map_err(|error| match error {
            connections_domain::DomainError::AuthorizationRequired => {
                ApiError::AuthorizationRequired(service.to_string())
            }
            other => other.into(),
        })?;
        let mut state = loaded.state.clone();
        for event in &events {
            state.apply(event);
        }
        let binding = *state.bindings.get(&agent.agent).ok_or_else(|| internal("resolved without a binding"))?;
        let connection = state
            .connections
            .get(&binding.connection_id)
            .ok_or_else(|| internal("binding to an unknown connection"))?;
        // The binding's append (if any) and the reads of the credential go
        // in one round trip: the stream's lock, when held, is held for less.
        let binding_written = async {
            if events.is_empty() {
                return Ok(None);
            }
            let metadata = Metadata {
                actor: format!("agent:{}", agent.agent),
                command_id: request_id,
                correlation_id: request_id,
            };
            let append = [StreamAppend {
                stream_id: stream_id.clone(),
                expected_version: Some(loaded.version),
                events: new_events(&events),
            }];
            let changes = StateChanges::between(&loaded.state, &state);
            StreamState::prepare(transaction.client()).await?;
            let (appended, saved) = futures::join!(
                EventLog::append(transaction.client(), &append, &metadata),
                StreamState::save(transaction.client(), &stream_id, events.len(), &changes)
            );
            appended.and_then(|positions| saved.map(|()| positions.last().copied()))
        };
        let (written, wrapped, sealed) = futures::join!(
            binding_written,
            StoredCredential::data_key(transaction.client(), binding.connection_id),
            StoredCredential::sealed(transaction.client(), binding.connection_id, connection.credential_version)
        );
        let position = match written {
            Ok(appended) => appended.unwrap_or(loaded.last_position),
            Err(StoreError::Conflict { .. }) => {
                transaction.rollback().await?;
                backoff(attempt).await;
                continue;
            }
            Err(other) => return Err(other.into()),
        };
        // No data key means the connection was revoked after we read the
        // stream: its credential is never handed out. The revoking
        // transaction has committed (the key and the events go together),
        // so a fresh read sees what replaced the binding: a replacement's
        // new connection, the default, or nothing (fail closed).
        let Some(wrapped) = wrapped? else {
            transaction.rollback().await?;
            if attempt < MAX_ATTEMPTS {
                continue;
            }
            return Err(ApiError::Revoked);
        };
        let data_key =
            app.master_key.unwrap(&wrapped, binding.connection_id).map_err(|e| ApiError::Internal(Box::new(e)))?;
        let sealed = sealed?.ok_or_else(|| internal("active connection without its sealed credential"))?;
        let credential = open(&data_key, &sealed, binding.connection_id, &agent.owner, connection.credential_version)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        // OAuth tokens expiring within the margin are refreshed first, with
        // no transaction open while the provider answers.
        match refresh::due(app, service, &credential) {
            Some(expired) if may_refresh => {
                transaction.rollback().await?;
                may_refresh = false;
                let (connection_id, version) = (binding.connection_id, connection.credential_version);
                let owner = &agent.owner;
                match refresh::refresh(app, owner, Some(&agent.agent), service, connection_id, version, &credential)
                    .await
                {
                    // Revoked: the next read finds out what replaced it.
                    refresh::Outcome::Done | refresh::Outcome::Revoked => continue,
                    refresh::Outcome::Transient(_) | refresh::Outcome::Rejected if !expired => continue,
                    refresh::Outcome::Transient(_) => return Err(ApiError::RefreshUnavailable),
                    refresh::Outcome::Rejected => return Err(ApiError::CredentialExpired),
                }
            }
            Some(true) => {
                transaction.rollback().await?;
                return Err(ApiError::RefreshUnavailable);
            }
            _ => {}
        }
        Access {
            connection_id: binding.connection_id,
            credential_version: connection.credential_version,
            agent_id: &agent.agent,
            owner: &agent.owner,
            request_id,
        }
        .record(transaction.client())
        .await?;
        // The hand-out is on record only once this commit returns.
        if events.is_empty() {
            transaction.commit().await.map_err(ApiError::outcome_unknown)?;
        } else {
            transaction
                .commit_and_notify(connections_fanout::EVENTS_CHANNEL)
                .await
                .map_err(ApiError::outcome_unknown)?;
        }
        let via = match binding.source {
            BindingSource::Default => "default",
            BindingSource::Created | BindingSource::Assigned => "assigned",
        };
        return Ok(Resolution {
            connection_id: binding.connection_id,
            credential_version: connection.credential_version,
            credential,
            via,
            position,
            needs_attention: connection.needs_attention,
        });
    }
    match transient {
        Some(error) => Err(ApiError::Unavailable(Box::new(error))),
        None => Err(ApiError::ConcurrencyExhausted),
    }
}

fn internal(what: &'static str) -> ApiError {
    ApiError::Internal(what.into())
}
