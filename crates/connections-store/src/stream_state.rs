//! The command side's keyed copy of each stream's state (migration V15):
//! what a fold of the stream gives, one row per connection and per binding,
//! written in the transaction that appends the events changing it. A
//! command loads only the entries its [`Focus`] names, so its cost does not
//! grow with the stream's history or with the agents bound elsewhere in it.
//!
//! The log stays the source of truth. Every load also reads the stream's
//! version from the log, in the same statement (one snapshot); a copy whose
//! version differs (a stream written before V15, or appended to by
//! something that does not keep the copy) is rebuilt from the log under the
//! stream's lock before the command decides on it.

use connections_domain::{
    AgentId, Binding, Connection, ConnectionId, ConnectionName, ConnectionStatus, CredentialKind, Focus, OwnerService,
    SkillName, StateChanges, AGENT_SAMPLE,
};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::codec::{binding_source_from_name, binding_source_name, decode};
use crate::error::StoreError;
use crate::locator::LockedStream;
use crate::log::{EventLog, RecordedEvent, StreamId, StreamVersion};
use crate::state_cache::StateCache;

/// The focused entries of one stream's copy, with the log's head of the
/// stream, in one statement (`connections_load_state`, migration V16). `$1`
/// stream id, `$2` named connections, `$3` focused agents, `$4` the
/// connection all of whose agents are read (or NULL), `$5` how many agents
/// of each named connection to carry.
const LOAD: &str = "SELECT * FROM connections_load_state($1, $2, $3, $4, $5)";

/// Writes a command's changes (`connections_save_state`, migration V16):
/// `$1` stream id, `$2` events appended (or, with `$3`, the absolute version
/// and default of a rebuild), `$4` whether the default changed and `$5` to
/// what, `$6`/`$7` connections, `$8` agents unbound, `$9`-`$11` agents bound.
const SAVE: &str = "SELECT connections_save_state($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// The log's head of one stream: its version and last position.
const HEAD: &str = "SELECT stream_version, position FROM events WHERE stream_id = $1 \
    ORDER BY stream_version DESC LIMIT 1";

/// A stream whose state is not cached is read whole from the log, and its
/// state then cached, when it holds at most this many events; a longer one
/// is loaded from the keyed copy (its cost must not grow with history).
pub const READ_WHOLE_UP_TO: u64 = 64;

/// A stream's state as a command decides on it.
#[derive(Debug)]
pub struct Loaded {
    /// The focused part of the state (see [`OwnerService::restricted_to`]).
    pub state: OwnerService,
    /// The stream's version: the events the state folds.
    pub version: StreamVersion,
    /// The position of the stream's last event (0 for an empty stream).
    pub last_position: i64,
    /// Whether the copy had to be rebuilt from the log first.
    pub rebuilt: bool,
    /// The whole state, when the load had it (for [`StateCache`]).
    pub whole: Option<OwnerService>,
    /// Where the state came from.
    pub source: LoadSource,
}

/// Where [`StreamState::load_cached`] found a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// This instance's cache, at the log's version.
    Cache,
    /// The whole (short) stream, read from the log and folded.
    Log,
    /// The keyed copy (rebuilt first if stale).
    Copy,
}

impl LoadSource {
    /// The name metrics use.
    pub fn name(self) -> &'static str {
        match self {
            LoadSource::Cache => "cache",
            LoadSource::Log => "log",
            LoadSource::Copy => "copy",
        }
    }
}

/// Whether a load keeps in the cache the whole state it read from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Only in a transaction that has written nothing to the stream: what
    /// it reads is committed.
    Yes,
    /// The transaction may hold writes that are not committed.
    No,
}

/// Loads and writes the keyed copy of streams' states.
pub struct StreamState;

impl StreamState {
    /// The part of `stream_id`'s state that `focus` names, as a fold of the
    /// stream would give it. A stale copy is rebuilt first, which takes the
    /// stream's lock.
    pub async fn load(client: &impl GenericClient, stream_id: &StreamId, focus: &Focus) -> Result<Loaded, StoreError> {
        let loaded = Self::load_copy(client, stream_id, focus).await?;
        connections_metrics::STATE_LOADS.inc(&[loaded.source.name()]);
        Ok(loaded)
    }

