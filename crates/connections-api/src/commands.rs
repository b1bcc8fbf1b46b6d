//! The command handler: one transaction per attempt that loads the stream,
//! decides, writes the side tables the events call for, and appends, retried
//! against fresh state when another command wins the race.

use axum::http::StatusCode;
use connections_domain::{
    decide, Command, ConnectionId, CredentialKind, Event, Focus, OwnerId, OwnerService, Request, ServiceName,
    StateChanges,
};
use connections_fanout::{EnvelopeCursor, NoticedEvent, Outgoing};
use connections_sealing::{
    open, seal, Credential, DataKey, FingerprintKey, MasterKey, SealedCredential, WrappedDataKey,
};
use connections_store::codec::new_events;
use connections_store::{
    fold, ConnectionLocation, CredentialHygiene, EventLog, IdempotencyClaim, LockedStream, Metadata, RecordedEvent,
    RefreshSchedule, StoreError, StoredCredential, StoredResponse, StreamAppend, StreamId, StreamState, StreamVersion,
    UpstreamRevocations,
};
use deadpool_postgres::{GenericClient, Object};
use serde_json::Value;

use crate::attempts::{self, Attempt, AttemptError, Step};
use crate::groups;
use crate::problem::ApiError;
use crate::state::AppState;
use crate::{refresh, upstream};

/// Which stream a command addresses.
#[derive(Debug, Clone)]
pub enum Target {
    /// The caller's own stream for a service (create, defaults).
    Service(ServiceName),
    /// Wherever the connection lives (it may be someone else's: the domain
    /// then answers not-found).
    Connection(ConnectionId),
}

/// A client-supplied `Idempotency-Key` and the fingerprint of the request
/// it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyRequest {
    /// The key, scoped to the caller.
    pub key: String,
    /// HMAC-SHA-256 of method, path and body under a key derived from the
    /// master key: the body may carry a plaintext credential, and an
    /// unkeyed hash of it would let a database dump confirm a guess.
    pub request_hash: Vec<u8>,
    /// How long the stored answer is replayed; an older record is as if
    /// the key had never been used.
    pub expires_after: std::time::Duration,
}

impl IdempotencyRequest {
    /// Fingerprints a request for comparison with a replay.
    pub fn new(
        key: String,
        fingerprint_key: &FingerprintKey,
        expires_after: std::time::Duration,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Self {
        let request_hash = fingerprint_key.fingerprint(&[method.as_bytes(), path.as_bytes(), body]).to_vec();
        Self { key, request_hash, expires_after }
    }
}

/// One command to run.
pub struct CommandInput {
    /// The authenticated caller.
    pub actor: OwnerId,
    /// The stream it addresses.
    pub target: Target,
    /// What it asks.
    pub command: Command,
    /// The plaintext credential, for create and rotate (sealed before storing).
    pub credential: Option<Credential>,
    /// The idempotency key, if the client sent one.
    pub idempotency: Option<IdempotencyRequest>,
}

/// The outcome a handler turns into its answer.
pub struct Decided {
    /// The state after the command.
    pub state: OwnerService,
    /// The events appended (empty when the command changed nothing).
    pub events: Vec<Event>,
    /// The position of the last event appended, or of the stream's last
    /// event when nothing was appended (0 for an empty stream).
    pub position: i64,
}

/// Runs a command and answers with `respond`'s status and body. With an
/// idempotency key, the first answer is stored and replayed.
pub async fn execute(
    app: &AppState,
    input: CommandInput,
    respond: impl Fn(&Decided) -> (StatusCode, Value) + Sync,
) -> Result<(StatusCode, Value), ApiError> {
    execute_as(app, input, None, Sharing::Group, respond).await
}

/// Like [`execute`], for a command an agent runtime sent (a problem
/// report): it runs in a transaction of its own, never in a commit group, so
/// that nothing a runtime sends can hold back or roll back another user's
/// command (a revoke, say).
pub async fn execute_for_runtime(
    app: &AppState,
    input: CommandInput,
    respond: impl Fn(&Decided) -> (StatusCode, Value) + Sync,
) -> Result<(StatusCode, Value), ApiError> {
    execute_as(app, input, None, Sharing::Alone, respond).await
}

/// Whether a command may share a commit group (see [`crate::groups`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Group,
    Alone,
}

