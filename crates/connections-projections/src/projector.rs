//! The dashboard projector: a durable JetStream pull consumer applying events
//! to the read models in log order, exactly once in effect.
//!
//! Each fetched batch is applied in one Postgres transaction together with
//! the projector's checkpoint; a redelivered event at or before the
//! checkpoint changes nothing. Every envelope names the previous event's
//! cursor, so a gap (an event that never arrived) is detected, never papered
//! over: the consumer is recreated and replays from the stream's start,
//! skipping what the checkpoint already covers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use connections_fanout::{nats, Envelope, LogListener, Names, Restarts, Signals, PROJECTED_CHANNEL};
use connections_store::{Database, LogCursor, StoreError};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::{checkpoint, dashboard, DASHBOARD};

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
    /// If set, receives every applied event's lag (from its transaction's
    /// start to its batch committing; benchmarks).
    pub lags: Option<tokio::sync::mpsc::UnboundedSender<Duration>>,
}

impl ProjectorConfig {
    /// Defaults: batches of 256.
    pub fn new(names: Names, database_url: String, nats: nats::NatsAccess) -> Self {
        Self { names, database_url, nats, batch: 256, lags: None }
    }
}

/// Why a projector session ended early (it is then restarted).
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// Postgres failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The lock connection failed.
    #[error("listener: {0}")]
    Listener(#[from] tokio_postgres::Error),
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
}

fn nats_error(error: impl std::fmt::Display) -> ProjectorError {
    ProjectorError::Nats(error.to_string())
}

/// Runs the dashboard projector until `shutdown` turns true.
pub async fn run(database: Database, config: ProjectorConfig, signals: Signals, mut shutdown: watch::Receiver<bool>) {
    let mut restarts = Restarts::new();
    while !*shutdown.borrow() {
        match session(&database, &config, &signals, &mut shutdown).await {
            Ok(()) => break,
            Err(error) => restarts.after_failure("projector", &error, &mut shutdown).await,
        }
    }
    tracing::info!("projector stopped");
}

async fn session(
    database: &Database,
    config: &ProjectorConfig,
    signals: &Signals,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ProjectorError> {
    let listener = LogListener::connect(&config.database_url, signals.clone()).await?;
    let role = connections_fanout::roles::DASHBOARD_PROJECTOR;
    let Some(_role) = listener.lead(config.names.lock_key(role), role, &signals.roles, shutdown).await? else {
        return Ok(());
    };
    let client = nats::connect(&config.nats, &config.names, "connections-projector").await.map_err(nats_error)?;
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
    // A continuous pull (with server heartbeats: a deleted consumer ends it
    // with an error), consumed in micro-batches of whatever is ready.
    let mut messages = consumer.messages().await.map_err(nats_error)?.ready_chunks(config.batch);
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
        let Some(chunk) = chunk else { return Err(ProjectorError::Nats("the message stream ended".into())) };
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
        match apply_batch(database, &envelopes).await {
            Ok(Some(cursor)) => {
                let now = chrono::Utc::now();
                for envelope in &envelopes {
                    let lag = (now - envelope.recorded_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                    connections_metrics::PROJECTION_LAG_SECONDS.observe(&[DASHBOARD], lag);
                    if let Some(lags) = &config.lags {
                        let _ = lags.send(Duration::from_secs_f64(lag));
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

/// Applies a batch in one transaction with the checkpoint. Returns the new
/// checkpoint if anything was applied.
pub async fn apply_batch(database: &Database, envelopes: &[Envelope]) -> Result<Option<LogCursor>, ProjectorError> {
    let mut client = database.pool().get().await.map_err(StoreError::from)?;
    let transaction = client.transaction().await.map_err(StoreError::from)?;
    // Trust nothing the stream says about this log: every envelope must be
    // an event of this log at the same place (a stream left by another
    // deployment under the same prefix is refused before the relay rebuilds it).
    let ids: Vec<uuid::Uuid> = envelopes.iter().map(|e| e.event_id).collect();
    let positions: Vec<i64> = envelopes.iter().map(|e| e.cursor.position).collect();
    let known: i64 = transaction
        .query_one(
            "SELECT count(*) FROM events e JOIN unnest($1::uuid[], $2::int8[]) AS b(event_id, position) \
             ON e.event_id = b.event_id AND e.position = b.position",
            &[&ids, &positions],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    if known != envelopes.len() as i64 {
        return Err(ProjectorError::ForeignStream);
    }
    transaction.batch_execute("SET LOCAL ROLE connections_projector").await.map_err(StoreError::from)?;
    let mut cursor = checkpoint::load(&transaction, DASHBOARD, true).await?;
    let start = cursor;
    let mut statements = Vec::new();
    for envelope in envelopes {
        let got = connections_fanout::log_cursor(envelope.cursor);
        if got <= cursor {
            continue; // redelivered: already applied
        }
        let expected = envelope.previous.map(connections_fanout::log_cursor).unwrap_or_default();
        if expected != cursor {
            return Err(ProjectorError::Gap { got, expected, checkpoint: cursor });
        }
        statements.extend(dashboard::statements(envelope)?);
        cursor = got;
    }
    // Pipelined: sent back to back, executed in order by the server.
    dashboard::execute_pipelined(&transaction, &statements).await?;
    if cursor == start {
        return Ok(None);
    }
    checkpoint::store(&transaction, DASHBOARD, cursor).await?;
    // The payload names the owners whose read models changed, so that
    // servers wake only those owners' change streams.
    let owners: std::collections::BTreeSet<&str> = envelopes.iter().map(|e| e.owner.as_str()).collect();
    let payload = connections_fanout::projected_payload(cursor, owners);
    transaction.execute("SELECT pg_notify($1, $2)", &[&PROJECTED_CHANNEL, &payload]).await.map_err(StoreError::from)?;
    transaction.commit().await.map_err(StoreError::from)?;
    Ok(Some(cursor))
}