    /// Like [`StreamState::load`], first asking `cache` for the whole state
    /// at the log's version of the stream (one index entry of the log). On
    /// a miss, a short stream is read whole and its state cached; a longer
    /// one is loaded from the keyed copy, and marked long in the cache, so
    /// that its next loads go to the copy at once. Without the stream's
    /// lock (a resolve's first attempt), the append's version check catches
    /// a writer in between; a command holds the lock and calls
    /// [`StreamState::load_locked`]. `client` must not hold writes to the
    /// stream that are not committed (a resolve's transaction before it
    /// writes): the state read is kept as the log's.
    pub async fn load_cached(
        client: &impl GenericClient,
        cache: &StateCache,
        stream_id: &StreamId,
        focus: &Focus,
    ) -> Result<Loaded, StoreError> {
        Self::load_through(client, cache, stream_id, focus, None, Keep::Yes).await
    }

    /// Like [`StreamState::load_cached`], for a transaction holding the
    /// stream's lock that has read its head under it (`locked`): the state
    /// at that version, without asking the log for it again.
    ///
    /// A state read from the log here is not kept in `cache`: the
    /// transaction may be a commit group's, whose other members' appends it
    /// reads before they commit, and the group may roll back. Kept, such a
    /// state would stand for a version that the log gives other events
    /// (a revoke), and a command deciding on it would undo them. The caller
    /// keeps the state its commit makes, once that commit succeeded.
    pub async fn load_locked(
        client: &impl GenericClient,
        cache: &StateCache,
        locked: &LockedStream,
        focus: &Focus,
    ) -> Result<Loaded, StoreError> {
        let stream_id = locked.location.stream_id();
        Self::load_through(client, cache, &stream_id, focus, Some(locked.version), Keep::No).await
    }

    /// Both loads, counted once in `connections_state_loads_total`:
    /// `version` is the log's version of the stream when the caller has just
    /// read it, `None` to read it here (unless the stream is marked long).
    async fn load_through(
        client: &impl GenericClient,
        cache: &StateCache,
        stream_id: &StreamId,
        focus: &Focus,
        version: Option<StreamVersion>,
        keep: Keep,
    ) -> Result<Loaded, StoreError> {
        let loaded = Self::load_uncounted(client, cache, stream_id, focus, version, keep).await?;
        connections_metrics::STATE_LOADS.inc(&[loaded.source.name()]);
        Ok(loaded)
    }

    async fn load_uncounted(
        client: &impl GenericClient,
        cache: &StateCache,
        stream_id: &StreamId,
        focus: &Focus,
        version: Option<StreamVersion>,
        keep: Keep,
    ) -> Result<Loaded, StoreError> {
        if cache.is_long(stream_id) {
            return Self::load_copy(client, stream_id, focus).await;
        }
        let version = match version {
            Some(version) => version,
            None => Self::head(client, stream_id).await?.0,
        };
        if let Some((whole, last_position)) = cache.get(stream_id, version) {
            let state = whole.restricted_to(focus);
            return Ok(Loaded {
                state,
                version,
                last_position,
                rebuilt: false,
                whole: Some(whole),
                source: LoadSource::Cache,
            });
        }
        if version.0 > READ_WHOLE_UP_TO {
            cache.mark_long(stream_id);
            return Self::load_copy(client, stream_id, focus).await;
        }
        // Read again rather than trusting `version`: a resolve that binds
        // the default appends without the stream's lock.
        let (history, version) = EventLog::read_stream(client, stream_id).await?;
        let whole = fold(&history)?;
        let last_position = history.last().map_or(0, |e| e.position);
        if keep == Keep::Yes {
            cache.remember(stream_id, version, last_position, &whole);
        }
        let state = whole.restricted_to(focus);
        Ok(Loaded { state, version, last_position, rebuilt: false, whole: Some(whole), source: LoadSource::Log })
    }

    /// The log's version of `stream_id` and the position of its last event
    /// (0 and 0 for a stream that does not exist yet): one index entry.
    pub async fn head(client: &impl GenericClient, stream_id: &StreamId) -> Result<(StreamVersion, i64), StoreError> {
        let statement = client.prepare_cached(HEAD).await?;
        let head = client.query_opt(&statement, &[&stream_id.as_str()]).await?;
        Ok(head.map_or((StreamVersion(0), 0), |row| (StreamVersion(row.get::<_, i64>(0) as u64), row.get(1))))
    }