/// Like [`execute`], for a server component acting on the owner's behalf
/// (the refresher, the upstream revoker): the events record the actor
/// `service:<component>`, so an audit tells what the owner did from what the
/// server did for them.
pub async fn execute_for_owner(
    app: &AppState,
    input: CommandInput,
    component: &'static str,
) -> Result<(StatusCode, Value), ApiError> {
    execute_as(app, input, Some(component), Sharing::Alone, |_| (StatusCode::OK, Value::Null)).await
}

/// Runs the command in a `command` span and records its duration and
/// outcome in `connections_command_duration_seconds`.
async fn execute_as(
    app: &AppState,
    input: CommandInput,
    component: Option<&'static str>,
    sharing: Sharing,
    respond: impl Fn(&Decided) -> (StatusCode, Value) + Sync,
) -> Result<(StatusCode, Value), ApiError> {
    use tracing::Instrument;
    let command = input.command.name();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("command", command, actor = %input.actor);
    let answer = execute_attempts(app, input, component, sharing, respond).instrument(span).await;
    let outcome = answer.as_ref().map_or_else(ApiError::outcome, |_| "accepted");
    connections_metrics::COMMAND_SECONDS.observe_duration(&[command, outcome], started.elapsed());
    answer
}

async fn execute_attempts(
    app: &AppState,
    input: CommandInput,
    component: Option<&'static str>,
    sharing: Sharing,
    respond: impl Fn(&Decided) -> (StatusCode, Value) + Sync,
) -> Result<(StatusCode, Value), ApiError> {
    let recorded_actor = match component {
        Some(component) => format!("service:{component}"),
        None => input.actor.to_string(),
    };
    let command_id = uuid::Uuid::now_v7();
    let attempt = CommandAttempt { app, input: &input, recorded_actor: &recorded_actor, command_id, respond: &respond };
    // With an idempotency key the claim must be alone in its transaction
    // (two requests with one key would find each other's claim); a server
    // component's and a runtime's commands run alone too.
    let answered = match sharing == Sharing::Group && input.idempotency.is_none() {
        true => groups::run(app, &attempt).await?,
        false => attempts::run(app, &attempt).await?,
    };
    let Answered { answer, urgent, remember, created, .. } = answered;
    // Committed: the state at the new version is the log's from now on, and
    // new connections live where they were created for good.
    if let Some(CommittedState { stream_id, version, last_position, state }) = remember {
        app.database.state_cache().remember(&stream_id, version, last_position, &state);
    }
    if let Some((location, created)) = created {
        created.into_iter().for_each(|id| app.database.location_cache().insert(id, &location));
    }
    if let Some(notices) = &app.lifecycle.urgent_notices {
        notices.publish(urgent).await;
    }
    Ok(answer)
}

/// A command's attempt.
struct CommandAttempt<'a, R> {
    app: &'a AppState,
    input: &'a CommandInput,
    recorded_actor: &'a str,
    command_id: uuid::Uuid,
    respond: &'a R,
}

impl<R: Fn(&Decided) -> (StatusCode, Value) + Sync> Attempt for CommandAttempt<'_, R> {
    type Output = Answered;

    async fn attempt(&self, client: &Object, _: usize) -> Result<Step<Answered>, AttemptError> {
        let Self { app, input, recorded_actor, command_id, respond } = *self;
        match attempt_once(app, client, input, recorded_actor, command_id, respond).await {
            Ok(answered) => Ok(Step::Commit { notify: !answered.replayed, answer: Ok(answered) }),
            // A refusal is an answer too: stored for the key, nothing appended.
            Err(AttemptError::Refused(error)) => match &input.idempotency {
                Some(idempotency) => {
                    let (status, body) = error.to_problem();
                    let stored = StoredResponse { status: status.as_u16(), body };
                    IdempotencyClaim::record(client, input.actor.as_str(), &idempotency.key, &stored).await?;
                    Ok(Step::Commit { answer: Err(error), notify: false })
                }
                None => Ok(Step::RollBack(Err(error))),
            },
            Err(other) => Err(other),
        }
    }
}

