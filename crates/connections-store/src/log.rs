//! The append-only event log: appends with optimistic concurrency, stream
//! reads, and the gap-safe reader of the global order.

use chrono::{DateTime, Utc};
use connections_domain::{OwnerId, ServiceName};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::chain::{self, ChainHash};
use crate::error::StoreError;

/// A stream's id: one owner's connections for one service (the domain's
/// consistency boundary, and the unit of optimistic concurrency). Stored as
/// `owner-service/<owner>/<service>`; neither id can contain `/`, so the
/// form is unambiguous and [`StreamId::parse`] is its one parse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamId {
    owner: OwnerId,
    service: ServiceName,
    stored: String,
}

/// The start of every stream id's stored form.
const STREAM_PREFIX: &str = "owner-service/";

impl StreamId {
    /// The stream of `owner`'s connections for `service`.
    pub fn owner_service(owner: &OwnerId, service: &ServiceName) -> Self {
        Self { owner: owner.clone(), service: service.clone(), stored: format!("{STREAM_PREFIX}{owner}/{service}") }
    }

    /// A stream id from its stored form; `None` if it is not one (a row
    /// written by something else).
    pub fn parse(stored: &str) -> Option<Self> {
        let (owner, service) = Self::split(stored)?;
        let owner = OwnerId::parse(owner.to_owned()).ok()?;
        let service = ServiceName::parse(service.to_owned()).ok()?;
        // Parsing keeps its input as it is: the stored form is `stored`.
        Some(Self { owner, service, stored: stored.to_owned() })
    }

    /// The owner and the service.
    pub fn into_parts(self) -> (OwnerId, ServiceName) {
        (self.owner, self.service)
    }

    /// The owner and service parts of a stored id, unchecked (for a reader
    /// that only compares them; [`StreamId::parse`] checks them).
    pub fn split(stored: &str) -> Option<(&str, &str)> {
        stored.strip_prefix(STREAM_PREFIX)?.split_once('/')
    }

    /// The `LIKE` pattern of every stream of `owner`.
    pub fn owner_pattern(owner: &OwnerId) -> String {
        format!("{STREAM_PREFIX}{owner}/%")
    }

    /// The owner.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }

    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.stored
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.stored)
    }
}

/// How many events a stream holds; 0 for a stream that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamVersion(pub u64);

/// An event about to be appended, already in its stored form.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its id (UUIDv7).
    pub event_id: Uuid,
    /// Its stable type name, e.g. `connection_revoked`.
    pub event_type: &'static str,
    /// The version of its data's schema.
    pub schema_version: i32,
    /// Its data (never secret material).
    pub data: Value,
}

/// The events one command appends to one stream, with the version the
/// command decided against.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// The stream.
    pub stream_id: StreamId,
    /// The version the decision was made against; `None` appends after
    /// whatever the stream holds (for a command whose decision does not
    /// depend on the stream's state).
    pub expected_version: Option<StreamVersion>,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// Who caused an append and in answer to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The authenticated user (or system component) that issued the command.
    pub actor: String,
    /// The id of the command (one per accepted HTTP request).
    pub command_id: Uuid,
    /// The id correlating this command with the request that caused it.
    pub correlation_id: Uuid,
}

/// What a follower of the log finds after its cursor ([`EventLog::follow`]).
#[derive(Debug)]
pub struct Following {
    /// The events it may take, in log order.
    pub events: Vec<RecordedEvent>,
    /// Whether committed events after these wait behind an older running
    /// transaction: the follower should look again soon rather than wait
    /// for the next commit.
    pub held_back: bool,
}

/// An event as stored (and, serialized, as an audit export carries it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Its position: unique, increasing within a transaction.
    pub position: i64,
    /// The transaction that appended it (first half of the global order).
    pub transaction_id: u64,
    /// Its id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: String,
    /// Its version within the stream (1-based).
    pub stream_version: u64,
    /// Its stable type name.
    pub event_type: String,
    /// The version of its data's schema.
    pub schema_version: i32,
    /// Its data.
    pub data: Value,
    /// Its metadata (actor, command id, correlation id).
    pub metadata: Value,
    /// When the statement that appended it started (`statement_timestamp()`).
    pub recorded_at: DateTime<Utc>,
    /// The hash of the stream's previous event (zeros for the first); `None`
    /// only for a row written before chaining and not yet sealed.
    pub previous_hash: Option<ChainHash>,
    /// This event's link in its stream's chain (see [`crate::chain`]).
    pub hash: Option<ChainHash>,
}

