//! The keyed copy of a stream's state: what a command loads for its focus is
//! what a fold of the whole stream restricts to, after any commands; a copy
//! that missed appends is rebuilt from the log; a cached state is the fold
//! of the log at its version, and is used only at that version.

use connections_domain::*;
use connections_store::codec::new_events;
use connections_store::{
    fold, ConnectionLocation, EventLog, LoadSource, Loaded, LockedStream, StateCache, StreamAppend, StreamId,
    StreamState, StreamVersion, READ_WHOLE_UP_TO,
};
use connections_testkit::TestDatabase;

use super::metadata;

fn conn(n: u64) -> ConnectionId {
    ConnectionId::from_uuid(uuid::Uuid::from_u128(u128::from(n) + 1))
}

fn agent(n: u64) -> AgentId {
    AgentId::parse(format!("agent-{n:03}")).expect("agent id")
}

/// Runs `command` as the API does: load its focus under the stream's lock,
/// decide, append and save the changes in one transaction. With `keep_copy`
/// false it appends only (a writer that does not keep the copy).
async fn run(db: &TestDatabase, stream: &StreamId, command: Command, keep_copy: bool) -> bool {
    let mut client = db.database.pool().get().await.expect("pool connection");
    let transaction = client.transaction().await.expect("begin");
    EventLog::lock_stream(&transaction, stream).await.expect("lock");
    let loaded = StreamState::load(&transaction, stream, &command.focus()).await.expect("load");
    let request = Request { actor: stream.owner().clone(), command };
    let Ok(events) = decide(&loaded.state, &request) else {
        return false;
    };
    if events.is_empty() {
        return true;
    }
    // As a writer that does not know the stream's length: the copy is kept
    // however short the stream.
    let save = keep_copy.then_some(None);
    append_and_save(&transaction, stream, &loaded, &events, save).await;
    transaction.commit().await.expect("commit");
    true
}

/// Appends `events` after the loaded version and, unless `save` is `None`,
/// saves their changes as a writer that read the stream at `save`'s version
/// (`Some(None)`: a writer that did not). Returns the events' positions.
async fn append_and_save(
    transaction: &impl deadpool_postgres::GenericClient,
    stream: &StreamId,
    loaded: &Loaded,
    events: &[Event],
    save: Option<Option<StreamVersion>>,
) -> Vec<i64> {
    let append = [StreamAppend {
        stream_id: stream.clone(),
        expected_version: Some(loaded.version),
        events: new_events(events),
    }];
    StreamState::prepare(transaction).await.expect("prepare");
    let positions = EventLog::append(transaction, &append, &metadata()).await.expect("append");
    if let Some(after) = save {
        let mut state = loaded.state.clone();
        events.iter().for_each(|event| state.apply(event));
        let changes = StateChanges::between(&loaded.state, &state);
        StreamState::save(transaction, stream, after, events.len(), &changes).await.expect("save");
    }
    positions
}

/// Loads `focus` and compares it with the fold of the whole stream.
async fn assert_loads_as_fold(db: &TestDatabase, stream: &StreamId, focus: &Focus, step: &str) {
    let client = db.database.pool().get().await.expect("pool connection");
    let (history, version) = EventLog::read_stream(&client, stream).await.expect("read");
    let whole = fold(&history).expect("fold");
    let loaded = StreamState::load(&client, stream, focus).await.expect("load");
    assert!(!loaded.rebuilt, "{step}: the copy is kept with every command");
    assert_eq!(loaded.version, version, "{step}");
    assert_eq!(loaded.last_position, history.last().map_or(0, |e| e.position), "{step}");
    assert_eq!(loaded.state, whole.restricted_to(focus), "{step}: {focus:?}");
}