async fn attempt_once(
    app: &AppState,
    transaction: &impl GenericClient,
    input: &CommandInput,
    recorded_actor: &str,
    command_id: uuid::Uuid,
    respond: &impl Fn(&Decided) -> (StatusCode, Value),
) -> Result<Answered, AttemptError> {
    // Queue behind the stream's other writers before writing anything, the
    // key's claim included (see `EventLog::lock_stream`), and read the
    // stream's head under the lock: one round trip either way. On a
    // service's stream the claim is sent with them, after the lock, and
    // runs once it is held.
    let (locked, claimed) = match &input.target {
        Target::Service(service) => {
            let location = ConnectionLocation { owner: input.actor.clone(), service: service.clone() };
            let (locked, claimed) =
                futures::join!(LockedStream::lock(transaction, location), claim(transaction, input));
            (Some(locked?), claimed?)
        }
        Target::Connection(connection_id) => {
            let locations = app.database.location_cache();
            let locked = ConnectionLocation::locate_and_lock(transaction, locations, *connection_id).await?;
            // Unknown: no stream to lock; the refusal is still the key's answer.
            (locked, claim(transaction, input).await?)
        }
    };
    if let Some(replayed) = claimed {
        return Ok(Answered::replayed(replayed));
    }
    let Some(locked) = locked else {
        return Err(AttemptError::Refused(ApiError::NotFound));
    };
    decide_and_append(app, transaction, input, recorded_actor, &locked, command_id, respond).await
}

/// With an idempotency key: claims it, or answers the stored answer of the
/// request that claimed it (an error if that was a different request).
async fn claim(
    transaction: &impl GenericClient,
    input: &CommandInput,
) -> Result<Option<(StatusCode, Value)>, AttemptError> {
    let Some(idempotency) = &input.idempotency else {
        return Ok(None);
    };
    match IdempotencyClaim::claim(
        transaction,
        input.actor.as_str(),
        &idempotency.key,
        &idempotency.request_hash,
        idempotency.expires_after,
    )
    .await?
    {
        IdempotencyClaim::Fresh => Ok(None),
        IdempotencyClaim::Replay(stored) => {
            Ok(Some((StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK), stored.body)))
        }
        IdempotencyClaim::Mismatch => Err(AttemptError::Fail(ApiError::IdempotencyKeyReused)),
    }
}

