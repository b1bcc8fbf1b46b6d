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
use connections_store::{Access, EventLog, Metadata, StoredCredential, StreamAppend, StreamId, StreamState};

use crate::attempts::{self, Attempt, AttemptError, Step, MAX_ATTEMPTS};
use crate::auth::AuthenticatedAgent;
use crate::problem::ApiError;
use crate::refresh;
use crate::state::AppState;
use connections_store::codec::new_events;
use deadpool_postgres::Object;

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
    loop {
        let resolve = Resolve { app, agent, service, stream_id: &stream_id, request_id, may_refresh };
        let found = attempts::run(app, &resolve).await?;
        let (expired, connection_id, version, credential) = match found {
            Found::Handed(resolution) => return Ok(resolution),
            Found::Expiring { expired, connection_id, version, credential } => {
                (expired, connection_id, version, credential)
            }
        };
        // OAuth tokens expiring within the margin are refreshed first, with
        // no transaction open while the provider answers.
        may_refresh = false;
        let owner = &agent.owner;
        match refresh::refresh(app, owner, Some(&agent.agent), service, connection_id, version, &credential).await {
            // Revoked: the next read finds out what replaced it.
            refresh::Outcome::Done | refresh::Outcome::Revoked => continue,
            refresh::Outcome::Transient(_) | refresh::Outcome::Rejected if !expired => continue,
            refresh::Outcome::Transient(_) => return Err(ApiError::RefreshUnavailable),
            refresh::Outcome::Rejected => return Err(ApiError::CredentialExpired),
        }
    }
}

/// What an attempt found.
enum Found {
    /// The credential, handed out (once the attempt commits).
    Handed(Resolution),
    /// An OAuth credential to refresh first (`expired`: already unusable).
    Expiring { expired: bool, connection_id: ConnectionId, version: u32, credential: Credential },
}

/// One resolve's request.
struct Resolve<'a> {
    app: &'a AppState,
    agent: &'a AuthenticatedAgent,
    service: &'a ServiceName,
    stream_id: &'a StreamId,
    request_id: uuid::Uuid,
    may_refresh: bool,
}

impl Attempt for Resolve<'_> {
    type Output = Found;

    /// Decides on the stream (binding the default if the agent has no
    /// binding yet), reads the credential, and records the hand-out.
    async fn attempt(&self, client: &Object, attempt: usize) -> Result<Step<Found>, AttemptError> {
        let Self { app, agent, service, stream_id, request_id, may_refresh } = *self;
        // Most resolves only read. One that lost a race to append (binding
        // the default) queues behind the stream's writers when it tries again
        // (on a long stream, it queues before its first append: below).
        let lock = async {
            match attempt {
                1 => Ok(()),
                _ => EventLog::lock_stream(client, stream_id).await,
            }
        };
        let command = Command::ResolveForAgent { agent_id: agent.agent.clone() };
        let focus = command.focus();
        let (locked, loaded) =
            futures::join!(lock, StreamState::load_cached(client, app.database.state_cache(), stream_id, &focus));
        locked?;
        let loaded = loaded?;
        let request = Request { actor: agent.owner.clone(), command };
        let events = decide(&loaded.state, &request).map_err(|error| {
            AttemptError::Refused(match error {
                connections_domain::DomainError::AuthorizationRequired => {
                    ApiError::AuthorizationRequired(service.to_string())
                }
                other => other.into(),
            })
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
            StreamState::prepare(client).await?;
            // A write to a long stream's keyed copy is made under the
            // stream's lock, taken before the append: every writer of the
            // copy then holds the lock before it holds anything else of the
            // stream, so none can wait on another's head row while holding
            // an event that one waits on (a deadlock: a writer that rebuilt
            // the copy under the lock, then appended). Sent first in the
            // same round trip.
            let lock = async {
                match attempt == 1 && StreamState::keeps_copy(Some(loaded.version), events.len()) {
                    true => EventLog::lock_stream(client, stream_id).await,
                    false => Ok(()),
                }
            };
            let (locked, appended, saved) = futures::join!(
                lock,
                EventLog::append(client, &append, &metadata),
                StreamState::save(client, stream_id, Some(loaded.version), events.len(), &changes)
            );
            locked?;
            appended.and_then(|positions| saved.map(|()| positions.last().copied()))
        };
        let (written, wrapped, sealed) = futures::join!(
            binding_written,
            StoredCredential::data_key(client, binding.connection_id),
            StoredCredential::sealed(client, binding.connection_id, connection.credential_version)
        );
        let position = written?.unwrap_or(loaded.last_position);
        // No data key means the connection was revoked after we read the
        // stream: its credential is never handed out. The revoking
        // transaction has committed (the key and the events go together),
        // so a fresh read sees what replaced the binding: a replacement's
        // new connection, the default, or nothing (fail closed).
        let Some(wrapped) = wrapped? else {
            return Ok(match attempt < MAX_ATTEMPTS {
                true => Step::Again,
                false => Step::RollBack(Err(ApiError::Revoked)),
            });
        };
        let data_key =
            app.master_key.unwrap(&wrapped, binding.connection_id).map_err(|e| ApiError::Internal(Box::new(e)))?;
        let sealed = sealed?.ok_or_else(|| internal("active connection without its sealed credential"))?;
        let credential = open(&data_key, &sealed, binding.connection_id, &agent.owner, connection.credential_version)
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        match refresh::due(app, service, &credential) {
            Some(expired) if may_refresh => {
                let (connection_id, version) = (binding.connection_id, connection.credential_version);
                return Ok(Step::RollBack(Ok(Found::Expiring { expired, connection_id, version, credential })));
            }
            Some(true) => return Ok(Step::RollBack(Err(ApiError::RefreshUnavailable))),
            _ => {}
        }
        Access {
            connection_id: binding.connection_id,
            credential_version: connection.credential_version,
            agent_id: &agent.agent,
            owner: &agent.owner,
            request_id,
        }
        .record(client)
        .await?;
        let via = match binding.source {
            BindingSource::Default => "default",
            BindingSource::Created | BindingSource::Assigned => "assigned",
        };
        // The hand-out is on record only once the runner's commit returns.
        let resolution = Resolution {
            connection_id: binding.connection_id,
            credential_version: connection.credential_version,
            credential,
            via,
            position,
            needs_attention: connection.needs_attention,
        };
        Ok(Step::Commit { answer: Ok(Found::Handed(resolution)), notify: !events.is_empty() })
    }
}

fn internal(what: &'static str) -> AttemptError {
    AttemptError::Fail(ApiError::Internal(what.into()))
}
