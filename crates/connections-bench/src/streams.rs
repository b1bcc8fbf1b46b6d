//! The cost per stream: a command and a resolve on a fresh stream, on a
//! stream with a long history, and on a connection used by many agents, at
//! a fixed rate, with the raw append floor at the same rate in the same run.
//!
//! Each shape is one owner's stream for one service, holding a connection
//! created over HTTP (so that it has a sealed credential) that is the
//! default and is bound to the resolving agent. The long history and the
//! many agents are then appended to the log directly, in large
//! transactions (the product would take minutes to write them one command
//! at a time); the keyed copy of the state does not know them, so the
//! first command on the stream rebuilds it from the log, and that one-off
//! cost is reported apart (then the database is vacuumed and analyzed, as
//! autovacuum would have done on a server that ran a while). Measured: assigning a new agent to the
//! connection (a command that reads the stream and answers the connection's
//! view), and the agent resolving its credential. Only the API runs (no
//! relay or projector): what varies here is the stream, not the fan-out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connections_api::auth::{mint_agent_token, mint_user_token};
use connections_domain::{AgentId, BindingSource, ConnectionId, Event, OwnerId, ServiceName, UnbindReason};
use connections_sealing::MasterKey;
use connections_store::codec::new_events;
use connections_store::{
    connect_named_pool, connect_pool, Database, EventLog, Metadata, PipelinedTransaction, StreamAppend, StreamId,
    StreamVersion,
};
use serde_json::json;

use super::load::{spawn_timed, Statuses};
use super::stats::{ms, Summary};

/// Options of `connections-bench streams`.
#[derive(clap::Args)]
pub struct StreamsOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// Events of history on the long stream.
    #[arg(long, default_value_t = 100_000)]
    history: usize,
    /// Agents using the busy connection.
    #[arg(long, default_value_t = 20_000)]
    agents: usize,
    /// Operations per second in each phase.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Rounds of (raw, every shape's command and resolve phases).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// Runs the benchmark.
pub async fn run(options: StreamsOptions) -> anyhow::Result<()> {
    let database = super::fresh_database(&options.server).await?;
    let result = run_on(&database.url, &options).await;
    database.remove().await?;
    result
}

/// One stream under test.
struct Shape {
    label: String,
    user_token: String,
    agent_token: String,
    connection_id: String,
}