/// The command's work on its locked stream: read, decide, write, answer.
async fn decide_and_append(
    app: &AppState,
    transaction: &impl GenericClient,
    input: &CommandInput,
    recorded_actor: &str,
    locked: &LockedStream,
    command_id: uuid::Uuid,
    respond: &impl Fn(&Decided) -> (StatusCode, Value),
) -> Result<Answered, AttemptError> {
    let location = &locked.location;
    let stream_id = location.stream_id();
    // The command decides on the entries of the stream's state it names
    // (see `connections_domain::Focus`). One that does not depend on the
    // stream decides on an empty state; the stream's version (read under
    // the lock) still says whether its write must keep the keyed copy, and
    // whether the cache can follow it (a new stream's whole state is the
    // empty one). It appends after that version.
    let cache = app.database.state_cache();
    let (before, version, last_position, whole) = if input.command.reads_state() {
        let loaded = StreamState::load_locked(transaction, cache, locked, &input.command.focus()).await?;
        (loaded.state, loaded.version, loaded.last_position, loaded.whole)
    } else {
        let whole = match cache.get(&stream_id, locked.version) {
            Some((whole, _)) => Some(whole),
            None => (locked.version.0 == 0).then(OwnerService::default),
        };
        (OwnerService::default(), locked.version, locked.last_position, whole)
    };
    let request = Request { actor: input.actor.clone(), command: input.command.clone() };
    let events = decide(&before, &request).map_err(|e| AttemptError::Refused(e.into()))?;
    let mut state = before.clone();
    for event in &events {
        state.apply(event);
    }
    let side_writes = side_writes(app, transaction, location, &state, &events, input.credential.as_ref()).await?;
    let new_events = new_events(&events);
    let metadata = Metadata { actor: recorded_actor.to_owned(), command_id, correlation_id: command_id };
    let append = [StreamAppend { stream_id: stream_id.clone(), expected_version: Some(version), events: new_events }];
    let changes = StateChanges::between(&before, &state);
    let save = async {
        match events.is_empty() {
            true => Ok(()),
            false => StreamState::save(transaction, &stream_id, Some(version), events.len(), &changes).await,
        }
    };
    // The side-table writes, the state's changes and the append are
    // independent statements of one transaction: pipeline them instead of
    // paying a round trip each (the append first; see `StreamState::prepare`).
    // An urgent notice (revoked, rotated) names the event's cursor, so its
    // transaction id is asked for with the append.
    let notices = app.lifecycle.urgent_notices.as_ref().filter(|_| events.iter().any(is_urgent));
    let transaction_id = async {
        match notices {
            Some(_) => EventLog::transaction_id(transaction).await.map(Some),
            None => Ok(None),
        }
    };
    StreamState::prepare(transaction).await?;
    let (positions, _, _, transaction_id) = futures::future::try_join4(
        EventLog::append(transaction, &append, &metadata),
        futures::future::try_join_all(side_writes.iter().map(|write| write.execute(transaction, location))),
        save,
        transaction_id,
    )
    .await?;
    let urgent = match (notices, transaction_id) {
        (Some(notices), Some(transaction_id)) => {
            let (owner, service) = (location.owner.as_str(), location.service.as_str());
            notices.of(append[0].events.iter().zip(&positions).map(|(event, &position)| NoticedEvent {
                event_id: event.event_id,
                cursor: EnvelopeCursor { transaction_id, position },
                owner,
                service,
                event_type: event.event_type,
                data: &event.data,
            }))
        }
        _ => Outgoing::default(),
    };
    let position = positions.last().copied().unwrap_or(last_position);
    // The whole state after the events, to be cached once they commit.
    let remember = match whole {
        Some(mut whole) if !events.is_empty() => {
            events.iter().for_each(|event| whole.apply(event));
            let version = StreamVersion(version.0 + events.len() as u64);
            Some(CommittedState { stream_id, version, last_position: position, state: whole })
        }
        _ => None,
    };
    let created: Vec<ConnectionId> = events
        .iter()
        .filter_map(|event| match event {
            Event::ConnectionCreated { connection_id, .. } => Some(*connection_id),
            _ => None,
        })
        .collect();
    let created = (!created.is_empty()).then(|| (location.clone(), created));
    let (status, body) = respond(&Decided { state, events, position });
    if let Some(idempotency) = &input.idempotency {
        let stored = StoredResponse { status: status.as_u16(), body: body.clone() };
        IdempotencyClaim::record(transaction, input.actor.as_str(), &idempotency.key, &stored).await?;
    }
    Ok(Answered { answer: (status, body), urgent, replayed: false, remember, created })
}

/// A command's answer, the urgent notices its commit calls for, and the
/// stream's whole state after it, when known.
struct Answered {
    answer: (StatusCode, Value),
    /// Recorded as being sent from before the commit (see `UrgentNotices::of`).
    urgent: Outgoing,
    /// The stored answer of the key's first request: nothing was appended.
    replayed: bool,
    /// For the state cache, once the commit has succeeded.
    remember: Option<CommittedState>,
    /// The connections created and where, for the location cache, once the
    /// commit has succeeded.
    created: Option<(ConnectionLocation, Vec<ConnectionId>)>,
}

/// A stream's whole state at the version a command's commit makes it.
struct CommittedState {
    stream_id: StreamId,
    version: StreamVersion,
    last_position: i64,
    state: OwnerService,
}