fn command(step: u64) -> Command {
    // A fixed pseudo-random walk over 4 connections and 6 agents.
    let r = step.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) >> 33;
    let (c, a) = (conn(r % 4), agent((r / 4) % 6));
    match (r / 24) % 9 {
        0 | 1 => Command::CreateConnection {
            connection_id: c,
            service: ServiceName::parse("svc").expect("service"),
            name: ConnectionName::parse("n").expect("name"),
            credential_kind: CredentialKind::ApiKey,
            agent_id: Some(a),
            skill: None,
        },
        2 | 3 => Command::AssignToAgent { connection_id: c, agent_id: a },
        4 => Command::UnassignFromAgent { connection_id: c, agent_id: a },
        5 => Command::SetDefault { connection_id: c },
        6 => Command::ResolveForAgent { agent_id: a },
        7 => Command::RotateCredential { connection_id: c, credential_kind: CredentialKind::Basic },
        _ => match r % 3 {
            0 => Command::RevokeConnection { connection_id: c },
            1 => Command::ReplaceConnection {
                connection_id: c,
                new_connection_id: conn(100 + step),
                name: None,
                credential_kind: CredentialKind::ApiKey,
            },
            _ => Command::ClearDefault,
        },
    }
}

#[tokio::test]
async fn a_command_loads_what_a_fold_of_the_whole_stream_restricts_to() {
    let db = TestDatabase::new().await;
    let owner = OwnerId::parse("alice").expect("owner");
    let stream = StreamId::owner_service(&owner, &ServiceName::parse("svc").expect("service"));
    let mut accepted = 0;
    for step in 0..120 {
        let command = command(step);
        accepted += usize::from(run(&db, &stream, command.clone(), true).await);
        assert_loads_as_fold(&db, &stream, &command.focus(), &format!("step {step}")).await;
    }
    assert!(accepted > 30, "the walk exercises the stream ({accepted} of 120 accepted)");
    // A connection with more agents than an answer lists: the sample.
    run(&db, &stream, command(0), true).await;
    let busy = conn(7);
    let create = Command::CreateConnection {
        connection_id: busy,
        service: ServiceName::parse("svc").expect("service"),
        name: ConnectionName::parse("busy").expect("name"),
        credential_kind: CredentialKind::ApiKey,
        agent_id: None,
        skill: None,
    };
    assert!(run(&db, &stream, create, true).await);
    for n in 200..360 {
        assert!(run(&db, &stream, Command::AssignToAgent { connection_id: busy, agent_id: agent(n) }, true).await);
    }
    for focus in [
        Command::SetDefault { connection_id: busy }.focus(),
        Command::AssignToAgent { connection_id: busy, agent_id: agent(999) }.focus(),
        Command::RevokeConnection { connection_id: busy }.focus(),
        Command::ResolveForAgent { agent_id: agent(300) }.focus(),
    ] {
        assert_loads_as_fold(&db, &stream, &focus, "busy connection").await;
    }
}

#[tokio::test]
async fn a_copy_that_missed_appends_is_rebuilt_from_the_log() {
    let db = TestDatabase::new().await;
    let owner = OwnerId::parse("alice").expect("owner");
    let stream = StreamId::owner_service(&owner, &ServiceName::parse("svc").expect("service"));
    // Written as before the copy existed (or by a writer that does not keep it).
    for step in 0..40 {
        run(&db, &stream, command(step), false).await;
    }
    let focus = Command::RevokeConnection { connection_id: conn(1) }.focus();
    let client = db.database.pool().get().await.expect("pool connection");
    let (history, version) = EventLog::read_stream(&client, &stream).await.expect("read");
    assert!(version.0 > 10, "the stream has a history ({version:?})");
    let loaded = StreamState::load(&client, &stream, &focus).await.expect("load");
    assert!(loaded.rebuilt, "a stale copy is rebuilt");
    assert_eq!(loaded.version, version);
    assert_eq!(loaded.state, fold(&history).expect("fold").restricted_to(&focus));
    // Once rebuilt, it is kept again.
    for step in 40..60 {
        run(&db, &stream, command(step), true).await;
        assert_loads_as_fold(&db, &stream, &command(step).focus(), &format!("step {step}")).await;
    }
}

