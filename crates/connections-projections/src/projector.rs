//! The dashboard projector: a durable JetStream pull consumer applying events
//! to the read models in log order, exactly once in effect.
//!
//! Each fetched batch is applied in one Postgres transaction (a few
//! statements whatever its size, see [`crate::dashboard`]) together with
//! the projector's checkpoint; a redelivered event at or before the
//! checkpoint changes nothing. Every envelope names the previous event's
//! cursor, so a gap (an event that never arrived) is detected, never papered
//! over: the consumer is recreated and replays from the stream's start,
//! skipping what the checkpoint already covers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use connections_fanout::session::{run_led, Leader, Led, SessionError};
use connections_fanout::{nats, Envelope, Names, Signals, PROJECTED_CHANNEL};
use connections_store::{Bystanders, Database, EventLog, LogCursor, PipelinedTransaction, StoreError};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::model::Fact;
use crate::{checkpoint, dashboard, DASHBOARD};

/// How long one pull request waits on the server (then the client sends another).
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// The server's idle heartbeat on a waiting pull; two missed end the session.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// The default pace (why a batch waits: `batch_wait`). The mix at
/// concurrency 32 kept its lag p99 under the 50 ms goal, at 38–45 ms
/// (README, "Session 40").
pub const PACE: Duration = Duration::from_millis(25);

/// How the projector runs.
#[derive(Clone)]
pub struct ProjectorConfig {
    /// Stream and consumer names.
    pub names: Names,
    /// The database (for the lock connection).
    pub database_url: String,
    /// The NATS server and the service's credentials.
    pub nats: nats::NatsAccess,
    /// Messages per fetch (and per transaction).
    pub batch: usize,
    /// How long after its recording (`recorded_at`) the first event of a
    /// small batch waits, at most, for others to be applied with it (see [`pace_wait`]).
    pub pace: Duration,
    /// If set, receives every applied event's lag (from its recording to
    /// its batch committing) and when it was applied (benchmarks).
    pub lags: Option<tokio::sync::mpsc::UnboundedSender<Applied>>,
}

impl ProjectorConfig {
    /// Defaults: batches of up to 1,000, paced by [`PACE`].
    pub fn new(names: Names, database_url: String, nats: nats::NatsAccess) -> Self {
        Self { names, database_url, nats, batch: 1000, pace: PACE, lags: None }
    }
}

/// An event applied to the read models (for [`ProjectorConfig::lags`]).
#[derive(Clone, Copy, Debug)]
pub struct Applied {
    /// When its batch committed.
    pub at: std::time::Instant,
    /// From its recording (`recorded_at`) to then.
    pub lag: Duration,
}

/// Why a projector session ended early (it is then restarted).
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// Postgres failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The session could not start leading (the lock connection, or NATS).
    #[error("{0}")]
    Session(#[from] SessionError),
    /// NATS or JetStream failed.
    #[error("nats: {0}")]
    Nats(String),
    /// An event arrived whose predecessor has not been applied.
    #[error("gap: event at {got:?} follows {expected:?}, but the checkpoint is {checkpoint:?}")]
    Gap {
        /// The cursor of the event that arrived.
        got: LogCursor,
        /// The predecessor it names.
        expected: LogCursor,
        /// Where the projector is.
        checkpoint: LogCursor,
    },
    /// A message that is not an envelope.
    #[error("message {0} is not an event envelope")]
    Malformed(u64),
    /// Envelopes of events this log does not hold: the stream belongs to
    /// another log (the relay rebuilds it); nothing is applied.
    #[error("the stream carries events that are not in this log")]
    ForeignStream,
    /// Leadership was lost.
    #[error("lost leadership")]
    LostLeadership,
    /// The checkpoint moved while a batch was applied (a rebuild swapped
    /// its tables in, or another projector ran); the batch was rolled back.
    #[error("the checkpoint moved under the projector")]
    CheckpointMoved,
    /// The consumer has acknowledged an event the checkpoint has not
    /// reached: batches lost with Postgres after their ack (their commit is
    /// asynchronous). The stream is replayed.
    #[error("the checkpoint {checkpoint:?} is behind the acknowledged event at {acknowledged:?}")]
    BehindAcknowledged {
        /// The last event the consumer has acknowledged.
        acknowledged: LogCursor,
        /// Where the projector is.
        checkpoint: LogCursor,
    },
}

fn nats_error(error: impl std::fmt::Display) -> ProjectorError {
    ProjectorError::Nats(error.to_string())
}