impl Answered {
    /// The stored answer of an idempotency key's first request (its notices
    /// went out then).
    fn replayed(answer: (StatusCode, Value)) -> Self {
        Self { answer, urgent: Outgoing::default(), replayed: true, remember: None, created: None }
    }
}

/// Whether runtimes must hear of `event` at once (see `UrgentNotices`).
fn is_urgent(event: &Event) -> bool {
    matches!(
        event,
        Event::ConnectionRevoked { .. } | Event::CredentialRotated { .. } | Event::CredentialRefreshed { .. }
    )
}

/// A write to a side table that an event calls for, made in the event's transaction.
enum SideWrite {
    /// Store a new connection's locator, wrapped data key and sealed credential v1.
    NewConnection(ConnectionId, WrappedDataKey, SealedCredential),
    /// Store a sealed credential version.
    Sealed(ConnectionId, u32, SealedCredential),
    /// Destroy a revoked connection's data key (crypto-shredding).
    DestroyDataKey(ConnectionId),
    /// Record what the hygiene review needs of a version just sealed.
    Hygiene(CredentialHygiene),
    /// Put a version just sealed on the refresh schedule, due then.
    Schedule(ConnectionId, u32, chrono::DateTime<chrono::Utc>),
    /// Take a connection whose new version cannot be refreshed off it.
    Unschedule(ConnectionId),
    /// Queue a revoked connection's tokens for revocation at the provider.
    RevokeUpstream(ConnectionId, WrappedDataKey, SealedCredential),
    /// Replace a data key's wrapping (master key rotation).
    Rewrap(ConnectionId, String, WrappedDataKey),
}

impl SideWrite {
    async fn execute(&self, transaction: &impl GenericClient, location: &ConnectionLocation) -> Result<(), StoreError> {
        match self {
            SideWrite::NewConnection(id, wrapped, sealed) => {
                StoredCredential::insert_new_connection(transaction, *id, location, wrapped, sealed).await
            }
            SideWrite::Sealed(id, version, sealed) => {
                StoredCredential::insert_sealed(transaction, *id, *version, sealed).await
            }
            SideWrite::DestroyDataKey(id) => StoredCredential::destroy_data_key(transaction, *id).await,
            SideWrite::Hygiene(hygiene) => hygiene.record(transaction).await,
            SideWrite::Schedule(id, version, due_at) => {
                RefreshSchedule::schedule(transaction, *id, &location.service, *version, *due_at).await
            }
            SideWrite::Unschedule(id) => RefreshSchedule::remove(transaction, *id).await,
            SideWrite::Rewrap(id, from_key_id, wrapped) => {
                StoredCredential::rewrap(transaction, *id, from_key_id, wrapped).await
            }
            SideWrite::RevokeUpstream(id, wrapped, sealed) => {
                UpstreamRevocations::enqueue(transaction, *id, &location.owner, &location.service, wrapped, sealed)
                    .await
            }
        }
    }
}