/// Like [`run`], through `cache` as the API's commands do: the whole state
/// after the command is remembered once it has committed. Returns whether
/// the command was accepted, where its state came from, and whether the
/// copy was rebuilt for it.
async fn run_cached(
    db: &TestDatabase,
    cache: &StateCache,
    stream: &StreamId,
    command: Command,
) -> (bool, LoadSource, bool) {
    let mut client = db.database.pool().get().await.expect("pool connection");
    let transaction = client.transaction().await.expect("begin");
    EventLog::lock_stream(&transaction, stream).await.expect("lock");
    let loaded = StreamState::load_cached(&transaction, cache, stream, &command.focus()).await.expect("load");
    let request = Request { actor: stream.owner().clone(), command };
    let Ok(events) = decide(&loaded.state, &request) else {
        return (false, loaded.source, loaded.rebuilt);
    };
    if events.is_empty() {
        return (true, loaded.source, loaded.rebuilt);
    }
    let positions = append_and_save(&transaction, stream, &loaded, &events, Some(Some(loaded.version))).await;
    transaction.commit().await.expect("commit");
    // A long stream loaded from its copy has no whole state to remember.
    if let Some(mut whole) = loaded.whole {
        events.iter().for_each(|event| whole.apply(event));
        let version = StreamVersion(loaded.version.0 + events.len() as u64);
        cache.remember(stream, version, *positions.last().expect("appended"), &whole);
    }
    (true, loaded.source, loaded.rebuilt)
}

#[tokio::test]
async fn a_cached_state_is_the_fold_of_the_log_and_is_used_only_at_its_version() {
    let db = TestDatabase::new().await;
    let cache = StateCache::default();
    let owner = OwnerId::parse("alice").expect("owner");
    let stream = StreamId::owner_service(&owner, &ServiceName::parse("svc").expect("service"));
    let (mut hits, mut after_other_writer) = (0, 0);
    let mut other_wrote = false;
    for step in 0..120 {
        let command = command(step);
        // Every fifth command comes from another instance (or a resolve):
        // it appends without this cache.
        if step % 5 == 4 {
            let before = version_of(&db, &stream).await;
            run(&db, &stream, command, true).await;
            other_wrote |= version_of(&db, &stream).await != before;
            continue;
        }
        let (_, source, _) = run_cached(&db, &cache, &stream, command.clone()).await;
        if other_wrote {
            assert_ne!(source, LoadSource::Cache, "step {step}: the log moved since the cached version");
            after_other_writer += 1;
            other_wrote = false;
        }
        hits += usize::from(source == LoadSource::Cache);
        // What the next command would load is the log's fold.
        let client = db.database.pool().get().await.expect("pool connection");
        let (history, version) = EventLog::read_stream(&client, &stream).await.expect("read");
        let whole = fold(&history).expect("fold");
        let focus = command.focus();
        let loaded = StreamState::load_cached(&client, &cache, &stream, &focus).await.expect("load");
        assert_eq!(loaded.version, version, "step {step}");
        assert_eq!(loaded.last_position, history.last().map_or(0, |e| e.position), "step {step}");
        assert_eq!(loaded.state, whole.restricted_to(&focus), "step {step}");
        assert_eq!(loaded.whole.as_ref(), Some(&whole), "step {step}: the whole state is the fold");
    }
    assert!(hits > 40, "commands after this instance's own find the state cached ({hits} of 96)");
    assert!(after_other_writer >= 3, "the walk has other writers move the log ({after_other_writer})");
}

async fn version_of(db: &TestDatabase, stream: &StreamId) -> StreamVersion {
    let client = db.database.pool().get().await.expect("pool connection");
    EventLog::read_stream(&client, stream).await.expect("read").1
}