    /// The focused part of the keyed copy, rebuilt first if stale.
    async fn load_copy(client: &impl GenericClient, stream_id: &StreamId, focus: &Focus) -> Result<Loaded, StoreError> {
        let statement = client.prepare_cached(LOAD).await?;
        let named: Vec<Uuid> = focus.connections.iter().map(ConnectionId::as_uuid).collect();
        let agents: Vec<&str> = focus.agents.iter().map(AgentId::as_str).collect();
        let every = focus.every_agent_of.map(|c| c.as_uuid());
        let sample = AGENT_SAMPLE as i64;
        let row = client.query_one(&statement, &[&stream_id.as_str(), &named, &agents, &every, &sample]).await?;
        let head_version: Option<i64> = row.get(0);
        let logged: i64 = row.get(2);
        let last_position: i64 = row.get(3);
        if head_version.unwrap_or(0) != logged {
            let (whole, version, last_position) = Self::rebuild(client, stream_id).await?;
            let state = whole.restricted_to(focus);
            return Ok(Loaded {
                state,
                version,
                last_position,
                rebuilt: true,
                whole: Some(whole),
                source: LoadSource::Copy,
            });
        }
        let mut state = OwnerService::default();
        if head_version.is_some() {
            state.owner = Some(stream_id.owner().clone());
            state.service = Some(stream_id.service().clone());
            state.default = row.get::<_, Option<Uuid>>(1).map(ConnectionId::from_uuid);
            for stored in array(row.get(4))? {
                let connection = stored_connection(stored)?;
                state.connections.insert(connection.connection_id, connection);
            }
            for stored in array(row.get(5))? {
                let (agent, binding) = stored_binding(stored)?;
                state.bindings.insert(agent, binding);
            }
        }
        let version = StreamVersion(logged as u64);
        Ok(Loaded { state, version, last_position, rebuilt: false, whole: None, source: LoadSource::Copy })
    }

    /// Prepares (caches on this connection) the statements of
    /// [`StreamState::save`] and [`EventLog::append`]. Call it before
    /// pipelining the two, append first: once both are prepared, each is
    /// sent when first polled, so every writer of a stream inserts its
    /// events before it updates the stream's head row, and two writers
    /// racing on one stream (a command and a resolve that does not take the
    /// stream's lock) cannot deadlock.
    pub async fn prepare(client: &impl GenericClient) -> Result<(), StoreError> {
        let save = async { client.prepare_cached(SAVE).await.map_err(StoreError::from) };
        futures_util::future::try_join(save, EventLog::prepare_append(client)).await?;
        Ok(())
    }

    /// Writes what a command changed, in the transaction that appends its
    /// `appended` events (which advance the copy's version) after version
    /// `after` (`None`: a writer that did not read the stream). Call it only
    /// when events are appended, after [`StreamState::prepare`].
    ///
    /// A stream that is still short after the append is not written: only
    /// a stream longer than [`READ_WHOLE_UP_TO`] is ever loaded from its
    /// copy. The copy's version then falls behind the log's for good (it
    /// only moves by the events written to it), so the first load from the
    /// copy once the stream is long rebuilds it, once; every write after
    /// that keeps it.
    pub async fn save(
        client: &impl GenericClient,
        stream_id: &StreamId,
        after: Option<StreamVersion>,
        appended: usize,
        changes: &StateChanges,
    ) -> Result<(), StoreError> {
        if !Self::keeps_copy(after, appended) {
            return Ok(());
        }
        Self::write(client, stream_id, appended as i64, false, changes).await
    }

    /// Whether a write of `appended` events after version `after` must
    /// write the keyed copy: when the stream is then long, or its length is
    /// not known. Such a write holds the stream's lock before it appends
    /// (see `EventLog::lock_stream`).
    pub fn keeps_copy(after: Option<StreamVersion>, appended: usize) -> bool {
        after.is_none_or(|after| after.0 + appended as u64 > READ_WHOLE_UP_TO)
    }

    /// Replaces the copy of `stream_id` with a fold of the log, under the
    /// stream's lock (taken here; a command may already hold it). Returns
    /// the whole state, its version and the stream's last position.
    async fn rebuild(
        client: &impl GenericClient,
        stream_id: &StreamId,
    ) -> Result<(OwnerService, StreamVersion, i64), StoreError> {
        EventLog::lock_stream(client, stream_id).await?;
        let (history, version) = EventLog::read_stream(client, stream_id).await?;
        let whole = fold(&history)?;
        client
            .execute(
                "WITH c AS (DELETE FROM stream_connections WHERE stream_id = $1) \
                 DELETE FROM stream_bindings WHERE stream_id = $1",
                &[&stream_id.as_str()],
            )
            .await?;
        let changes = StateChanges::between(&OwnerService::default(), &whole);
        Self::write(client, stream_id, version.0 as i64, true, &changes).await?;
        tracing::info!(stream = %stream_id, events = version.0, "rebuilt a stream's state from the log");
        Ok((whole, version, history.last().map_or(0, |e| e.position)))
    }