/// The side-table writes `events` call for. Sealing happens here, in memory;
/// only a rotation reads (the connection's data key), and the revocation of
/// an OAuth connection whose provider revokes tokens (its current version).
async fn side_writes(
    app: &AppState,
    transaction: &impl GenericClient,
    location: &ConnectionLocation,
    state: &OwnerService,
    events: &[Event],
    credential: Option<&Credential>,
) -> Result<Vec<SideWrite>, AttemptError> {
    let master_key: &MasterKey = &app.master_key;
    let failed = |e: &dyn std::error::Error| AttemptError::Fail(ApiError::Internal(e.to_string().into()));
    let mut writes = Vec::new();
    for event in events {
        match event {
            Event::ConnectionCreated { connection_id, .. } => {
                let credential = credential.ok_or_else(|| internal("create without a credential"))?;
                let data_key = DataKey::generate().map_err(|e| failed(&e))?;
                let sealed = seal(&data_key, credential, *connection_id, &location.owner, 1).map_err(|e| failed(&e))?;
                let wrapped = master_key.wrap(&data_key, *connection_id);
                writes.push(SideWrite::NewConnection(*connection_id, wrapped, sealed));
                writes.push(SideWrite::Hygiene(hygiene(master_key, location, *connection_id, 1, credential)));
                if refresh::refreshable(credential) {
                    let due_at = app.settings.upkeep.due_at(chrono::Utc::now(), credential.expires_at());
                    writes.push(SideWrite::Schedule(*connection_id, 1, due_at));
                }
            }
            Event::CredentialRotated { connection_id, credential_version, .. }
            | Event::CredentialRefreshed { connection_id, credential_version } => {
                let credential = credential.ok_or_else(|| internal("rotate without a credential"))?;
                let wrapped = StoredCredential::data_key(transaction, *connection_id)
                    .await?
                    .ok_or_else(|| internal("active connection without a data key"))?;
                let data_key = master_key.unwrap(&wrapped, *connection_id).map_err(|e| failed(&e))?;
                let sealed = seal(&data_key, credential, *connection_id, &location.owner, *credential_version)
                    .map_err(|e| failed(&e))?;
                writes.push(SideWrite::Sealed(*connection_id, *credential_version, sealed));
                writes.push(SideWrite::Hygiene(hygiene(
                    master_key,
                    location,
                    *connection_id,
                    *credential_version,
                    credential,
                )));
                writes.push(match refresh::refreshable(credential) {
                    true => SideWrite::Schedule(
                        *connection_id,
                        *credential_version,
                        app.settings.upkeep.due_at(chrono::Utc::now(), credential.expires_at()),
                    ),
                    false => SideWrite::Unschedule(*connection_id),
                });
            }
            Event::DataKeyRewrapped { connection_id, from_key_id, to_key_id } => {
                // Only a key still wrapped under `from_key_id` moves, and only
                // to the key this server wraps with; anything else means
                // another rewrapper (or server) got there first.
                let stale = || AttemptError::Refused(ApiError::RewrapStale);
                if master_key.key_id() != to_key_id.as_str() {
                    return Err(stale());
                }
                let wrapped = StoredCredential::data_key(transaction, *connection_id).await?.ok_or_else(stale)?;
                if wrapped.master_key_id != from_key_id.as_str() {
                    return Err(stale());
                }
                let data_key = master_key.unwrap(&wrapped, *connection_id).map_err(|e| failed(&e))?;
                let rewrapped = master_key.wrap(&data_key, *connection_id);
                writes.push(SideWrite::Rewrap(*connection_id, from_key_id.to_string(), rewrapped));
            }
            Event::ConnectionRevoked { connection_id, .. } => {
                if let Some(queued) = upstream_tokens(app, transaction, location, state, *connection_id).await? {
                    writes.push(queued);
                }
                writes.push(SideWrite::DestroyDataKey(*connection_id));
            }
            Event::AgentAssigned { .. }
            | Event::AgentUnassigned { .. }
            | Event::CredentialRejected { .. }
            | Event::OauthGranted { .. }
            | Event::UpstreamRevoked { .. }
            | Event::DefaultSet { .. }
            | Event::DefaultCleared { .. } => {}
        }
    }
    Ok(writes)
}

