//! The append benchmark: (a) a raw transaction that reads a stream's version
//! and inserts one row; (b) the store's append path; (c) the full HTTP command
//! path (create a connection: parse, seal, decide, append, answer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::serve::ListenerExt;
use connections_api::auth::{mint_user_token, Authenticator};
use connections_api::runtime_nats::RuntimeNats;
use connections_api::{router, AppState};
use connections_domain::OwnerId;
use connections_sealing::MasterKey;
use connections_store::{
    connect_pool, Database, EventLog, Metadata, NewEvent, PipelinedTransaction, StreamAppend, StreamId, StreamVersion,
};
use serde_json::json;

use super::stats::{ms, Summary};

/// Options of `connections-bench append`.
#[derive(clap::Args)]
pub struct AppendOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8, 32])]
    concurrency: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Raw,
    Store,
    Http,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Raw => "(a) raw INSERT",
            Mode::Store => "(b) store append",
            Mode::Http => "(c) HTTP command",
        }
    }
}

/// Runs the benchmark and prints one table.
pub async fn run(options: AppendOptions) -> anyhow::Result<()> {
    let database = super::fresh_database(&options.server).await?;
    let result = run_on(&database.url, &options).await;
    database.remove().await?;
    result
}

async fn run_on(url: &str, options: &AppendOptions) -> anyhow::Result<()> {
    let max_concurrency = options.concurrency.iter().copied().max().unwrap_or(1);
    let database = connect_pool(url, max_concurrency + 4)?;
    create_raw_table(&database).await?;
    let server = HttpServer::start(database.clone()).await?;
    let phase = Duration::from_secs(options.seconds);
    println!("bench append: {}s per phase, Postgres {}", options.seconds, server_version(&database).await?);
    println!(
        "{:<18} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "path", "conc", "ops", "ops/s", "p50 ms", "p99 ms", "max ms", "vs mean (a)"
    );
    for &concurrency in &options.concurrency {
        // The baseline runs before and after the measured paths; their mean
        // is the reference, so that drift on a shared machine shows up as a
        // gap between the two (a) rows instead of skewing one ratio.
        reset_raw_table(&database).await?;
        let before = measure(Mode::Raw, concurrency, phase, &database, &server).await?;
        let store = measure(Mode::Store, concurrency, phase, &database, &server).await?;
        let http = measure(Mode::Http, concurrency, phase, &database, &server).await?;
        reset_raw_table(&database).await?;
        let after = measure(Mode::Raw, concurrency, phase, &database, &server).await?;
        let baseline = (before.per_second + after.per_second) / 2.0;
        for (mode, summary) in [(Mode::Raw, &before), (Mode::Store, &store), (Mode::Http, &http), (Mode::Raw, &after)] {
            println!(
                "{:<18} {:>5} {:>8} {:>9.0} {:>9} {:>9} {:>9} {:>12.2}",
                mode.label(),
                concurrency,
                summary.operations,
                summary.per_second,
                ms(summary.p50),
                ms(summary.p99),
                ms(summary.max),
                summary.per_second / baseline
            );
        }
    }
    // Close every pooled connection (the HTTP server shares the pool) before
    // the database is dropped, so nothing logs the forced disconnects.
    database.pool().close();
    Ok(())
}

async fn measure(
    mode: Mode,
    concurrency: usize,
    phase: Duration,
    database: &Database,
    server: &HttpServer,
) -> anyhow::Result<Summary> {
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let deadline = started + phase;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let database = database.clone();
        let http = server.clone();
        let stream = format!("bench-{run_id}-{worker}");
        let raw_stream = uuid::Uuid::new_v4();
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut version = 0u64;
            // One user per worker, holding one token, like a real client.
            let token = http.token(&stream)?;
            while Instant::now() < deadline {
                let begin = Instant::now();
                match mode {
                    Mode::Raw => raw_append(&database, &raw_stream).await?,
                    Mode::Store => store_append(&database, &http.signals, &stream, version).await?,
                    Mode::Http => http.create_connection(&token, &format!("s{version}")).await?,
                }
                samples.push(begin.elapsed());
                version += 1;
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await??);
    }
    Ok(Summary::new(samples, started.elapsed()))
}

/// The raw floor's table, as `../shared/peers` (`raw-append`) creates it:
/// a global position, the (stream, version) key, the event's type and data.
const RAW_TABLE: &str = "CREATE TABLE bench_raw (global_position bigserial PRIMARY KEY, stream_id uuid NOT NULL, \
     version int NOT NULL, type text NOT NULL, data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), \
     UNIQUE (stream_id, version))";

pub(super) async fn create_raw_table(database: &Database) -> anyhow::Result<()> {
    database.client().await?.batch_execute(RAW_TABLE).await?;
    Ok(())
}