    async fn write(
        client: &impl GenericClient,
        stream_id: &StreamId,
        version: i64,
        absolute: bool,
        changes: &StateChanges,
    ) -> Result<(), StoreError> {
        let statement = client.prepare_cached(SAVE).await?;
        let default_changed = changes.default.is_some();
        let default = changes.default.flatten().map(|c| c.as_uuid());
        let connection_ids: Vec<Uuid> = changes.connections.iter().map(|c| c.connection_id.as_uuid()).collect();
        let connection_states: Vec<Value> = changes.connections.iter().map(connection_value).collect();
        let unbound: Vec<&str> = changes.unbound.iter().map(AgentId::as_str).collect();
        let bound_agents: Vec<&str> = changes.bound.iter().map(|(agent, _)| agent.as_str()).collect();
        let bound_connections: Vec<Uuid> = changes.bound.iter().map(|(_, b)| b.connection_id.as_uuid()).collect();
        let bound_sources: Vec<&str> = changes.bound.iter().map(|(_, b)| binding_source_name(b.source)).collect();
        client
            .execute(
                &statement,
                &[
                    &stream_id.as_str(),
                    &version,
                    &absolute,
                    &default_changed,
                    &default,
                    &connection_ids,
                    &connection_states,
                    &unbound,
                    &bound_agents,
                    &bound_connections,
                    &bound_sources,
                ],
            )
            .await?;
        Ok(())
    }
}

/// Folds a stream's recorded events into state.
pub fn fold(history: &[RecordedEvent]) -> Result<OwnerService, StoreError> {
    let mut state = OwnerService::default();
    for recorded in history {
        state.apply(&decode(&recorded.event_type, recorded.schema_version, &recorded.data)?);
    }
    Ok(state)
}

/// A connection's stored form (the domain's types stay free of serde's
/// representation, as in [`crate::codec`]).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredConnectionV1 {
    connection_id: ConnectionId,
    name: ConnectionName,
    credential_kind: CredentialKind,
    credential_version: u32,
    skill: Option<SkillName>,
    revoked: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    affected_agents: Vec<AgentId>,
    replaced_by: Option<ConnectionId>,
    replaces: Option<ConnectionId>,
    needs_attention: bool,
}

fn connection_value(connection: &Connection) -> Value {
    let (revoked, affected_agents, replaced_by) = match &connection.status {
        ConnectionStatus::Active => (false, Vec::new(), None),
        ConnectionStatus::Revoked { affected_agents, replaced_by } => (true, affected_agents.clone(), *replaced_by),
    };
    serde_json::to_value(StoredConnectionV1 {
        connection_id: connection.connection_id,
        name: connection.name.clone(),
        credential_kind: connection.credential_kind,
        credential_version: connection.credential_version,
        skill: connection.skill.clone(),
        revoked,
        affected_agents,
        replaced_by,
        replaces: connection.replaces,
        needs_attention: connection.needs_attention,
    })
    .expect("a connection always serializes")
}

fn stored_connection(value: Value) -> Result<Connection, StoreError> {
    let stored: StoredConnectionV1 =
        serde_json::from_value(value).map_err(|e| StoreError::Corrupt(format!("a stored connection state: {e}")))?;
    Ok(Connection {
        connection_id: stored.connection_id,
        name: stored.name,
        credential_kind: stored.credential_kind,
        credential_version: stored.credential_version,
        skill: stored.skill,
        status: match stored.revoked {
            false => ConnectionStatus::Active,
            true => {
                ConnectionStatus::Revoked { affected_agents: stored.affected_agents, replaced_by: stored.replaced_by }
            }
        },
        replaces: stored.replaces,
        needs_attention: stored.needs_attention,
    })
}

fn stored_binding(value: Value) -> Result<(AgentId, Binding), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("a stored binding: {value}"));
    let (agent, connection, source) = match value.as_array().map(Vec::as_slice) {
        Some([Value::String(agent), Value::String(connection), Value::String(source)]) => (agent, connection, source),
        _ => return Err(corrupt()),
    };
    let agent = AgentId::parse(agent.clone()).map_err(|_| corrupt())?;
    let connection_id = ConnectionId::parse(connection).map_err(|_| corrupt())?;
    let source = binding_source_from_name(source).ok_or_else(corrupt)?;
    Ok((agent, Binding { connection_id, source }))
}

fn array(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(StoreError::Corrupt(format!("expected an array, got {other}"))),
    }
}
