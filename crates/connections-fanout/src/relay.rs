//! The relay: the log, in its gap-safe order, onto a JetStream stream,
//! exactly once and in order, across crashes and several server instances.
//!
//! - Leadership: a session-level Postgres advisory lock per prefix; only the
//!   holder publishes.
//! - Fencing: every publish carries `Nats-Expected-Last-Sequence`, so even
//!   a deposed leader that still thinks it leads cannot write out of order
//!   or twice (a `Nats-Msg-Id` alone only dedups within the 2-minute
//!   window). Publishes are pipelined: once one is refused, the check alone
//!   would let the next one through behind whatever took the refused one's
//!   place. So when the stream takes a publish after refusing the one
//!   before it, the relay deletes the stream, and the next session refills
//!   it from the log.
//! - Not `Nats-Expected-Last-Msg-Id`: a replica checks that header again
//!   when it applies a message, against the last message id it knows, and
//!   a replica that caught up after a restart does not know it (nats-server
//!   2.15's catch-up stores messages without it). Its next fenced message
//!   fails with "last msgid mismatch", a write error that stops the
//!   replica until its server restarts: each restart of a NATS node under
//!   load cost a replica.
//! - Resume point: the stream itself. Its last message's envelope names the
//!   last relayed log cursor; there is no separate checkpoint that could
//!   disagree with it.
//! - Trust: on start the stream is checked against the log (first and last
//!   events are the log's, no holes, the count matches). A stream that fails,
//!   or is missing, is deleted and refilled from the log: JetStream is a
//!   delivery layer, Postgres is the source of truth.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, HeaderName};
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use bytes::Bytes;
use connections_store::{Database, EventLog, Following, LogCursor, StoreError};
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

use crate::envelope::{envelope_from, envelope_of, log_cursor};
use crate::listener::Signals;
use crate::nats;
use crate::session::{run_led, Leader, Led, SessionError};
use connections_wire::{Envelope, Names, Notice, NoticeKind};

/// How the relay runs.
#[derive(Clone)]
pub struct RelayConfig {
    /// Subject and stream names.
    pub names: Names,
    /// The database (for the LISTEN/lock connection).
    pub database_url: String,
    /// The NATS server and the service's credentials.
    pub nats: nats::NatsAccess,
    /// Events read and published per round (publishes are pipelined).
    pub batch: i64,
    /// The fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// If set, receives every event's position, when the relay read it from
    /// the log and when JetStream acknowledged it (benchmarks).
    pub acked: Option<mpsc::UnboundedSender<Relayed>>,
    /// Replicas of the streams the relay creates (1; 3 in a JetStream cluster).
    pub replicas: usize,
}

impl RelayConfig {
    /// Defaults: batches of 512, a 1-second fallback poll, one replica.
    pub fn new(names: Names, database_url: String, nats: nats::NatsAccess) -> Self {
        Self { names, database_url, nats, batch: 512, poll_interval: Duration::from_secs(1), acked: None, replicas: 1 }
    }
}

/// When the relay read one event and when JetStream acknowledged it.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// The event's position.
    pub position: i64,
    /// When the read that found it was sent.
    pub reading: Instant,
    /// When the batch holding it came back from the log.
    pub read: Instant,
    /// When its publish was acknowledged.
    pub acked: Instant,
    /// From the event's `recorded_at` to its ack, by the wall clock (as
    /// the projector's lag is measured).
    pub since_recorded: Duration,
}

/// Why a relay session ended early (it is then restarted).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The session could not start leading (the LISTEN/lock connection, or NATS).
    #[error("{0}")]
    Session(#[from] SessionError),
    /// NATS or JetStream failed.
    #[error("nats: {0}")]
    Nats(String),
    /// Another writer changed the stream (fencing rejected a publish).
    #[error("the stream moved under the relay (expected last sequence {0})")]
    Fenced(u64),
    /// Leadership was lost (the lock connection dropped).
    #[error("lost leadership")]
    LostLeadership,
    /// The log holds an event the relay cannot address.
    #[error("event at position {0} is not in an owner-service stream")]
    Unroutable(i64),
}

fn nats_error(error: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(error.to_string())
}

