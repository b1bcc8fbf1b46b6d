//! The relay against the real Postgres and the real NATS server: exactly
//! once, in order, across restarts, lost streams, foreign streams and
//! competing relays.

mod announce;
mod faults;
mod ordering;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use connections_fanout::relay::{self, RelayConfig};
use connections_fanout::{Envelope, Names, Signals};
use connections_store::{EventLog, Metadata, NewEvent, StreamAppend, StreamId, StreamVersion};
use connections_testkit::TestDatabase;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) fn nats_url() -> String {
    std::env::var("CONNECTIONS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A database, a unique prefix, and relays that can be started and stopped.
struct Harness {
    db: TestDatabase,
    names: Names,
    context: jetstream::Context,
    /// Whether dropping this harness deletes the stream (false for a
    /// harness sharing another's prefix).
    owns_stream: bool,
    /// The signals of the instance the harness appends from: not the
    /// relays' (theirs are their own unless a test shares them).
    elsewhere: Signals,
}

struct RunningRelay {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningRelay {
    /// Stops gracefully.
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("relay stops").expect("relay task");
    }

    /// Kills the task mid-flight, like a crash.
    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

impl Harness {
    async fn new() -> Self {
        // Relay logs appear with the failing test's output.
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("connections_fanout=debug").try_init();
        let db = TestDatabase::new().await;
        let prefix = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
        let names = Names::new(&prefix).expect("valid prefix");
        let client = async_nats::connect(nats_url()).await.expect("connect to NATS");
        Self { db, names, context: jetstream::new(client), owns_stream: true, elsewhere: Signals::new() }
    }

    /// Another database (another log) under the same prefix.
    async fn sharing_prefix_with(other: &Harness) -> Self {
        let db = TestDatabase::new().await;
        Self {
            db,
            names: other.names.clone(),
            context: other.context.clone(),
            owns_stream: false,
            elsewhere: Signals::new(),
        }
    }

    fn relay(&self) -> RunningRelay {
        self.relay_with_poll(Duration::from_millis(200))
    }

    fn relay_with_poll(&self, poll_interval: Duration) -> RunningRelay {
        self.relay_with(poll_interval, Signals::new())
    }

    /// A relay sharing `signals` with the (simulated) rest of its process.
    fn relay_with(&self, poll_interval: Duration, signals: Signals) -> RunningRelay {
        let (stop, stopping) = watch::channel(false);
        let mut config = RelayConfig::new(
            self.names.clone(),
            self.db.url.clone(),
            connections_fanout::nats::NatsAccess::insecure(nats_url()),
        );
        config.poll_interval = poll_interval;
        config.batch = 64;
        let task = tokio::spawn(relay::run(self.db.database.clone(), config, signals, stopping));
        RunningRelay { stop, task }
    }

    /// Appends `count` events spread over `streams` owner-service streams.
    async fn append(&self, count: usize, streams: usize) {
        let mut client = self.db.database.pool().get().await.expect("pool");
        let mut n = 0;
        while n < count {
            let stream_id = StreamId::parse(&format!("owner-service/owner{}/svc", n % streams)).expect("stream id");
            let transaction = client.transaction().await.expect("begin");
            let (_, version) = EventLog::read_stream(&transaction, &stream_id).await.expect("read");
            let append =
                StreamAppend { stream_id, expected_version: Some(StreamVersion(version.0)), events: vec![event(n)] };
            match EventLog::append(&transaction, &[append], &metadata()).await {
                Ok(_) => {
                    transaction.commit().await.expect("commit");
                    // Like the command handler of another instance: the
                    // relay hears of the commit through a NOTIFY.
                    self.elsewhere.committed(&self.db.database);
                }
                // A concurrent writer took the version: try again, like the command handler does.
                Err(connections_store::StoreError::Conflict { .. }) => continue,
                Err(other) => panic!("append failed: {other:?}"),
            }
            n += 1;
        }
    }

    /// Appends `count` events to one stream in one transaction: the relay
    /// reads them as one batch and pipelines their publishes.
    async fn append_together(&self, count: usize) {
        let mut client = self.db.database.pool().get().await.expect("pool");
        let stream_id = StreamId::parse("owner-service/together/svc").expect("stream id");
        let transaction = client.transaction().await.expect("begin");
        let (_, version) = EventLog::read_stream(&transaction, &stream_id).await.expect("read");
        let events = (0..count).map(event).collect();
        let append = StreamAppend { stream_id, expected_version: Some(StreamVersion(version.0)), events };
        EventLog::append(&transaction, &[append], &metadata()).await.expect("append");
        transaction.commit().await.expect("commit");
        self.elsewhere.committed(&self.db.database);
    }

    /// Every committed event id in the log's global order (not limited by
    /// the transaction horizon: the test's writers have finished).
    async fn log_ids(&self) -> Vec<uuid::Uuid> {
        let client = self.db.client().await;
        let rows =
            client.query("SELECT event_id FROM events ORDER BY transaction_id, position", &[]).await.expect("read log");
        rows.iter().map(|row| row.get(0)).collect()
    }

    /// Every envelope in the stream, in stream order (empty if no stream);
    /// panics on a message that is not an envelope.
    async fn stream_envelopes(&self) -> Vec<(u64, async_nats::HeaderMap, Envelope)> {
        self.stream_messages()
            .await
            .into_iter()
            .map(|(sequence, headers, envelope)| (sequence, headers, envelope.expect("payload is an envelope")))
            .collect()
    }

    /// Every message in the stream, parsed as an envelope where it is one.
    async fn stream_messages(&self) -> Vec<(u64, async_nats::HeaderMap, Option<Envelope>)> {
        let Ok(mut stream) = self.context.get_stream(self.names.events_stream()).await else { return vec![] };
        // The relay may delete and refill the stream while we read: an
        // interrupted read counts as "not converged yet".
        let Ok(info) = stream.info().await else { return vec![] };
        let state = info.state.clone();
        let mut envelopes = Vec::new();
        if state.messages == 0 {
            return envelopes;
        }
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else { return vec![] };
            envelopes.push((sequence, message.headers, serde_json::from_slice(&message.payload).ok()));
        }
        envelopes
    }

    /// Waits (bounded) until the stream holds exactly the log, then returns its envelopes.
    async fn converged(&self) -> Vec<(u64, async_nats::HeaderMap, Envelope)> {
        let started = Instant::now();
        loop {
            let log = self.log_ids().await;
            let stream = self.stream_messages().await;
            let ids: Vec<_> = stream.iter().map(|(_, _, e)| e.as_ref().map(|e| e.event_id)).collect();
            if ids.iter().all(Option::is_some) && ids.iter().flatten().copied().eq(log.iter().copied()) {
                return self.stream_envelopes().await;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the stream did not converge to the log: {} events in the log, {} in the stream",
                log.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !self.owns_stream {
            return;
        }
        let context = self.context.clone();
        let streams = [self.names.events_stream(), self.names.notices_stream()];
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                for stream in streams {
                    let _ = context.delete_stream(stream).await;
                }
                Some(())
            })
        })
        .join();
    }
}

/// The test's `n`th event: a revocation (the relay notices it too).
fn event(n: usize) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "connection_revoked",
        schema_version: 1,
        data: json!({"connection_id": uuid::Uuid::now_v7(), "affected_agents": [], "n": n}),
    }
}

fn metadata() -> Metadata {
    Metadata { actor: "test".into(), command_id: uuid::Uuid::now_v7(), correlation_id: uuid::Uuid::now_v7() }
}