impl RecordedEvent {
    /// Its stream, parsed (`None` for a row not written by this service).
    pub fn stream(&self) -> Option<StreamId> {
        StreamId::parse(&self.stream_id)
    }

    /// Where a reader that has handled this event continues from.
    pub fn cursor(&self) -> LogCursor {
        LogCursor { transaction_id: self.transaction_id, position: self.position }
    }
}

/// A place in the global order: after the event (transaction_id, position).
/// The default cursor is before the first event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LogCursor {
    /// The transaction id of the last event read.
    pub transaction_id: u64,
    /// The position of the last event read.
    pub position: i64,
}

/// The columns [`recorded`] reads, in order, for `SELECT {COLUMNS} FROM events`.
// The text form of transaction_id gets its own name: ORDER BY prefers output
// column names, and sorting transaction ids as text is wrong past each power of ten.
pub const COLUMNS: &str =
    "position, transaction_id::text AS transaction_id_text, event_id, stream_id, stream_version, event_type, \
                       schema_version, data, metadata, recorded_at, previous_hash, hash";

/// One stream's append: the version check, the hash chain and the insert in
/// one call of `connections_append` (migration V8). Rows are numbered from
/// the stream's current version, and only if that is the expected version; a
/// concurrent append at the same versions hits the unique (stream_id,
/// stream_version) constraint. An append by a transaction older than the one
/// that wrote the stream's head is a conflict too (the command retries in a
/// new transaction), and so is one whose statement started before the head's
/// was recorded: within a stream, version order is also the log's global
/// order and recording-time order. Commands hold the stream's lock
/// ([`EventLog::lock_stream`]), so for them neither happens. Each row's hash
/// chains to the previous row's (see [`crate::chain`]); positions are drawn
/// from the identity sequence first so that they are hashed.
const APPEND: &str = "SELECT connections_append($1, $2, $3, $4, $5, $6, $7, $8)";

/// The same for one event, as a single statement (the function's call
/// costs about a quarter of an append's throughput); an append of several
/// events with an expected version is one of these an event. Parameters as
/// for [`APPEND`], arrays of one, and `$9`: whether the event continues the
/// same append as the stream's head, which this transaction wrote (it then
/// takes the head's `recorded_at`, so that one command's events share
/// their instant, as they do in one call of the function).
const APPEND_ONE: &str = "WITH head AS ( \
        SELECT stream_version, hash, transaction_id, recorded_at FROM events WHERE stream_id = $1 \
        ORDER BY stream_version DESC LIMIT 1), \
    previous AS ( \
        SELECT coalesce(head.stream_version, 0) AS version, \
            CASE WHEN head.stream_version IS NULL THEN decode(repeat('00', 32), 'hex') ELSE head.hash END AS hash, \
            CASE WHEN $9::bool THEN head.recorded_at ELSE statement_timestamp() END AS recorded_at \
        FROM (SELECT) AS one LEFT JOIN head ON true \
        WHERE ($2::int8 IS NULL OR coalesce(head.stream_version, 0) = $2) \
          AND (head.transaction_id IS NULL OR head.transaction_id <= pg_current_xact_id()) \
          AND (head.recorded_at IS NULL OR head.recorded_at <= statement_timestamp()) \
          AND (NOT $9::bool OR head.transaction_id = pg_current_xact_id())), \
    place AS ( \
        SELECT nextval('events_position_seq'::regclass) AS position, \
            pg_current_xact_id()::text::int8 AS transaction_id) \
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, schema_version, data, metadata, \
        recorded_at, previous_hash, hash) OVERRIDING SYSTEM VALUE \
    SELECT place.position, ($3::uuid[])[1], $1, previous.version + 1, ($4::text[])[1], ($5::int4[])[1], \
        ($6::jsonb[])[1], $7::jsonb, previous.recorded_at, previous.hash, \
        sha256(previous.hash || ($8::bytea[])[1] || int8send(previous.version + 1) || int8send(place.position) \
            || int8send(place.transaction_id) \
            || int8send((extract(epoch FROM previous.recorded_at) * 1000000)::int8)) \
    FROM previous, place \
    RETURNING position";