/// For a revoked OAuth connection whose provider revokes tokens: its
/// current tokens, sealed for the upstream revocation outbox (read before
/// the data key is destroyed, in the same transaction).
async fn upstream_tokens(
    app: &AppState,
    transaction: &impl GenericClient,
    location: &ConnectionLocation,
    state: &OwnerService,
    connection_id: ConnectionId,
) -> Result<Option<SideWrite>, AttemptError> {
    let failed = |e: &dyn std::error::Error| AttemptError::Fail(ApiError::Internal(e.to_string().into()));
    let provider = app.settings.providers.get(&location.service);
    let Some(connection) = state.connections.get(&connection_id) else {
        return Ok(None);
    };
    if connection.credential_kind != CredentialKind::Oauth2
        || provider.and_then(|p| p.revocation_endpoint.as_ref()).is_none()
    {
        return Ok(None);
    }
    let version = connection.credential_version;
    let (wrapped, sealed) = futures::try_join!(
        StoredCredential::data_key(transaction, connection_id),
        StoredCredential::sealed(transaction, connection_id, version)
    )?;
    let (Some(wrapped), Some(sealed)) = (wrapped, sealed) else {
        return Ok(None);
    };
    // A credential that cannot be opened (its master key is not in the
    // keyring) is still revoked here: only the call upstream is lost.
    let opened = app
        .master_key
        .unwrap(&wrapped, connection_id)
        .map_err(|e| e.to_string())
        .and_then(|key| open(&key, &sealed, connection_id, &location.owner, version).map_err(|e| e.to_string()));
    let credential = match opened {
        Ok(credential) => credential,
        Err(error) => {
            tracing::error!(%error, %connection_id, "revoking without revoking upstream: the tokens cannot be opened");
            return Ok(None);
        }
    };
    let (wrapped, sealed) = upstream::seal_for_outbox(&app.master_key, connection_id, &location.owner, &credential)
        .map_err(|e| failed(&e))?;
    Ok(Some(SideWrite::RevokeUpstream(connection_id, wrapped, sealed)))
}

/// What the fingerprint key of credential values is derived for (then
/// scoped to the owner).
pub const CREDENTIAL_FINGERPRINT_PURPOSE: &str = "credential-fingerprint";

/// The hygiene facts of a credential version being sealed: each secret
/// value fingerprinted under the owner's own key, so that fingerprints are
/// comparable only among that owner's connections in this deployment.
fn hygiene(
    master_key: &MasterKey,
    location: &ConnectionLocation,
    connection_id: ConnectionId,
    credential_version: u32,
    credential: &Credential,
) -> CredentialHygiene {
    let key = master_key.fingerprint_key(CREDENTIAL_FINGERPRINT_PURPOSE).for_scope(location.owner.as_str().as_bytes());
    CredentialHygiene {
        connection_id,
        owner: location.owner.clone(),
        credential_version,
        expires_at: credential.expires_at(),
        fingerprints: credential
            .secret_values()
            .iter()
            .map(|value| key.fingerprint(&[value.expose().as_bytes()]))
            .collect(),
    }
}

fn internal(what: &'static str) -> AttemptError {
    AttemptError::Fail(ApiError::Internal(what.into()))
}

/// The part of the state of `connection_id`'s stream that a command on
/// that connection decides on (no history: its cost does not grow with the
/// stream), for checks made before running one. In a transaction of its
/// own, so that a stale copy is rebuilt under the stream's lock.
pub async fn load_connection_state(
    app: &AppState,
    connection_id: ConnectionId,
) -> Result<Option<OwnerService>, ApiError> {
    let mut client = app.database.pool().get().await.map_err(StoreError::from)?;
    let transaction = client.transaction().await.map_err(StoreError::from)?;
    let Some(location) = ConnectionLocation::find(&transaction, connection_id).await? else {
        return Ok(None);
    };
    let focus = Focus { connections: [connection_id].into(), ..Focus::default() };
    let cache = app.database.state_cache();
    let loaded = StreamState::load_cached(&transaction, cache, &location.stream_id(), &focus).await?;
    transaction.commit().await.map_err(StoreError::from)?;
    Ok(Some(loaded.state))
}

/// Loads the state of the stream holding `connection_id`, with its whole
/// history, for the connection's view (when each agent was bound).
pub async fn load_connection_stream(
    app: &AppState,
    connection_id: ConnectionId,
) -> Result<Option<(OwnerService, Vec<RecordedEvent>)>, ApiError> {
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    let Some(location) = ConnectionLocation::find(&client, connection_id).await? else {
        return Ok(None);
    };
    let (history, _) =
        EventLog::read_stream(&client, &StreamId::owner_service(&location.owner, &location.service)).await?;
    Ok(Some((fold(&history)?, history)))
}