#[tokio::test]
async fn a_short_streams_copy_is_not_written_and_a_long_ones_is_rebuilt_once_then_kept() {
    let db = TestDatabase::new().await;
    let cache = StateCache::default();
    let owner = OwnerId::parse("alice").expect("owner");
    let stream = StreamId::owner_service(&owner, &ServiceName::parse("svc").expect("service"));
    let create = Command::CreateConnection {
        connection_id: conn(1),
        service: ServiceName::parse("svc").expect("service"),
        name: ConnectionName::parse("n").expect("name"),
        credential_kind: CredentialKind::ApiKey,
        agent_id: None,
        skill: None,
    };
    let assign = |n: u64| Command::AssignToAgent { connection_id: conn(1), agent_id: agent(n) };
    assert!(run_cached(&db, &cache, &stream, create).await.0);
    let short = READ_WHOLE_UP_TO - 1;
    for n in 0..short {
        assert!(run_cached(&db, &cache, &stream, assign(n)).await.0);
    }
    let client = db.database.pool().get().await.expect("pool connection");
    let copied = "SELECT (SELECT count(*) FROM stream_heads WHERE stream_id = $1) \
                  + (SELECT count(*) FROM stream_bindings WHERE stream_id = $1)";
    let rows: i64 = client.query_one(copied, &[&stream.as_str()]).await.expect("count").get(0);
    assert_eq!(rows, 0, "a short stream's writes leave its copy alone");
    // Past the threshold: once the state is too large to cache, the first
    // load from the copy finds it behind the log and rebuilds it, once.
    let mut rebuilds = 0;
    for n in short..short + 20 {
        let (accepted, source, rebuilt) = run_cached(&db, &cache, &stream, assign(n)).await;
        assert!(accepted);
        assert!(source == LoadSource::Copy || !rebuilt);
        rebuilds += usize::from(rebuilt);
    }
    assert_eq!(rebuilds, 1, "the copy of a stream that became long is rebuilt once");
    // From then on every write keeps it.
    for n in short + 20..short + 30 {
        assert!(run_cached(&db, &cache, &stream, assign(n)).await.0);
    }
    let focus = Command::RevokeConnection { connection_id: conn(1) }.focus();
    let (history, version) = EventLog::read_stream(&client, &stream).await.expect("read");
    assert!(version.0 > READ_WHOLE_UP_TO, "the stream is long now ({version:?})");
    let loaded = StreamState::load_cached(&client, &StateCache::default(), &stream, &focus).await.expect("load");
    assert_eq!((loaded.source, loaded.rebuilt), (LoadSource::Copy, false), "kept since");
    assert_eq!(loaded.state, fold(&history).expect("fold").restricted_to(&focus));
}

#[tokio::test]
async fn a_state_read_under_writes_that_roll_back_is_never_cached() {
    // A commit group's transaction holds its members' appends before they
    // commit: a member that reads the stream after another's append must
    // not keep what it read, or a rollback leaves the cache a state at a
    // version the log then gives other events.
    let db = TestDatabase::new().await;
    let cache = StateCache::default();
    let owner = OwnerId::parse("alice").expect("owner");
    let service = ServiceName::parse("svc").expect("service");
    let stream = StreamId::owner_service(&owner, &service);
    let location = ConnectionLocation { owner, service: service.clone() };
    let create = Command::CreateConnection {
        connection_id: conn(1),
        service,
        name: ConnectionName::parse("n").expect("name"),
        credential_kind: CredentialKind::ApiKey,
        agent_id: None,
        skill: None,
    };
    assert!(run_cached(&db, &cache, &stream, create).await.0);

    let mut client = db.database.pool().get().await.expect("pool connection");
    let group = client.transaction().await.expect("begin");
    // One member assigns an agent...
    let assign = Command::AssignToAgent { connection_id: conn(1), agent_id: agent(1) };
    let locked = LockedStream::lock(&group, location.clone()).await.expect("lock");
    let loaded = StreamState::load_locked(&group, &cache, &locked, &assign.focus()).await.expect("load");
    let request = Request { actor: stream.owner().clone(), command: assign.clone() };
    let events = decide(&loaded.state, &request).expect("assign decided");
    append_and_save(&group, &stream, &loaded, &events, Some(Some(loaded.version))).await;
    // ...and another reads the stream after it, at the new version.
    let locked = LockedStream::lock(&group, location).await.expect("lock");
    assert_eq!(locked.version, StreamVersion(2), "the other member sees the uncommitted append");
    let loaded = StreamState::load_locked(&group, &cache, &locked, &assign.focus()).await.expect("load");
    assert_eq!(loaded.source, LoadSource::Log, "not cached at the uncommitted version");
    group.rollback().await.expect("rollback");
    assert!(cache.get(&stream, StreamVersion(2)).is_none(), "what the rolled-back group read is not kept");

    // The log's version 2 is a revoke now: what a command loads says so.
    let revoke = Command::RevokeConnection { connection_id: conn(1) };
    assert!(run_cached(&db, &cache, &stream, revoke).await.0);
    let client = db.database.pool().get().await.expect("pool connection");
    let loaded = StreamState::load_cached(&client, &cache, &stream, &assign.focus()).await.expect("load");
    assert_eq!(loaded.version, StreamVersion(2));
    let (history, _) = EventLog::read_stream(&client, &stream).await.expect("read");
    assert_eq!(loaded.state, fold(&history).expect("fold").restricted_to(&assign.focus()), "the revoked state");
    let request = Request { actor: stream.owner().clone(), command: assign };
    assert!(decide(&loaded.state, &request).is_err(), "an assign after the revoke is refused");
}