/// The advisory-lock class of streams (`pg_advisory_xact_lock(class, key)`;
/// this two-key space does not overlap the one-key locks of the access log).
const STREAM_LOCK_CLASS: i32 = 0x636f_6e6e; // "conn"

/// Takes a stream's writers' lock until the transaction ends: `$1` the
/// class ([`STREAM_LOCK_CLASS`]), `$2` the stream's key.
pub(crate) const LOCK_STREAM: &str = "SELECT pg_advisory_xact_lock($1, $2)";

/// The event log's operations. Appends take a transaction so that all the
/// events of a command, and the side-table writes that go with them, commit
/// or roll back together.
pub struct EventLog;

impl EventLog {
    /// Appends every stream's events, each stream checked against its
    /// expected version; call it inside a transaction so that they commit or
    /// roll back together. Returns the positions of the appended events, in
    /// order. A lost race is [`StoreError::Conflict`]; the transaction is then
    /// unusable and must be dropped.
    ///
    /// Each event costs one statement (the version check is part of the
    /// INSERT), or each stream one call of `connections_append` when it has
    /// no expected version; all of them are pipelined.
    pub async fn append(
        transaction: &impl GenericClient,
        appends: &[StreamAppend],
        metadata: &Metadata,
    ) -> Result<Vec<i64>, StoreError> {
        let metadata = serde_json::to_value(metadata).expect("metadata always serializes");
        // An append with an expected version is one statement an event,
        // pipelined: event k expects version `expected + k` and reads the
        // head its predecessor wrote (the statements run in order, in one
        // transaction). Under load that is cheaper than the PL/pgSQL
        // function, which is left for appends after whatever the stream
        // holds (no expected version: the events must still be contiguous).
        // Each statement: its stream's append, the events it inserts, the
        // version it expects, and whether it continues the one before.
        let mut calls: Vec<(&StreamAppend, &[NewEvent], Option<i64>, bool)> = Vec::new();
        for append in appends.iter().filter(|append| !append.events.is_empty()) {
            match append.expected_version {
                Some(expected) => calls.extend(append.events.iter().enumerate().map(|(k, event)| {
                    (append, std::slice::from_ref(event), Some((expected.0 + k as u64) as i64), k > 0)
                })),
                None => calls.push((append, append.events.as_slice(), None, false)),
            }
        }
        // Prepare (look up in the cache) only the statements this call uses.
        let uses = |one: bool| calls.iter().any(|(_, events, ..)| (events.len() == 1) == one);
        let single = if uses(true) { Some(transaction.prepare_cached(APPEND_ONE).await?) } else { None };
        let several = if uses(false) { Some(transaction.prepare_cached(APPEND).await?) } else { None };
        let inserts = calls.into_iter().map(|(append, events, expected, continues)| {
            let statement = if events.len() == 1 { single.as_ref() } else { several.as_ref() }.expect("prepared above");
            let metadata = &metadata;
            async move {
                let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
                let schema_versions: Vec<i32> = events.iter().map(|e| e.schema_version).collect();
                let data: Vec<&Value> = events.iter().map(|e| &e.data).collect();
                let contents: Vec<Vec<u8>> = events
                    .iter()
                    .map(|e| {
                        chain::event_content(
                            e.event_id,
                            append.stream_id.as_str(),
                            e.event_type,
                            e.schema_version,
                            &e.data,
                            metadata,
                        )
                    })
                    .collect();
                let conflict = || StoreError::Conflict { stream_id: append.stream_id.as_str().to_owned() };
                let stream_id = append.stream_id.as_str();
                let params: [&(dyn ToSql + Sync); 9] =
                    [&stream_id, &expected, &ids, &types, &schema_versions, &data, metadata, &contents, &continues];
                // The function takes the first eight.
                let params = if events.len() == 1 { &params[..] } else { &params[..8] };
                let rows = transaction
                    .query(statement, params)
                    .await
                    .map_err(StoreError::raced_on(append.stream_id.as_str()))?;
                // No row means the stream was not at the expected version.
                if rows.len() != events.len() {
                    return Err(conflict());
                }
                Ok::<_, StoreError>(rows.iter().map(|row| row.get::<_, i64>(0)).collect::<Vec<_>>())
            }
        });
        let per_stream = futures_util::future::try_join_all(inserts).await?;
        let mut positions: Vec<i64> = per_stream.into_iter().flatten().collect();
        positions.sort_unstable();
        Ok(positions)
    }