/// Runs the dashboard projector until `shutdown` turns true.
pub async fn run(database: Database, config: ProjectorConfig, signals: Signals, shutdown: watch::Receiver<bool>) {
    let led = Led {
        role: connections_fanout::roles::DASHBOARD_PROJECTOR,
        client_name: "connections-projector",
        names: &config.names,
        database_url: &config.database_url,
        nats: &config.nats,
        signals: &signals,
    };
    run_led(led, shutdown, |leader, shutdown| session(&database, &config, &signals, leader, shutdown)).await;
}

async fn session(
    database: &Database,
    config: &ProjectorConfig,
    signals: &Signals,
    leader: Leader,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ProjectorError> {
    let shutdown = &mut shutdown;
    let Leader { listener, nats: client, .. } = leader;
    let context = jetstream::new(client);
    let stream = context.get_stream(config.names.events_stream()).await.map_err(nats_error)?;
    let durable = config.names.projector_consumer(DASHBOARD);
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                ack_policy: consumer::AckPolicy::All,
                deliver_policy: consumer::DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(nats_error)?;
    // Batches lost with Postgres after their ack are replayed now, not at
    // the next event's gap (which may be long in coming).
    if let Some(behind) = behind_acknowledged(database, &stream, &consumer).await? {
        let _ = stream.delete_consumer(&durable).await;
        return Err(behind);
    }
    // A continuous pull, consumed in micro-batches of whatever is ready.
    // Pulls as large as a batch, so that a backlog is applied in few
    // transactions (a batch costs a few statements whatever its size).
    // With server heartbeats: a pull lost with a NATS node (or a consumer
    // that moved or was deleted) ends the session within seconds; without
    // them the client would only re-pull when its 30 s request expired.
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.batch)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(nats_error)?
        .ready_chunks(config.batch);
    let mut alive = tokio::time::interval(Duration::from_secs(1));
    loop {
        let chunk = tokio::select! {
            chunk = messages.next() => chunk,
            _ = alive.tick() => {
                if !listener.is_alive() {
                    return Err(ProjectorError::LostLeadership);
                }
                continue;
            }
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(mut chunk) = chunk else { return Err(ProjectorError::Nats("the message stream ended".into())) };
        if let Some(wait) = batch_wait(&chunk, config.batch, config.pace) {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
        // Add what arrived meanwhile (during the wait, or while the last
        // batch was applied), up to a batch, so that the transaction's cost
        // is shared by more. Only what is already here: a yield to let more
        // arrive took 3 to 20 ms on a loaded machine, each time (the task
        // queues behind every other), and put the mix's lag p99 over 50 ms.
        gather(&mut chunk, &mut messages, config.batch);
        let batch = chunk.into_iter().collect::<Result<Vec<_>, _>>().map_err(nats_error)?;
        let Some(last) = batch.last() else { continue };
        let mut envelopes = Vec::with_capacity(batch.len());
        for message in &batch {
            let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
            envelopes.push(
                serde_json::from_slice::<Envelope>(&message.payload)
                    .map_err(|_| ProjectorError::Malformed(sequence))?,
            );
        }
        // Only this instance's relay knows of its bystanders: with the relay
        // elsewhere, taking the id early would hold that relay back longer.
        let bystanders = signals.roles.holds(connections_fanout::roles::RELAY).then_some(&signals.bystanders);
        match apply_batch(database, bystanders, &envelopes).await {
            Ok(Some(cursor)) => {
                let (now, at) = (chrono::Utc::now(), std::time::Instant::now());
                for envelope in &envelopes {
                    let lag = (now - envelope.recorded_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    connections_metrics::PROJECTION_LAG_SECONDS.observe(&[DASHBOARD], lag);
                    if let Some(lags) = &config.lags {
                        let _ = lags.send(Applied { at, lag: Duration::from_secs_f64(lag) });
                    }
                }
                signals.projected.send_if_modified(|current| {
                    let newer = current.is_none_or(|c| cursor > c);
                    if newer {
                        *current = Some(cursor);
                    }
                    newer
                });
            }
            Ok(None) => {}
            Err(gap @ ProjectorError::Gap { .. }) => {
                // Replay from the stream's start; the checkpoint skips what is done.
                let _ = stream.delete_consumer(&durable).await;
                return Err(gap);
            }
            Err(other) => return Err(other),
        }
        last.ack().await.map_err(nats_error)?;
    }
}

/// Adds to `chunk` what `messages` already holds, until it has `batch`
/// messages or more; never waits for more to come.
fn gather<T>(chunk: &mut Vec<T>, messages: &mut (impl futures_util::Stream<Item = Vec<T>> + Unpin), batch: usize) {
    while chunk.len() < batch {
        match messages.next().now_or_never() {
            Some(Some(more)) => chunk.extend(more),
            _ => break,
        }
    }
}

/// Pacing: a batch whose first event was recorded (`recorded_at`, just
/// before its commit) less than `pace` ago waits until then for more, so
/// that a flow is applied in batches of what `pace` brings rather than a
/// transaction for each event or few: a transaction's fixed statements are
/// shared by more events, and a row that several of them change (a
/// connection assigned to three agents, then made default) is written once.
/// At 1,000 events/s, waiting only while a batch held fewer than 8 events,
/// up to 10 ms, took the machine's CPU use down by about a quarter; waiting
/// for every batch, up to 25 ms, took the mix's Postgres CPU a command down
/// by a sixth more at concurrency 32 (README, "Session 40"). A full batch,
/// or an event already `pace` late (a backlog, a loaded machine), waits no
/// longer.
fn batch_wait<E>(chunk: &[Result<jetstream::Message, E>], batch: usize, pace: Duration) -> Option<Duration> {
    if chunk.len() >= batch {
        return None;
    }
    let first = chunk.first()?.as_ref().ok()?;
    let envelope = serde_json::from_slice::<Envelope>(&first.payload).ok()?;
    pace_wait(envelope.recorded_at, chrono::Utc::now(), pace)
}

/// How long a batch whose first event was recorded at `recorded_at` waits
/// for more events, at `now`: until `pace` after that recording, never longer
/// than `pace` (whatever the clocks say), nothing once the event is that old.
pub fn pace_wait(
    recorded_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    pace: Duration,
) -> Option<Duration> {
    let age = (now - recorded_at).to_std().unwrap_or(Duration::ZERO);
    pace.checked_sub(age).filter(|wait| !wait.is_zero())
}

/// [`ProjectorError::BehindAcknowledged`] when the checkpoint is behind the
/// last event the consumer has acknowledged. Best effort: a stream message
/// that cannot be read skips the check (the next event's gap still tells).
async fn behind_acknowledged(
    database: &Database,
    stream: &jetstream::stream::Stream,
    consumer: &consumer::PullConsumer,
) -> Result<Option<ProjectorError>, ProjectorError> {
    let sequence = consumer.cached_info().ack_floor.stream_sequence;
    if sequence == 0 {
        return Ok(None);
    }
    let envelope = match stream.get_raw_message(sequence).await {
        Ok(message) => serde_json::from_slice::<Envelope>(&message.payload).ok(),
        Err(error) => {
            tracing::warn!(%error, sequence, "the acknowledged message could not be read; checkpoint not compared");
            None
        }
    };
    let Some(envelope) = envelope else { return Ok(None) };
    let acknowledged = connections_fanout::log_cursor(envelope.cursor);
    let client = database.pool().get().await.map_err(StoreError::from)?;
    let checkpoint = checkpoint::load(&client, DASHBOARD, false).await?;
    Ok((checkpoint < acknowledged).then_some(ProjectorError::BehindAcknowledged { acknowledged, checkpoint }))
}

/// Applies a batch in one transaction with the checkpoint. Returns the new
/// checkpoint if anything was applied.
///
/// Two round trips whatever the batch's size: the checks, the checkpoint and
/// the rows the batch touches are read in one pipeline; the batch is folded
/// into those rows in memory; the writes, the new checkpoint, the
/// notification and the commit go in a second. Under load each round trip
/// waits for the server to be scheduled, so their number, more than the
/// rows, sets the projection's lag.
///
/// The commit is asynchronous (`synchronous_commit = off` for this
/// transaction alone): it does not wait for its WAL to reach the disk. The
/// rows are derived from the log, which every command commits synchronously,
/// so a Postgres crash can only lose the last batches, with their
/// checkpoint, after their messages were acknowledged. The next event then
/// names a predecessor the checkpoint has not reached: a gap, and the
/// session replays the stream from its start (a session that starts with
/// its checkpoint behind the consumer's acknowledgements does so at once). Waiting for the flush,
/// queued behind the commands' own, was about a third of a batch's time.
///
/// With `bystanders` (when this instance's relay leads), the transaction is
/// registered there (it never appends to the log) as soon as it has an id,
/// so that the relay does not hold commits back behind it.
pub async fn apply_batch(
    database: &Database,
    bystanders: Option<&Bystanders>,
    envelopes: &[Envelope],
) -> Result<Option<LogCursor>, ProjectorError> {
    let events = dashboard::decode_all(envelopes)?;
    let facts = dashboard::facts(envelopes, &events);
    let client = database.pool().get().await.map_err(StoreError::from)?;
    // Prepared first (cached after the first batch): a statement prepared
    // inside a pipeline would run after the ones polled after it.
    let statements = Prepared::new(&client).await?;
    // Until the transaction has ended, dropping this (an error, or the task
    // cancelled mid-batch) closes the connection instead of returning it to
    // the pool inside a transaction running as the projector's role.
    let transaction = PipelinedTransaction::new(client);
    let applied = apply_pipelined(transaction.client(), &statements, bystanders, envelopes, &facts).await?;
    transaction.ended();
    Ok(applied)
}

/// The statements [`apply_batch`] runs besides the read models' own.
struct Prepared {
    known: tokio_postgres::Statement,
    set_role: tokio_postgres::Statement,
    asynchronous_commit: tokio_postgres::Statement,
    no_seqscan: tokio_postgres::Statement,
    load_checkpoint: tokio_postgres::Statement,
    advance_checkpoint: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
    transaction_id: tokio_postgres::Statement,
}

impl Prepared {
    async fn new(client: &deadpool_postgres::Client) -> Result<Self, StoreError> {
        dashboard::prepare(client).await?;
        Ok(Self {
            known: EventLog::prepare_count_known(client).await?,
            set_role: client.prepare_cached("SET LOCAL ROLE connections_projector").await?,
            asynchronous_commit: client.prepare_cached("SET LOCAL synchronous_commit = off").await?,
            no_seqscan: client.prepare_cached("SET LOCAL enable_seqscan = off").await?,
            load_checkpoint: client.prepare_cached(checkpoint::LOAD).await?,
            advance_checkpoint: client.prepare_cached(checkpoint::ADVANCE).await?,
            notify: client.prepare_cached("SELECT pg_notify($1, $2)").await?,
            transaction_id: client.prepare_cached("SELECT pg_current_xact_id()::text").await?,
        })
    }
}

async fn apply_pipelined(
    client: &deadpool_postgres::Client,
    statements: &Prepared,
    bystanders: Option<&Bystanders>,
    envelopes: &[Envelope],
    facts: &[Fact<'_>],
) -> Result<Option<LogCursor>, ProjectorError> {
    // Trust nothing the stream says about this log: every envelope must be
    // an event of this log at the same place (a stream left by another
    // deployment under the same prefix is refused before the relay rebuilds it).
    let ids: Vec<uuid::Uuid> = envelopes.iter().map(|e| e.event_id).collect();
    let positions: Vec<i64> = envelopes.iter().map(|e| e.cursor.position).collect();
    let everything = dashboard::Touched::of(facts);
    // Round trip 1, in this order: BEGIN, the transaction's id, the check
    // (as the owner of `events`), the role for the read models, an
    // asynchronous commit, no sequential scans (a read model that is small,
    // or was when last analyzed, was scanned whole on every batch, dead rows
    // and all: its planned scans now go by key), the checkpoint, the rows.
    // A running transaction with an id holds back the relay's horizon for
    // every later commit (see EventLog::follow) unless it is registered as
    // a bystander: the id is taken first, and registered as soon as its
    // answer is back, before the writes of the second round trip, for as
    // long as the transaction runs.
    let registered = async {
        let Some(bystanders) = bystanders else { return Ok(None) };
        let row = client.query_one(&statements.transaction_id, &[]).await.map_err(StoreError::from)?;
        let id: String = row.get(0);
        let id = id.parse().map_err(|_| StoreError::Corrupt(format!("transaction id {id:?}")))?;
        Ok::<_, StoreError>(Some(bystanders.register(id)))
    };
    let (begun, registered, known, role, asynchronous, no_seqscan, checkpoint, model) = futures_util::join!(
        client.batch_execute("BEGIN"),
        registered,
        EventLog::count_known(client, &statements.known, &ids, &positions),
        client.execute(&statements.set_role, &[]),
        client.execute(&statements.asynchronous_commit, &[]),
        client.execute(&statements.no_seqscan, &[]),
        client.query_opt(&statements.load_checkpoint, &[&DASHBOARD]),
        dashboard::load(client, &everything),
    );
    begun.map_err(StoreError::from)?;
    // Held until the transaction has ended (this function returns).
    let _registered = registered?;
    let known = known?;
    role.map_err(StoreError::from)?;
    asynchronous.map_err(StoreError::from)?;
    no_seqscan.map_err(StoreError::from)?;
    let mut model = model?;
    if known != envelopes.len() as i64 {
        return Err(ProjectorError::ForeignStream);
    }
    let mut cursor = checkpoint::from_row(checkpoint.map_err(StoreError::from)?)?;
    let start = cursor;
    let mut fresh = Vec::with_capacity(facts.len());
    for (envelope, fact) in envelopes.iter().zip(facts) {
        let got = connections_fanout::log_cursor(envelope.cursor);
        if got <= cursor {
            continue; // redelivered: already applied
        }
        let expected = envelope.previous.map(connections_fanout::log_cursor).unwrap_or_default();
        if expected != cursor {
            return Err(ProjectorError::Gap { got, expected, checkpoint: cursor });
        }
        fresh.push(fact);
        cursor = got;
    }
    if cursor == start {
        client.batch_execute("ROLLBACK").await.map_err(StoreError::from)?;
        return Ok(None);
    }
    for fact in &fresh {
        model.apply(fact);
    }
    let touched = dashboard::Touched::of(fresh.iter().copied());
    // The payload names the owners whose read models changed, so that
    // servers wake only those owners' change streams.
    let owners: std::collections::BTreeSet<&str> = fresh.iter().map(|f| f.owner).collect();
    let payload = connections_fanout::projected_payload(cursor, owners);
    let transaction_id = cursor.transaction_id.to_string();
    let start_transaction_id = start.transaction_id.to_string();
    // Round trip 2: the rows, the checkpoint, the notification, COMMIT (which
    // rolls back instead if any of them failed; that error is returned).
    let checkpoint_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&DASHBOARD, &transaction_id, &cursor.position, &start_transaction_id, &start.position];
    let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&PROJECTED_CHANNEL, &payload];
    // The checkpoint first: it locks the row (and waits for a rebuild's swap
    // holding it), and a moved checkpoint aborts everything after it.
    let (checkpointed, stored, notified, committed) = futures_util::join!(
        client.execute(&statements.advance_checkpoint, &checkpoint_params),
        dashboard::store(client, &touched, &model),
        client.execute(&statements.notify, &notify_params),
        client.batch_execute("COMMIT"),
    );
    match checkpointed {
        Err(error) if checkpoint::moved(&error) => return Err(ProjectorError::CheckpointMoved),
        other => other.map_err(StoreError::from)?,
    };
    stored?;
    notified.map_err(StoreError::from)?;
    committed.map_err(StoreError::from)?;
    Ok(Some(cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_MS: Duration = Duration::from_millis(10);

    fn at(millis: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + millis).expect("a valid time")
    }

    #[test]
    fn gathering_takes_what_has_arrived_and_never_waits_for_more() {
        let mut arrived = futures_util::stream::iter(1..=3).chain(futures_util::stream::pending()).ready_chunks(2);
        let mut chunk = vec![0];
        gather(&mut chunk, &mut arrived, 10);
        assert_eq!(chunk, [0, 1, 2, 3]);
    }

    #[test]
    fn gathering_stops_once_a_batch_is_full() {
        let mut arrived = futures_util::stream::iter(1..=9).ready_chunks(2);
        let mut chunk = vec![0];
        gather(&mut chunk, &mut arrived, 4);
        assert_eq!(chunk, [0, 1, 2, 3, 4]);
        gather(&mut Vec::new(), &mut arrived, 0);
        assert_eq!(arrived.next().now_or_never(), Some(Some(vec![5, 6])));
    }

    #[test]
    fn a_fresh_event_waits_for_the_rest_of_the_pace() {
        assert_eq!(pace_wait(at(0), at(2), TEN_MS), Some(Duration::from_millis(8)));
        assert_eq!(pace_wait(at(0), at(0), TEN_MS), Some(TEN_MS));
    }

    #[test]
    fn an_event_already_a_pace_late_does_not_wait() {
        assert_eq!(pace_wait(at(0), at(10), TEN_MS), None);
        assert_eq!(pace_wait(at(0), at(250), TEN_MS), None);
    }

    #[test]
    fn a_clock_ahead_of_ours_never_makes_the_wait_longer_than_the_pace() {
        assert_eq!(pace_wait(at(5_000), at(0), TEN_MS), Some(TEN_MS));
    }

    #[test]
    fn no_pace_never_waits() {
        assert_eq!(pace_wait(at(0), at(0), Duration::ZERO), None);
    }
}