async fn run_on(url: &str, options: &StreamsOptions) -> anyhow::Result<()> {
    let secret = MasterKey::generate_base64()?.into_bytes();
    let master_key = Arc::new(MasterKey::from_base64("bench", &MasterKey::generate_base64()?)?);
    let database = connect_named_pool(url, connections_store::default_pool_size(), "commands")?;
    let state = connections_api::AppState::local(
        database.clone(),
        connect_pool(url, 8)?,
        master_key,
        &secret,
        Default::default(),
    )?;
    let base = super::serve_locally(state).await?;
    let raw = connect_pool(url, 8)?;
    super::append::create_raw_table(&raw).await?;
    let http = reqwest::Client::new();

    println!(
        "bench streams: assign a new agent, and resolve, at {}/s for {} s per phase, {} round(s); shapes: a fresh \
         stream, a stream of {} events, a connection used by {} agents; raw append at the same rate",
        options.rate, options.seconds, options.rounds, options.history, options.agents
    );
    let mut shapes = Vec::new();
    for (label, history, agents) in [("fresh", 0, 0), ("history", options.history, 0), ("busy", 0, options.agents)] {
        let shape = Shape::create(&http, &base, &secret, label.to_owned()).await?;
        let seeded = Instant::now();
        let appended = seed(&database, label, &shape.connection_id, history, agents).await?;
        let seeding = seeded.elapsed();
        // The first command rebuilds the keyed copy of the state from the log.
        let first = Instant::now();
        shape.assign(&http, &base, "warm-up").await?;
        println!(
            "{label:<8} seeded {appended} events in {:.1} s; first command (rebuilds the state from the log) {} ms",
            seeding.as_secs_f64(),
            ms(first.elapsed())
        );
        shapes.push(shape);
    }
    // Settle what the bulk appends left to autovacuum (which would otherwise
    // run during the first round), as a server that has run a while has.
    database.client().await?.batch_execute("VACUUM ANALYZE").await?;

    println!(
        "{:<6} {:<8} {:<8} {:>6} {:>9} {:>9} {:>9} {:>11} {:>9}  statuses",
        "round", "shape", "op", "n", "p50 ms", "p99 ms", "max ms", "p99/fresh", "p99/raw"
    );
    let mut worst = [0.0f64; 2];
    for round in 0..options.rounds {
        let raw_summary = fixed_rate(options, |_| {
            let raw = raw.clone();
            async move {
                let began = Instant::now();
                super::append::raw_append(&raw, &uuid::Uuid::new_v4()).await?;
                anyhow::Ok(began.elapsed())
            }
        })
        .await?;
        println!(
            "{round:<6} {:<8} {:<8} {:>6} {:>9} {:>9} {:>9} {:>11} {:>9}",
            "raw",
            "append",
            raw_summary.operations,
            ms(raw_summary.p50),
            ms(raw_summary.p99),
            ms(raw_summary.max),
            "-",
            "1.00"
        );
        let mut fresh = [Duration::ZERO; 2];
        for shape in &shapes {
            for (op_index, op) in ["assign", "resolve"].into_iter().enumerate() {
                let statuses: Statuses = Arc::default();
                let samples = Arc::new(Mutex::new(Vec::new()));
                let started = Instant::now();
                let ticks = options.rate * options.seconds;
                let mut interval = tokio::time::interval(Duration::from_secs(1) / options.rate as u32);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut tasks = Vec::new();
                for n in 0..ticks {
                    interval.tick().await;
                    let request = match op {
                        "assign" => http
                            .post(format!("{base}/v1/connections/{}/agents", shape.connection_id))
                            .bearer_auth(&shape.user_token)
                            .json(&json!({"agent_id": format!("agent-m{round}-{n:05}")})),
                        _ => http
                            .post(format!("{base}/v1/resolve"))
                            .bearer_auth(&shape.agent_token)
                            .json(&json!({"service": "svc"})),
                    };
                    tasks.push(spawn_timed(request, samples.clone(), statuses.clone()));
                }
                for task in tasks {
                    let _ = task.await;
                }
                let samples = std::mem::take(&mut *samples.lock().expect("samples"));
                let summary = Summary::new(samples, started.elapsed());
                if shape.label == "fresh" {
                    fresh[op_index] = summary.p99;
                }
                let versus_fresh = summary.p99.as_secs_f64() / fresh[op_index].as_secs_f64().max(1e-9);
                if shape.label != "fresh" {
                    worst[op_index] = worst[op_index].max(versus_fresh);
                }
                println!(
                    "{round:<6} {:<8} {:<8} {:>6} {:>9} {:>9} {:>9} {:>11.2} {:>9.2}  {:?}",
                    shape.label,
                    op,
                    summary.operations,
                    ms(summary.p50),
                    ms(summary.p99),
                    ms(summary.max),
                    versus_fresh,
                    summary.p99.as_secs_f64() / raw_summary.p99.as_secs_f64().max(1e-9),
                    statuses.lock().expect("statuses")
                );
            }
        }
    }
    println!(
        "worst p99 against the fresh stream of the same round: assign {:.2}, resolve {:.2} (goal ≤ 2)",
        worst[0], worst[1]
    );
    for round in 0..options.rounds {
        first_resolutions_at_once(&http, &base, &secret, round).await?;
    }
    raw.pool().close();
    database.pool().close();
    Ok(())
}