/// Empties the raw floor's table and flushes dirty pages, before each raw
/// phase, as the peers harness does: otherwise the table grows from round to
/// round, the floor slows down and later rounds flatter the product, and a
/// timed checkpoint is likelier to land mid-phase.
pub(super) async fn reset_raw_table(database: &Database) -> anyhow::Result<()> {
    let client = database.client().await?;
    client.batch_execute("TRUNCATE bench_raw RESTART IDENTITY").await?;
    checkpoint(&client).await;
    Ok(())
}

/// `CHECKPOINT`, when the role may (a note otherwise, as the peers harness).
pub(super) async fn checkpoint(client: &tokio_postgres::Client) {
    if let Err(error) = client.batch_execute("CHECKPOINT").await {
        eprintln!("note: CHECKPOINT failed ({error}); continuing");
    }
}

/// The raw floor: one transaction reading a stream's version and inserting
/// the next event (the peers harness's `raw-append`: BEGIN, SELECT
/// max(version), INSERT version + 1, COMMIT, prepared statements).
pub(super) async fn raw_append(database: &Database, stream: &uuid::Uuid) -> anyhow::Result<()> {
    let mut client = database.pool().get().await?;
    let transaction = client.transaction().await?;
    let read =
        transaction.prepare_cached("SELECT coalesce(max(version), 0) FROM bench_raw WHERE stream_id = $1").await?;
    let version: i32 = transaction.query_one(&read, &[stream]).await?.get(0);
    let insert = transaction
        .prepare_cached("INSERT INTO bench_raw (stream_id, version, type, data) VALUES ($1, $2, $3, $4)")
        .await?;
    let data = json!({"connection_id": stream, "version": version + 1});
    transaction.execute(&insert, &[stream, &(version + 1), &"Appended", &data]).await?;
    transaction.commit().await?;
    Ok(())
}

async fn store_append(
    database: &Database,
    signals: &connections_fanout::Signals,
    stream: &str,
    version: u64,
) -> anyhow::Result<()> {
    // The path the command handler takes: BEGIN pipelined with the append,
    // then COMMIT, then the relay told of it.
    let transaction = PipelinedTransaction::new(database.pool().get().await?);
    let append = StreamAppend {
        stream_id: StreamId::parse(&format!("owner-service/{stream}/bench"))
            .context("a bench stream name is an owner id")?,
        expected_version: Some(StreamVersion(version)),
        events: vec![NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: "bench_event",
            schema_version: 1,
            data: json!({"n": version}),
        }],
    };
    let metadata =
        Metadata { actor: "bench".into(), command_id: uuid::Uuid::now_v7(), correlation_id: uuid::Uuid::now_v7() };
    let (begun, appended) =
        futures_util::future::join(transaction.begin(), EventLog::append(transaction.client(), &[append], &metadata))
            .await;
    begun?;
    appended?;
    transaction.commit().await?;
    signals.committed(database);
    Ok(())
}

/// The real router on a loopback port, and a client with a token per owner.
#[derive(Clone)]
struct HttpServer {
    base: String,
    client: reqwest::Client,
    secret: Arc<Vec<u8>>,
    /// The server's signals (the store path tells of its commits there too).
    signals: connections_fanout::Signals,
}

impl HttpServer {
    async fn start(database: Database) -> anyhow::Result<Self> {
        let secret: Vec<u8> = MasterKey::generate_base64()?.into_bytes();
        let signals = connections_fanout::Signals::new();
        let state = AppState {
            reads: database.clone(),
            database,
            master_key: Arc::new(MasterKey::from_base64("bench", &MasterKey::generate_base64()?)?),
            authenticator: Arc::new(Authenticator::hs256(&secret)?),
            signals: signals.clone(),
            lifecycle: Default::default(),
            settings: Default::default(),
            // Commands only: runtimes never ask this server for NATS credentials.
            runtime_nats: Arc::new(RuntimeNats {
                names: connections_fanout::Names::new("bench")?,
                urls: Vec::new(),
                issuer: None,
                ttl: Duration::from_secs(300),
            }),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        Ok(Self { base, client: reqwest::Client::new(), secret: Arc::new(secret), signals })
    }

    fn token(&self, owner: &str) -> anyhow::Result<String> {
        let owner = OwnerId::parse(owner.to_owned()).map_err(|e| anyhow::anyhow!("owner {e}"))?;
        Ok(mint_user_token(&self.secret, &owner, chrono::Utc::now().timestamp() + 3600)?)
    }

    /// One command: create a connection for a service the user has none of
    /// yet (parse, seal, decide on a new stream, append, answer).
    async fn create_connection(&self, token: &str, service: &str) -> anyhow::Result<()> {
        let response = self
            .client
            .post(format!("{}/v1/connections", self.base))
            .bearer_auth(token)
            .json(&json!({"service": service, "name": "bench", "credential": {"kind": "api_key", "key": "bench-key"}}))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 201, "create answered {}", response.status());
        Ok(())
    }
}

async fn server_version(database: &Database) -> anyhow::Result<String> {
    Ok(database.pool().get().await?.query_one("SHOW server_version", &[]).await?.get(0))
}