/// Runs the relay until `shutdown` turns true, restarting sessions after
/// failures with a bounded backoff.
pub async fn run(database: Database, config: RelayConfig, signals: Signals, shutdown: watch::Receiver<bool>) {
    let led = Led {
        role: crate::roles::RELAY,
        client_name: "connections-relay",
        names: &config.names,
        database_url: &config.database_url,
        nats: &config.nats,
        signals: &signals,
    };
    run_led(led, shutdown, |leader, shutdown| {
        // Everything a session logs carries the relay span (and the prefix).
        let span = tracing::info_span!("relay", prefix = %config.names.prefix());
        tracing::Instrument::instrument(session(&database, &config, &signals, leader, shutdown), span)
    })
    .await;
}

async fn session(
    database: &Database,
    config: &RelayConfig,
    signals: &Signals,
    leader: Leader,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RelayError> {
    let Leader { listener, nats: client, .. } = leader;
    let context = jetstream::new(client);
    let mut stream = ensure_stream(&context, &config.names, config.replicas).await?;
    let notices_stream = ensure_notices_stream(&context, &config.names, config.replicas).await?;
    let (cursor, last_sequence) = resume_point(database, &context, &mut stream, config).await?;
    tracing::info!(?cursor, last_sequence, "relay leading");
    // Batches are published without waiting for the acks of the ones
    // before (the fencing header orders them); the settler awaits the acks
    // in order alongside, in this same task.
    let (to_settle, batches) = mpsc::channel(BATCHES_IN_FLIGHT);
    let (stop, stopped) = watch::channel(false);
    let publisher = Publisher { database, config, signals, listener: &listener, context: &context, notices_stream };
    let publishing = publisher.run(cursor, last_sequence, to_settle, stopped, shutdown);
    let settler = Settler { context: &context, config, stop };
    let (published, settled) = futures_util::future::join(publishing, settler.run(batches, last_sequence)).await;
    // The settler's error first: a refused publish is why the publisher stopped.
    settled.and(published)
}

/// Batches sent whose acks the settler has not begun to await, at most.
/// When the server stalls its acks (nats-server 2.9.10 does, for 15-55 ms
/// now and then, on a stream being read), the publisher keeps reading and
/// sending: at 1,000 commands/s a batch is one or a few events, so a 50 ms
/// stall is about 50 batches. With one in flight, the publisher stopped at
/// the second batch and the events committed during the stall were read
/// only after it, a read and a round trip later (`bench fanout`, README
/// "Session 49"). The JetStream context's own cap on unacknowledged
/// publishes bounds the messages; this bounds the batches' bookkeeping.
const BATCHES_IN_FLIGHT: usize = 64;

/// Reads the log and publishes its events (with their notices first).
struct Publisher<'a> {
    database: &'a Database,
    config: &'a RelayConfig,
    signals: &'a Signals,
    listener: &'a crate::listener::LogListener,
    context: &'a jetstream::Context,
    notices_stream: stream::Stream,
}