impl Shape {
    /// The owner `label`'s connection for service `svc`: created over HTTP
    /// for agent `agent-r`, and made the default.
    async fn create(http: &reqwest::Client, base: &str, secret: &[u8], label: String) -> anyhow::Result<Self> {
        let owner = OwnerId::parse(label.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let agent = AgentId::parse("agent-r").map_err(|e| anyhow::anyhow!("{e}"))?;
        let expires = chrono::Utc::now().timestamp() + 3600;
        let user_token = mint_user_token(secret, &owner, expires)?;
        let agent_token = mint_agent_token(secret, &agent, &owner, expires)?;
        let body = json!({"service": "svc", "name": "n", "agent_id": "agent-r",
                          "credential": {"kind": "api_key", "key": "k"}});
        let created: serde_json::Value = http
            .post(format!("{base}/v1/connections"))
            .bearer_auth(&user_token)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let connection_id = created["connection_id"].as_str().unwrap_or_default().to_owned();
        http.put(format!("{base}/v1/services/svc/default"))
            .bearer_auth(&user_token)
            .json(&json!({"connection_id": connection_id}))
            .send()
            .await?
            .error_for_status()?;
        Ok(Self { label, user_token, agent_token, connection_id })
    }

    async fn assign(&self, http: &reqwest::Client, base: &str, agent: &str) -> anyhow::Result<()> {
        http.post(format!("{base}/v1/connections/{}/agents", self.connection_id))
            .bearer_auth(&self.user_token)
            .json(&json!({"agent_id": agent}))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// 100 agents of one owner resolve the same service for the first time at
/// the same moment: each binds the default, on the owner's one stream.
async fn first_resolutions_at_once(
    http: &reqwest::Client,
    base: &str,
    secret: &[u8],
    round: usize,
) -> anyhow::Result<()> {
    // A new owner's default (also bound to `agent-r`, who does not take part).
    let shape = Shape::create(http, base, secret, format!("burst-{round}")).await?;
    let owner = OwnerId::parse(shape.label).map_err(|e| anyhow::anyhow!("{e}"))?;
    let expires = chrono::Utc::now().timestamp() + 3600;
    let mut tokens = Vec::with_capacity(100);
    for n in 0..100 {
        let agent = AgentId::parse(format!("agent-{n:03}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        tokens.push(mint_agent_token(secret, &agent, &owner, expires)?);
    }
    let statuses: Statuses = Arc::default();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let tasks: Vec<_> = tokens
        .iter()
        .map(|token| {
            let request = http.post(format!("{base}/v1/resolve")).bearer_auth(token).json(&json!({"service": "svc"}));
            spawn_timed(request, samples.clone(), statuses.clone())
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let summary = Summary::new(std::mem::take(&mut *samples.lock().expect("samples")), started.elapsed());
    println!(
        "100 first resolutions at once (round {round}): p50 {} ms, p99 {} ms, max {} ms; statuses {:?}",
        ms(summary.p50),
        ms(summary.p99),
        ms(summary.max),
        statuses.lock().expect("statuses")
    );
    Ok(())
}

/// Appends `history` events (agents bound and unbound in turn) and `agents`
/// bindings to the connection, directly to the log in transactions of a
/// thousand events. Returns how many events were appended.
async fn seed(
    database: &Database,
    owner: &str,
    connection_id: &str,
    history: usize,
    agents: usize,
) -> anyhow::Result<usize> {
    let owner = OwnerId::parse(owner).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stream_id = StreamId::owner_service(&owner, &ServiceName::parse("svc").map_err(|e| anyhow::anyhow!("{e}"))?);
    let connection_id = ConnectionId::parse(connection_id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent = |prefix: &str, n: usize| AgentId::parse(format!("{prefix}{n:06}")).expect("a valid agent id");
    let mut events = Vec::with_capacity(history + agents);
    for n in 0..history / 2 {
        let agent_id = agent("agent-h", n);
        events.push(Event::AgentAssigned {
            connection_id,
            agent_id: agent_id.clone(),
            source: BindingSource::Assigned,
        });
        events.push(Event::AgentUnassigned { connection_id, agent_id, reason: UnbindReason::Unassigned });
    }
    events.extend((0..agents).map(|n| Event::AgentAssigned {
        connection_id,
        agent_id: agent("agent-b", n),
        source: BindingSource::Assigned,
    }));
    let client = database.pool().get().await?;
    let (_, mut version) = EventLog::read_stream(&client, &stream_id).await?;
    drop(client);
    for chunk in events.chunks(1_000) {
        let transaction = PipelinedTransaction::new(database.pool().get().await?);
        transaction.begin().await?;
        let metadata =
            Metadata { actor: "bench".into(), command_id: uuid::Uuid::now_v7(), correlation_id: uuid::Uuid::now_v7() };
        let append =
            [StreamAppend { stream_id: stream_id.clone(), expected_version: Some(version), events: new_events(chunk) }];
        EventLog::append(transaction.client(), &append, &metadata).await?;
        transaction.commit().await?;
        version = StreamVersion(version.0 + chunk.len() as u64);
    }
    Ok(events.len())
}

/// Runs `operation(n)` at `options.rate` for `options.seconds` (open loop:
/// each starts on its tick whether or not the previous one finished).
async fn fixed_rate<F, Fut>(options: &StreamsOptions, operation: F) -> anyhow::Result<Summary>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + Send + 'static,
{
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_secs(1) / options.rate as u32);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for n in 0..options.rate * options.seconds {
        interval.tick().await;
        tasks.push(tokio::spawn(operation(n)));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await??);
    }
    Ok(Summary::new(samples, started.elapsed()))
}