    /// Prepares (caches on this connection) the statements of
    /// [`EventLog::append`], so that an append pipelined with other
    /// statements is sent when first polled: an append and the statements
    /// after it then reach the server in that order, which keeps the order
    /// in which writers of a stream take its rows (no deadlocks).
    pub(crate) async fn prepare_append(client: &impl GenericClient) -> Result<(), StoreError> {
        futures_util::future::try_join(client.prepare_cached(APPEND_ONE), client.prepare_cached(APPEND)).await?;
        Ok(())
    }

    /// The id of the running transaction (assigned by its first write, or
    /// by this call): the first half of the cursor of every event it appends.
    pub async fn transaction_id(client: &impl GenericClient) -> Result<u64, StoreError> {
        let statement = client.prepare_cached("SELECT pg_current_xact_id()::text").await?;
        let id: String = client.query_one(&statement, &[]).await?.get(0);
        id.parse().map_err(|_| StoreError::Corrupt(format!("transaction id {id:?}")))
    }

    /// Makes this transaction wait for, and then hold until it ends, the
    /// lock of `stream_id`'s writers. A command takes it before reading the
    /// stream, so that commands on one stream queue instead of racing: the
    /// read sees the previous holder's commit, and the append follows it in
    /// version, transaction-id and time order, so it does not conflict. An
    /// append without the lock is still correct (optimistically checked).
    ///
    /// It is a prepared statement that every pooled connection prepares when
    /// it is created ([`crate::connect_pool`]), so it is sent at the first
    /// poll: join it with the transaction's next statements and the server
    /// runs them after it. (As a simple query, with the key spelled in, it
    /// was parsed and planned again on every command.) On a connection that
    /// has not prepared it, the preparation's round trip comes first and the
    /// statements joined with it may run before the lock is held: still
    /// correct (the append's version check), only not queued.
    pub async fn lock_stream(client: &impl GenericClient, stream_id: &StreamId) -> Result<(), StoreError> {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(stream_id.as_str().as_bytes());
        let key = i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let statement = client.prepare_cached(LOCK_STREAM).await?;
        client.execute(&statement, &[&STREAM_LOCK_CLASS, &key]).await?;
        Ok(())
    }

    /// Every event of one stream, in version order, and the stream's version.
    pub async fn read_stream(
        client: &impl GenericClient,
        stream_id: &StreamId,
    ) -> Result<(Vec<RecordedEvent>, StreamVersion), StoreError> {
        let statement = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version"))
            .await?;
        let rows = client.query(&statement, &[&stream_id.as_str()]).await?;
        let events = rows.iter().map(recorded).collect::<Result<Vec<_>, _>>()?;
        let version = StreamVersion(events.last().map_or(0, |e| e.stream_version));
        Ok((events, version))
    }

    /// Up to `limit` events after `cursor` in the global order, never
    /// skipping one that commits late (see [`EventLog::follow`]; every
    /// running transaction counts).
    pub async fn read_after(
        client: &impl GenericClient,
        cursor: LogCursor,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(Self::follow(client, cursor, limit, &[]).await?.events)
    }