impl Publisher<'_> {
    /// Publishes from `sent` (the stream at `last_sequence`) until shutdown
    /// (`Ok`), until the settler stops it (`Ok`: the settler
    /// says why), or until a failure.
    async fn run(
        self,
        mut sent: LogCursor,
        mut last_sequence: u64,
        to_settle: mpsc::Sender<InFlight>,
        mut stopped: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RelayError> {
        let Self { database, config, signals, listener, context, .. } = self;
        let connection = database.pool().get().await.map_err(StoreError::from)?;
        let mut noticed_early = HashSet::new();
        let notices =
            Notices { context, stream: &self.notices_stream, names: &config.names, stored: &signals.stored_notices };
        loop {
            if !listener.is_alive() {
                return Err(RelayError::LostLeadership);
            }
            if *stopped.borrow() {
                return Ok(());
            }
            // A wake-up kept from a commit that this read will see would only
            // bring an empty read: drop it. A commit from now on keeps another.
            let _ = signals.appended.notified().now_or_never();
            let reading = Instant::now();
            let bystanders = signals.bystanders.ids();
            let Following { events: batch, held_back } =
                EventLog::follow(&connection, sent, config.batch, &bystanders).await?;
            let read = Instant::now();
            let found = match (batch.is_empty(), held_back) {
                (false, _) => "events",
                (true, true) => "held_back",
                (true, false) => "nothing",
            };
            connections_metrics::RELAY_READS.inc(&[found]);
            // A short batch with nothing held back was everything committed
            // before the read: then wait for the next commit. Committed
            // events that wait behind an older running transaction: if that
            // one appends, its commit wakes us; if it is some other
            // transaction, look again after a millisecond rather than wait
            // for a wake-up that has already come.
            let pause = match (batch.is_empty(), (batch.len() as i64) < config.batch, held_back) {
                (true, _, true) => Some(Duration::from_millis(1)),
                (_, true, false) => Some(config.poll_interval),
                _ => None,
            };
            if !batch.is_empty() {
                // A full batch may end inside a large transaction: a revoke
                // ending a thousand bindings puts its revocation last. Its
                // notice goes out now, not a batch later (and is not repeated
                // when its batch comes).
                let ahead = match (batch.len() as i64 == config.batch, batch.last()) {
                    (true, Some(last)) => {
                        EventLog::read_rest_of_transaction(&connection, last.cursor(), URGENT).await?
                    }
                    _ => Vec::new(),
                };
                notices.publish(&ahead, &batch, sent, &mut noticed_early).await?;
                // Publish the whole batch, then hand its acks to the settler.
                // The fencing header makes the server refuse anything out of
                // sequence.
                let mut pending = Vec::with_capacity(batch.len());
                let mut previous = (sent != LogCursor::default()).then_some(sent);
                for event in batch {
                    if *stopped.borrow() {
                        break;
                    }
                    let sending = Sending { cursor: event.cursor(), recorded_at: event.recorded_at };
                    let envelope =
                        envelope_from(event, previous).ok_or(RelayError::Unroutable(sending.cursor.position))?;
                    let message = publish_message(&envelope, last_sequence);
                    let subject = config.names.event_subject(&envelope.owner, &envelope.service, &envelope.event_type);
                    let ack = context.send_publish(subject, message).await.map_err(nats_error)?;
                    pending.push((sending, last_sequence, ack));
                    previous = Some(sending.cursor);
                    sent = sending.cursor;
                    last_sequence += 1;
                }
                // A closed settler has ended the session with its error.
                if to_settle.send(InFlight { pending, reading, read }).await.is_err() {
                    return Ok(());
                }
            }
            if let Some(pause) = pause {
                tokio::select! {
                    _ = signals.appended.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

/// What settling a publish needs of its event (the event itself moved
/// into its envelope).
#[derive(Clone, Copy)]
struct Sending {
    cursor: LogCursor,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

/// A batch sent to the events stream whose acks are awaited.
struct InFlight {
    /// Each publish's event, expected last sequence and ack.
    pending: Vec<(Sending, u64, jetstream::context::PublishAckFuture)>,
    /// When the read that found the batch was sent, and when it came back.
    reading: Instant,
    read: Instant,
}

/// Awaits the acks of every batch sent, in order.
struct Settler<'a> {
    context: &'a jetstream::Context,
    config: &'a RelayConfig,
    /// Turned true when a publish was refused, or when settling ended:
    /// the publisher stops.
    stop: watch::Sender<bool>,
}

impl Settler<'_> {
    /// Settles batches until the publisher stops and every batch it sent is
    /// settled (`Ok`), or why the session must end. After a refused
    /// publish, the acks of everything sent after it are still awaited: if
    /// the stream took any of them, something else took the refused one's
    /// place, and the stream is deleted to be refilled from the log.
    async fn run(self, batches: mpsc::Receiver<InFlight>, last_sequence: u64) -> Result<(), RelayError> {
        let settled = self.settle(batches, last_sequence).await;
        // However it ended, the publisher stops (it may be waiting for a commit).
        self.stop.send_replace(true);
        settled
    }

    async fn settle(&self, mut batches: mpsc::Receiver<InFlight>, mut last_sequence: u64) -> Result<(), RelayError> {
        let Self { context, config, stop } = self;
        let mut refused = None;
        while let Some(InFlight { pending, reading, read }) = batches.recv().await {
            for (event, expected, ack) in pending {
                let ack = ack.await;
                if let Some(refused) = refused {
                    if ack.is_ok_and(|ack| !ack.duplicate) {
                        return Err(delete_broken_stream(context, &config.names, refused).await);
                    }
                    continue;
                }
                // `None`: refused (out of sequence, or taken as a duplicate).
                let accepted = match ack {
                    Ok(ack) => {
                        (!ack.duplicate && ack.sequence == expected + 1 && expected == last_sequence).then_some(ack)
                    }
                    Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => None,
                    Err(error) => return Err(nats_error(error)),
                };
                let Some(ack) = accepted else {
                    refused = Some(expected);
                    stop.send_replace(true);
                    continue;
                };
                let since_recorded = seconds_since(event.recorded_at);
                if let Some(acked) = &config.acked {
                    let since_recorded = Duration::from_secs_f64(since_recorded);
                    let _ = acked.send(Relayed {
                        position: event.cursor.position,
                        reading,
                        read,
                        acked: Instant::now(),
                        since_recorded,
                    });
                }
                connections_metrics::RELAY_PUBLISHED.inc(&[]);
                connections_metrics::RELAY_LAG_SECONDS.observe(&[], since_recorded);
                last_sequence = ack.sequence;
            }
        }
        match refused {
            Some(refused) => Err(RelayError::Fenced(refused)),
            None => Ok(()),
        }
    }
}

/// After the stream took a publish that followed one it refused (something
/// else took the refused one's place): the stream no longer follows the
/// log, though its length and its last events may still look as if it did.
/// Deletes it, so that the next session refills it from the log.
async fn delete_broken_stream(context: &jetstream::Context, names: &Names, refused: u64) -> RelayError {
    tracing::warn!(
        stream = %names.events_stream(),
        refused,
        "the events stream took a publish after refusing the one before it; deleting it to refill it from the log"
    );
    match context.delete_stream(names.events_stream()).await {
        Ok(_) => RelayError::Fenced(refused),
        Err(error) => nats_error(error),
    }
}

/// Seconds from `then` (an event's `recorded_at`) to now, by the wall clock.
fn seconds_since(then: chrono::DateTime<chrono::Utc>) -> f64 {
    (chrono::Utc::now() - then).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6
}

/// The headers every event carries besides its envelope
/// (`schemas/nats/subjects.md`), named once: a name built from a `&str`
/// is validated and allocated for every message.
const POSITION: HeaderName = HeaderName::from_static("Connections-Position");
const TRANSACTION_ID: HeaderName = HeaderName::from_static("Connections-Transaction-Id");
const STREAM_ID: HeaderName = HeaderName::from_static("Connections-Stream-Id");
const STREAM_VERSION: HeaderName = HeaderName::from_static("Connections-Stream-Version");
const EVENT_TYPE: HeaderName = HeaderName::from_static("Connections-Event-Type");
const SCHEMA_VERSION: HeaderName = HeaderName::from_static("Connections-Schema-Version");

fn publish_message(envelope: &Envelope, expected_last_sequence: u64) -> PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert(POSITION, envelope.cursor.position.to_string());
    headers.insert(TRANSACTION_ID, envelope.cursor.transaction_id.to_string());
    headers.insert(STREAM_ID, envelope.stream_id.as_str());
    headers.insert(STREAM_VERSION, envelope.stream_version.to_string());
    headers.insert(EVENT_TYPE, envelope.event_type.as_str());
    headers.insert(SCHEMA_VERSION, envelope.schema_version.to_string());
    let payload = serde_json::to_vec(envelope).expect("an envelope always serializes");
    PublishMessage::build()
        .payload(Bytes::from(payload))
        .headers(headers)
        .message_id(envelope.event_id.to_string())
        .expected_last_sequence(expected_last_sequence)
}

/// How long the relay waits for this instance's own copy of an urgent
/// notice that is still being sent (its command gives up after 250 ms).
const OWN_COPY_WITHIN: Duration = Duration::from_millis(300);

/// The event types whose notices make runtimes drop a credential: sent
/// ahead of their batch when a batch ends inside their transaction.
const URGENT: &[&str] = &["connection_revoked", "credential_rotated"];

/// Where the relay's notices go.
struct Notices<'a> {
    context: &'a jetstream::Context,
    stream: &'a stream::Stream,
    names: &'a Names,
    /// What this instance's commands are putting, or have put, on `stream`.
    stored: &'a crate::StoredNotices,
}

impl Notices<'_> {
    /// Publishes the notices a batch calls for, before its events: a crash in
    /// between repeats them (runtimes treat notices idempotently; `Nats-Msg-Id`
    /// drops repeats within the duplicate window), but none is ever lost for an
    /// event that reached the events stream. Only committed events get here.
    /// `ahead` are urgent events of a later batch (same transaction), noticed
    /// now; their ids are kept in `noticed_early` so that their own batch skips
    /// them. An urgent notice that the committing instance has already put on
    /// the notices stream (see `UrgentNotices`) is not published again: the
    /// stream would drop the copy, but every runtime holding the connection
    /// would still receive it, a second fan-out on top of the first. This
    /// instance's own copies are known without asking the stream (one still
    /// being sent is waited for: the command and the relay hear of the commit
    /// at the same moment).
    async fn publish(
        &self,
        ahead: &[connections_store::RecordedEvent],
        batch: &[connections_store::RecordedEvent],
        mut previous: LogCursor,
        noticed_early: &mut HashSet<uuid::Uuid>,
    ) -> Result<(), RelayError> {
        let Self { context, names, .. } = *self;
        let mut notices = Vec::new();
        for event in batch {
            let envelope = envelope_of(event, (previous != LogCursor::default()).then_some(previous))
                .ok_or(RelayError::Unroutable(event.position))?;
            previous = event.cursor();
            if noticed_early.remove(&event.event_id) {
                continue;
            }
            if let Some((subject, notice)) = Notice::for_event(&envelope, names) {
                notices.push((subject, notice, event.recorded_at));
            }
        }
        // Each full batch of the transaction looks ahead: notice once.
        for event in ahead {
            if noticed_early.contains(&event.event_id) {
                continue;
            }
            // A notice does not carry the envelope's predecessor.
            let envelope = envelope_of(event, None).ok_or(RelayError::Unroutable(event.position))?;
            if let Some((subject, notice)) = Notice::for_event(&envelope, names) {
                noticed_early.insert(event.event_id);
                notices.push((subject, notice, event.recorded_at));
            }
        }
        // Revocations first: revoking a connection used by many agents also ends
        // every binding, and those notices must not delay the one that matters
        // most. Notices only invalidate, so their relative order is free.
        notices.sort_by_key(|(_, notice, _)| match notice.kind {
            NoticeKind::Revoked => 0,
            NoticeKind::Rotated => 1,
            NoticeKind::Rejected => 2,
            NoticeKind::BindingChanged => 3,
        });
        let published = futures_util::future::join_all(notices.iter().map(|(subject, notice, _)| async move {
            notice.is_urgent()
                && (self.stored.settle(&notice.message_id(), OWN_COPY_WITHIN).await
                    || self.on_stream(subject, notice).await)
        }))
        .await;
        let mut published = published.into_iter();
        notices.retain(|_| !published.next().unwrap_or(false));
        let mut acks = Vec::with_capacity(notices.len());
        for (subject, notice, recorded_at) in notices {
            let payload = serde_json::to_vec(&notice).expect("a notice always serializes");
            let message = PublishMessage::build().payload(Bytes::from(payload)).message_id(notice.message_id());
            acks.push((notice.kind, recorded_at, context.send_publish(subject, message).await.map_err(nats_error)?));
        }
        for (kind, recorded_at, ack) in acks {
            match ack.await {
                Ok(_) => {}
                // Another copy of this notice (the committing instance's)
                // is being stored at this moment (a clustered stream says
                // so rather than waiting): it is on its way, and runtimes
                // were sent it.
                Err(error) if storing_another_copy(&error) => continue,
                Err(error) => return Err(nats_error(error)),
            }
            let label = match kind {
                NoticeKind::Revoked => "revoked",
                NoticeKind::Rotated => "rotated",
                NoticeKind::Rejected => "rejected",
                NoticeKind::BindingChanged => "binding_changed",
            };
            connections_metrics::NOTICES_PUBLISHED.inc(&[label]);
            if kind == NoticeKind::Revoked {
                connections_metrics::REVOCATION_NOTICE_SECONDS.observe(&[], seconds_since(recorded_at));
            }
        }
        Ok(())
    }

    /// Whether the notices stream's last message on `subject` is `notice`
    /// (the committing instance's copy). Any doubt (no message, an
    /// error, no answer within 100 ms) is a no: the notice is published.
    async fn on_stream(&self, subject: &str, notice: &Notice) -> bool {
        let last =
            tokio::time::timeout(Duration::from_millis(100), self.stream.get_last_raw_message_by_subject(subject));
        match last.await {
            Ok(Ok(message)) => message.headers.get("Nats-Msg-Id").is_some_and(|id| id.as_str() == notice.message_id()),
            _ => false,
        }
    }
}

/// Whether a publish was refused because a message with the same
/// `Nats-Msg-Id` is being stored at that moment (JetStream error 10158).
fn storing_another_copy(error: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|error| error.error_code() == jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
}

/// The notices stream, created if missing: a catch-up feed for runtimes
/// that were away (limited to a day; runtimes that were away longer
/// revalidate what they hold).
async fn ensure_notices_stream(
    context: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<stream::Stream, RelayError> {
    let config = stream::Config {
        name: names.notices_stream(),
        subjects: vec![names.notices_wildcard()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: Duration::from_secs(24 * 3600),
        ..Default::default()
    };
    let stream = context.get_or_create_stream(config.clone()).await.map_err(nats_error)?;
    // A stream made for an earlier subject layout (v1), or with another
    // replica count, follows the current configuration.
    let current = &stream.cached_info().config;
    if current.subjects != config.subjects || current.num_replicas != replicas {
        tracing::info!(subjects = ?config.subjects, "moving the notices stream to the current subjects");
        context.update_stream(config).await.map_err(nats_error)?;
    }
    Ok(stream)
}

/// The events stream, created if missing (file storage, `replicas`
/// replicas, no limits; the configuration is valid for nats-server 2.9 and
/// 2.10+).
async fn ensure_stream(
    context: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<stream::Stream, RelayError> {
    let config = stream::Config {
        name: names.events_stream(),
        subjects: vec![names.events_wildcard()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    let mut stream = context.get_or_create_stream(config.clone()).await.map_err(nats_error)?;
    // A stream made with another replica count (a deployment that grew into
    // a cluster) is moved to the configured one.
    if stream.cached_info().config.num_replicas != replicas {
        tracing::info!(replicas, "moving the events stream to the configured replica count");
        context.update_stream(config).await.map_err(nats_error)?;
        stream = context.get_stream(names.events_stream()).await.map_err(nats_error)?;
    }
    Ok(stream)
}

/// Where to continue: the cursor of the stream's last event and the
/// stream's last sequence, after checking that the stream is this log's.
/// A stream that fails the check is deleted and recreated empty.
async fn resume_point(
    database: &Database,
    context: &jetstream::Context,
    stream: &mut stream::Stream,
    config: &RelayConfig,
) -> Result<ResumePoint, RelayError> {
    let names = &config.names;
    match verify(database, stream).await? {
        Ok(resume) => Ok(resume),
        Err(reason) => {
            tracing::warn!(stream = %names.events_stream(), %reason, "stream does not match the log; rebuilding it from the log");
            context.delete_stream(names.events_stream()).await.map_err(nats_error)?;
            *stream = ensure_stream(context, names, config.replicas).await?;
            Ok((LogCursor::default(), 0))
        }
    }
}

/// (cursor of the last relayed event, last stream sequence).
type ResumePoint = (LogCursor, u64);

/// `Ok(Ok(resume point))` if the stream is a faithful prefix of the log,
/// `Ok(Err(why not))` otherwise.
async fn verify(database: &Database, stream: &mut stream::Stream) -> Result<Result<ResumePoint, String>, RelayError> {
    let state = stream.info().await.map_err(nats_error)?.state.clone();
    if state.messages == 0 {
        return Ok(Ok((LogCursor::default(), state.last_sequence)));
    }
    if state.messages != state.last_sequence - state.first_sequence + 1 {
        return Ok(Err(format!(
            "stream has holes ({} messages in {}..={})",
            state.messages, state.first_sequence, state.last_sequence
        )));
    }
    let envelope_at = |sequence: u64| {
        let stream = &*stream;
        async move {
            let message = stream.get_raw_message(sequence).await.map_err(nats_error)?;
            Ok::<_, RelayError>(serde_json::from_slice::<Envelope>(&message.payload).ok())
        }
    };
    let (Some(first), Some(last)) = (envelope_at(state.first_sequence).await?, envelope_at(state.last_sequence).await?)
    else {
        return Ok(Err("stream holds messages that are not event envelopes".into()));
    };
    let client = database.pool().get().await.map_err(StoreError::from)?;
    let log_first = EventLog::read_after(&client, LogCursor::default(), 1).await?;
    if first.previous.is_some() || log_first.first().map(|e| e.event_id) != Some(first.event_id) {
        return Ok(Err("the stream's first event is not the log's first event".into()));
    }
    if state.messages > 1 {
        let Some(before_last) = envelope_at(state.last_sequence - 1).await? else {
            return Ok(Err("stream holds messages that are not event envelopes".into()));
        };
        if last.previous != Some(before_last.cursor) {
            return Ok(Err("the stream's last two events are not consecutive in the log".into()));
        }
    }
    let last_cursor = log_cursor(last.cursor);
    let (count, last_is_ours) = EventLog::count_through(&client, last_cursor, last.event_id).await?;
    if !last_is_ours {
        return Ok(Err("the stream's last event is not in the log (is the stream ahead of the log?)".into()));
    }
    if count as u64 != state.messages {
        return Ok(Err(format!("the stream holds {} events, the log {} up to the same point", state.messages, count)));
    }
    Ok(Ok((last_cursor, state.last_sequence)))
}