    /// Up to `limit` events after `cursor` in the global order, never
    /// skipping one that commits late, and whether committed events after
    /// them are held back.
    ///
    /// Only events of transactions older than the oldest transaction still
    /// running are returned: those are all committed or rolled back, and
    /// every transaction that has not yet written will get a larger
    /// transaction id. So once the reader passes a cursor, no event can
    /// appear behind it. Running transactions among `bystanders` (ids of
    /// transactions known never to append, see [`crate::Bystanders`]) do not
    /// count: with none, the horizon is `pg_snapshot_xmin`.
    ///
    /// Committed events at or past that horizon are held back: a follower
    /// told so looks again soon, one told not (after fewer than `limit`
    /// events) has everything committed before this call, and need not look
    /// again before the next commit.
    pub async fn follow(
        client: &impl GenericClient,
        cursor: LogCursor,
        limit: i64,
        bystanders: &[i64],
    ) -> Result<Following, StoreError> {
        // The horizon: the oldest running transaction that is not a
        // bystander, or, with none, the first id not yet assigned (every
        // smaller one has ended). One snapshot for the horizon and the rows;
        // the horizon is computed once (an uncorrelated subquery). The rows
        // are read in log order past the horizon by one, which tells whether
        // anything is held back without a second query.
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, transaction_id < (SELECT coalesce(min(running), \
                       pg_snapshot_xmax(pg_current_snapshot())) \
                       FROM pg_snapshot_xip(pg_current_snapshot()) AS running \
                       WHERE running::text::int8 <> ALL($4::int8[])) AS settled \
                 FROM events WHERE (transaction_id, position) > ($1::text::xid8, $2) \
                 ORDER BY events.transaction_id, events.position LIMIT $3::int8 + 1"
            ))
            .await?;
        let transaction_id = cursor.transaction_id.to_string();
        let rows = client.query(&statement, &[&transaction_id, &cursor.position, &limit, &bystanders]).await?;
        let mut events = Vec::with_capacity(rows.len().min(limit.max(0) as usize));
        let mut held_back = false;
        for row in &rows {
            if !row.get::<_, bool>("settled") {
                held_back = true;
                break;
            }
            if events.len() as i64 == limit {
                break;
            }
            events.push(recorded(row)?);
        }
        Ok(Following { events, held_back })
    }

    /// The events of `cursor`'s transaction after it whose type is one of
    /// `event_types`, in log order. For a reader that got a full batch from
    /// [`EventLog::read_after`] ending inside a large transaction (a revoke
    /// ending a thousand bindings) and wants to act on some of its later
    /// events at once. The transaction is committed: the batch came from it.
    pub async fn read_rest_of_transaction(
        client: &impl GenericClient,
        cursor: LogCursor,
        event_types: &[&str],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM events \
                 WHERE transaction_id = $1::text::xid8 AND position > $2 AND event_type = ANY($3) \
                 ORDER BY position"
            ))
            .await?;
        let transaction_id = cursor.transaction_id.to_string();
        let rows = client.query(&statement, &[&transaction_id, &cursor.position, &event_types]).await?;
        rows.iter().map(recorded).collect()
    }

    /// Prepares [`EventLog::count_known`]'s statement (cached per connection).
    pub async fn prepare_count_known(client: &impl GenericClient) -> Result<tokio_postgres::Statement, StoreError> {
        // A lookup by position per pair, not a join: planned while the log
        // was small, the join's plan scanned the whole table on every call
        // (1-2 ms per projector batch in `bench commands`, growing with the
        // log). The LIMIT keeps the subquery from being flattened into one.
        Ok(client
            .prepare_cached(
                "SELECT count(*) FROM unnest($1::uuid[], $2::int8[]) AS b(event_id, position) \
                 CROSS JOIN LATERAL (SELECT 1 FROM events e \
                     WHERE e.position = b.position AND e.event_id = b.event_id LIMIT 1) AS known",
            )
            .await?)
    }

    /// How many of the (event id, position) pairs are events of this log at
    /// that position: a reader of a copy of the log (a JetStream stream)
    /// checks that the copy is of this log. `statement` is
    /// [`EventLog::prepare_count_known`]'s, so that the call can be pipelined.
    pub async fn count_known(
        client: &impl GenericClient,
        statement: &tokio_postgres::Statement,
        event_ids: &[Uuid],
        positions: &[i64],
    ) -> Result<i64, StoreError> {
        Ok(client.query_one(statement, &[&event_ids, &positions]).await?.get(0))
    }

    /// For a reader checking a copy of the log that ends at `cursor` with
    /// `event_id`: how many events the log holds up to and including
    /// `cursor`, and whether its event there is `event_id`.
    pub async fn count_through(
        client: &impl GenericClient,
        cursor: LogCursor,
        event_id: Uuid,
    ) -> Result<(i64, bool), StoreError> {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE (transaction_id, position) <= ($1::text::xid8, $2)), \
                        coalesce(bool_or(event_id = $3 AND transaction_id = $1::text::xid8 AND position = $2), false) \
                 FROM events",
                &[&cursor.transaction_id.to_string(), &cursor.position, &event_id],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// The events after `cursor` that a follower of the log could read now
    /// (below the horizon, as [`EventLog::read_after`] returns them): how
    /// many, and the age of the oldest in milliseconds (0 when none).
    pub async fn backlog_after(client: &impl GenericClient, cursor: LogCursor) -> Result<(i64, i64), StoreError> {
        let row = client
            .query_one(
                "SELECT count(*), coalesce((extract(epoch FROM now() - min(recorded_at)) * 1000)::bigint, 0) \
                 FROM events WHERE (transaction_id, position) > ($1::text::xid8, $2) \
                   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
                &[&cursor.transaction_id.to_string(), &cursor.position],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// The cursor of the event at `position` (`None` if there is none), and
    /// the newest position (0 for an empty log).
    pub async fn cursor_at(client: &impl GenericClient, position: i64) -> Result<(Option<LogCursor>, i64), StoreError> {
        let row = client
            .query_one(
                "SELECT (SELECT transaction_id::text FROM events WHERE position = $1), \
                        (SELECT coalesce(max(position), 0) FROM events)",
                &[&position],
            )
            .await?;
        let transaction_id: Option<String> = row.get(0);
        let cursor = transaction_id
            .map(|t| {
                t.parse()
                    .map(|transaction_id| LogCursor { transaction_id, position })
                    .map_err(|_| StoreError::Corrupt(format!("transaction id {t:?}")))
            })
            .transpose()?;
        Ok((cursor, row.get(1)))
    }

    /// The id of the newest transaction that appended, if any.
    pub async fn newest_transaction(client: &impl tokio_postgres::GenericClient) -> Result<Option<u64>, StoreError> {
        let newest: Option<String> =
            client.query_one("SELECT max(transaction_id)::text FROM events", &[]).await?.get(0);
        newest.map(|t| t.parse().map_err(|_| StoreError::Corrupt(format!("transaction id {t:?}")))).transpose()
    }

    /// Prepares the audit's scan of the log, in the global order, to bind
    /// with: `$1` an owner or NULL, `$2` a stream id or NULL, `$3` and `$4` a
    /// cursor (transaction id as text, position) or NULLs, `$5` whether to
    /// stop at the horizon. Rows are [`COLUMNS`] (read them with [`recorded`]).
    pub async fn prepare_scan(
        client: &impl tokio_postgres::GenericClient,
    ) -> Result<tokio_postgres::Statement, StoreError> {
        Ok(client
            .prepare(&format!(
                "SELECT {COLUMNS} FROM events \
                 WHERE (NOT $5 OR transaction_id < pg_snapshot_xmin(pg_current_snapshot())) \
                   AND ($1::text IS NULL OR split_part(stream_id, '/', 2) = $1) \
                   AND ($2::text IS NULL OR stream_id = $2) \
                   AND ($3::text IS NULL OR (transaction_id, position) > ($3::text::xid8, $4::int8)) \
                 ORDER BY events.transaction_id, events.position"
            ))
            .await?)
    }

    /// The position of the newest event, if any (for status and tests).
    pub async fn head_position(client: &impl GenericClient) -> Result<Option<i64>, StoreError> {
        Ok(client.query_one("SELECT max(position) FROM events", &[]).await?.get(0))
    }
}

/// An event from a row selected with [`COLUMNS`].
pub fn recorded(row: &Row) -> Result<RecordedEvent, StoreError> {
    let transaction_id: String = row.get(1);
    let stream_version: i64 = row.get(4);
    Ok(RecordedEvent {
        position: row.get(0),
        transaction_id: transaction_id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("transaction id {transaction_id:?}")))?,
        event_id: row.get(2),
        stream_id: row.get(3),
        stream_version: stream_version as u64,
        event_type: row.get(5),
        schema_version: row.get(6),
        data: row.get(7),
        metadata: row.get(8),
        recorded_at: row.get(9),
        previous_hash: stored_hash(row, 10)?,
        hash: stored_hash(row, 11)?,
    })
}

/// A nullable hash column of `row` (32 bytes, or NULL for a row not yet chained).
pub fn stored_hash(row: &Row, index: usize) -> Result<Option<ChainHash>, StoreError> {
    match row.get::<_, Option<&[u8]>>(index) {
        None => Ok(None),
        Some(bytes) => ChainHash::from_slice(bytes)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("a stored hash of {} bytes", bytes.len()))),
    }
}
