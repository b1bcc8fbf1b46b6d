//! The mix benchmark: the HTTP API on the command mix users run, with the
//! relay and the projector running, against the raw append floor in the
//! same run, interleaved.
//!
//! The mix, per (new user, service) stream, in order: create, 3 × assign
//! to a new agent, set default, revoke (one command = one HTTP request;
//! `concurrency` streams in flight). The floor: one transaction per command,
//! `SELECT max(version)` + `INSERT`, at the same concurrency. After them,
//! the HTTP exchange alone (`GET /health`, no database) with the same client
//! and server: what the machine gives a request before any command work.
//! For each phase: commands/s, latency, and from Postgres's own counters the
//! transactions, rows inserted and rows updated per command, Postgres's CPU
//! and the benchmark process's CPU (server, relay, projector and load
//! generator) per command; for the product, the relay's lag (`relay p99`)
//! and the projection lag (`lag p99 ms`) of every event relayed or applied
//! during the phase, both from the event's `recorded_at` (its insert, inside
//! its transaction) by the wall clock; the relay's lag is split at the send
//! of the read that found the event (before it: the rest of its
//! transaction, the commit, the horizon and the relay's loop; after it: the
//! read and the publish). The projection lag's p99 is also printed for
//! each second of the phase, to tell a slow second from a slow phase.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connections_api::auth::mint_user_token;
use connections_domain::OwnerId;
use connections_fanout::relay::{self, RelayConfig};
use connections_fanout::Names;
use connections_projections::projector::{self, ProjectorConfig};
use connections_sealing::MasterKey;
use connections_store::{connect_named_pool, Database};
use hyper::header::HeaderValue;
use hyper::Method;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::http1::Connection;
use super::stats::{ms, Summary};

/// Options of `connections-bench commands`.
#[derive(clap::Args)]
pub struct CommandsOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// The NATS server (the relay and projector run against it).
    #[arg(long, env = "CONNECTIONS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrency levels (streams in flight).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8, 32])]
    concurrency: Vec<usize>,
    /// Rounds of (raw, product, alone, http) per concurrency level.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The most commands in a commit group (the server's default if unset).
    #[arg(long)]
    commit_group: Option<usize>,
    /// The server's pool for commands, as `serve` reads it (8 per core if unset).
    #[arg(long, env = "CONNECTIONS_DATABASE_POOL", value_parser = clap::value_parser!(u16).range(1..))]
    pool: Option<u16>,
    /// The projector's pace in milliseconds (its default if unset; 0 applies
    /// every batch at once, for an A/B).
    #[arg(long)]
    projector_pace_ms: Option<u64>,
    /// Leave a component out, to see what it costs (a decomposition, not
    /// the goal's workload: the goal runs the relay and the projector).
    #[arg(long, value_enum)]
    without: Option<Without>,
}

impl CommandsOptions {
    /// The server's pool for commands: `--pool`, or `serve`'s default.
    pub fn pool(&self) -> usize {
        self.pool.map_or_else(connections_store::default_pool_size, usize::from)
    }
}

/// What `--without` leaves out.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Without {
    /// The projector (the relay still publishes every event).
    Projector,
    /// The relay and the projector (the commands alone).
    Fanout,
}

impl Without {
    fn describe(without: Option<Self>) -> &'static str {
        match without {
            None => "with the relay and projector running",
            Some(Without::Projector) => "with the relay running and WITHOUT the projector (a decomposition run)",
            Some(Without::Fanout) => "WITHOUT the relay and the projector (a decomposition run)",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// The raw append floor.
    Raw,
    /// `GET /health`: the HTTP exchange alone.
    Http,
    /// The mix, as the server runs it (commit groups).
    Product,
    /// The mix with every command in a transaction of its own.
    Alone,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Raw => "raw",
            Path::Http => "http",
            Path::Product => "product",
            Path::Alone => "alone",
        }
    }
}

/// Postgres's counters for the benchmark's database, and its processes' CPU.
#[derive(Clone, Default)]
struct Counters {
    transactions: i64,
    inserted: i64,
    updated: i64,
    cpu: Duration,
    /// The CPU time of this database's Postgres sessions, by the pool
    /// (`application_name`) they belong to.
    by_pool: BTreeMap<String, Duration>,
    /// The NATS server's CPU time (when it runs on this machine).
    nats: Duration,
    /// This process's CPU time.
    process: Duration,
}

/// Runs the benchmark.
pub async fn run(options: CommandsOptions) -> anyhow::Result<()> {
    let deployment = super::Deployment::create(&options.server, &options.nats_url, "cbench").await?;
    let result = run_on(&deployment.url, &deployment.names, &deployment.access, &options).await;
    deployment.remove().await?;
    result
}

async fn run_on(
    url: &str,
    names: &Names,
    access: &connections_fanout::nats::NatsAccess,
    options: &CommandsOptions,
) -> anyhow::Result<()> {
    let max_concurrency = options.concurrency.iter().copied().max().unwrap_or(1);
    let database = connect_named_pool(url, max_concurrency + 4, "raw")?;
    let reads = connect_named_pool(url, 8, "reads")?;
    // The relay's and the projector's pools apart, so that Postgres's CPU
    // a command splits between them.
    let relay_database = connect_named_pool(url, 2, "relay")?;
    let projector_database = connect_named_pool(url, 2, "projector")?;
    super::append::create_raw_table(&database).await?;
    // The server as `serve` runs it: API, relay, projector.
    let secret = MasterKey::generate_base64()?.into_bytes();
    let master_key = Arc::new(MasterKey::from_base64("bench", &MasterKey::generate_base64()?)?);
    // The server's pool as `serve` sizes it.
    let product_database = connect_named_pool(url, options.pool(), "commands")?;
    let mut state = connections_api::AppState::local(product_database, reads, master_key, &secret, Default::default())?;
    // As `serve` runs it: revokes publish their urgent notice at once.
    let nats = connections_fanout::nats::connect(access, names, "bench server").await?;
    // The relay shares the server's signals, as under `serve` (it skips the
    // urgent notices the commands already stored).
    let signals = state.signals.clone();
    state.lifecycle.urgent_notices =
        Some(connections_fanout::UrgentNotices::new(nats, names.clone(), signals.stored_notices.clone()));
    let groups = state.settings.commit_groups.clone();
    let group_size = options.commit_group.unwrap_or(groups.size());
    let base = super::serve_locally(state).await?;
    let (stop, stopping) = watch::channel(false);
    let (relayed_tx, mut relayed) = mpsc::unbounded_channel();
    let mut relay_config = RelayConfig::new(names.clone(), url.to_owned(), access.clone());
    relay_config.acked = Some(relayed_tx);
    let relay = match options.without {
        Some(Without::Fanout) => None,
        _ => Some(tokio::spawn(relay::run(relay_database.clone(), relay_config, signals.clone(), stopping.clone()))),
    };
    let (lags_tx, mut lags) = mpsc::unbounded_channel();
    let mut projector_config = ProjectorConfig::new(names.clone(), url.to_owned(), access.clone());
    projector_config.lags = Some(lags_tx);
    if let Some(pace) = options.projector_pace_ms {
        projector_config.pace = Duration::from_millis(pace);
    }
    let projector = match options.without {
        Some(Without::Projector | Without::Fanout) => None,
        None => Some(tokio::spawn(projector::run(projector_database.clone(), projector_config, signals, stopping))),
    };
    // Warm up: the relay creates its streams, the projector its consumer.
    let warm = Owner::new(&secret, "warm-up")?;
    warm.mix(&mut Connection::open(&base).await?, 0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while lags.try_recv().is_ok() {}
    while relayed.try_recv().is_ok() {}

    let phase = Duration::from_secs(options.seconds);
    println!(
        "bench commands: the mix (create, 3 × assign to a new agent, set default, revoke per new stream) over HTTP \
         {}, against a raw append (SELECT max + INSERT), {} s per phase, {} round(s)",
        Without::describe(options.without),
        options.seconds,
        options.rounds
    );
    println!(
        "{:<8} {:>4} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>10} {:>9} {:>10}",
        "path",
        "conc",
        "cmds",
        "cmds/s",
        "p50 ms",
        "p99 ms",
        "vs raw",
        "tx/cmd",
        "ins/cmd",
        "upd/cmd",
        "pgcpu ms",
        "appcpu ms",
        "natscpu ms",
        "relay p99",
        "lag p99 ms"
    );
    for &concurrency in &options.concurrency {
        let (mut ratios, mut alone, mut cpu_ratios) = (Vec::new(), Vec::new(), Vec::new());
        // Each product round's ratio and lag p99, together: the goal asks
        // for both in the same round.
        let mut verdicts = Vec::new();
        for round in 0..options.rounds {
            let (mut raw_rate, mut raw_cpu) = (0.0, 0.0);
            // The HTTP exchange last: Postgres publishes an idle backend's
            // counters up to 10 s late, so the raw phase's tail lands in the
            // next phase (as it always has, the product's) and the product's
            // in the HTTP phase, which does not touch Postgres.
            for path in [Path::Raw, Path::Product, Path::Alone, Path::Http] {
                groups.set_size(if path == Path::Alone { 1 } else { group_size });
                // Each phase starts from a checkpoint, the raw one also from
                // an empty table (as the peers harness runs them).
                match path {
                    Path::Raw => super::append::reset_raw_table(&database).await?,
                    Path::Product | Path::Alone => super::append::checkpoint(&*database.client().await?).await,
                    Path::Http => {}
                }
                let before = counters(&database).await?;
                let groups_before = groups.committed();
                let reads_before = super::relay_reads();
                let loads_before = super::state_loads();
                let started = Instant::now();
                let (summary, by_step) = measure(path, concurrency, phase, &database, &base, &secret, round).await?;
                // Let the projector finish this phase's events, and the
                // statistics collector see every backend's counters.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let after = counters(&database).await?;
                let mut applied = Vec::new();
                while let Ok(event) = lags.try_recv() {
                    applied.push(event);
                }
                let phase_lags: Vec<Duration> = applied.iter().map(|a| a.lag).collect();
                let (mut relay_lags, mut before_read, mut reading, mut read_to_ack) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                while let Ok(event) = relayed.try_recv() {
                    let publishing = event.acked.saturating_duration_since(event.reading);
                    relay_lags.push(event.since_recorded);
                    before_read.push(event.since_recorded.saturating_sub(publishing));
                    reading.push(event.read.saturating_duration_since(event.reading));
                    read_to_ack.push(event.acked.saturating_duration_since(event.read));
                }
                let commands = summary.operations.max(1) as f64;
                let per = |a: i64, b: i64| (a - b) as f64 / commands;
                let ratio = match path {
                    Path::Raw => {
                        raw_rate = summary.per_second;
                        1.0
                    }
                    Path::Http | Path::Product | Path::Alone => summary.per_second / raw_rate.max(1.0),
                };
                match path {
                    Path::Product => ratios.push(ratio),
                    Path::Alone => alone.push(ratio),
                    Path::Raw | Path::Http => {}
                }
                // Nothing measured (a component left out) is not a lag of 0.
                let p99 = |lags: Vec<Duration>| (!lags.is_empty()).then(|| Summary::new(lags, phase).p99);
                let shown = |p99: Option<Duration>| p99.map_or_else(|| "-".to_owned(), ms);
                let (relay_lag, lag) = match path {
                    Path::Raw | Path::Http => ("-".to_owned(), "-".to_owned()),
                    Path::Product | Path::Alone => {
                        let lag = p99(phase_lags);
                        if path == Path::Product {
                            verdicts.push((ratio, lag));
                        }
                        (shown(p99(relay_lags)), shown(lag))
                    }
                };
                let cpu =
                    |after: Duration, before: Duration| after.saturating_sub(before).as_secs_f64() * 1e3 / commands;
                // All the machine's CPU a command takes: on a saturated
                // machine what the throughput ratio follows, less noisy than it.
                let total_cpu =
                    cpu(after.cpu, before.cpu) + cpu(after.process, before.process) + cpu(after.nats, before.nats);
                match path {
                    Path::Raw => raw_cpu = total_cpu,
                    Path::Product => cpu_ratios.push(total_cpu / f64::max(raw_cpu, 1e-9)),
                    Path::Alone | Path::Http => {}
                }
                // The HTTP exchange does not touch Postgres.
                let postgres = match path {
                    Path::Http => format!("{:>7} {:>7} {:>7} {:>8}", "-", "-", "-", "-"),
                    Path::Raw | Path::Product | Path::Alone => format!(
                        "{:>7.2} {:>7.2} {:>7.2} {:>8.3}",
                        per(after.transactions, before.transactions),
                        per(after.inserted, before.inserted),
                        per(after.updated, before.updated),
                        cpu(after.cpu, before.cpu),
                    ),
                };
                println!(
                    "{:<8} {:>4} {:>7} {:>8.0} {:>8} {:>8} {:>7.2} {postgres} {:>9.3} {:>10.3} {:>9} {:>10}",
                    path.label(),
                    concurrency,
                    summary.operations,
                    summary.per_second,
                    ms(summary.p50),
                    ms(summary.p99),
                    ratio,
                    cpu(after.process, before.process),
                    cpu(after.nats, before.nats),
                    relay_lag,
                    lag
                );
                if matches!(path, Path::Product | Path::Alone) {
                    let steps: Vec<String> = STEPS
                        .iter()
                        .zip(by_step)
                        .map(|(step, samples)| {
                            let summary = Summary::new(samples, phase);
                            format!("{step} {}/{}", ms(summary.p50), ms(summary.p99))
                        })
                        .collect();
                    let (committed, members) = groups.committed();
                    let (committed, members) = (committed - groups_before.0, members - groups_before.1);
                    let shared = match committed {
                        0 => String::new(),
                        _ => format!("; {members} commands in {committed} commit groups"),
                    };
                    println!("         p50/p99 ms by command: {}{shared}", steps.join(", "));
                    // Sessions that ended during the phase are not counted.
                    let by_pool: Vec<String> = after
                        .by_pool
                        .iter()
                        .map(|(pool, spent)| {
                            let earlier = before.by_pool.get(pool).copied().unwrap_or_default();
                            format!("{pool} {:.3}", cpu(*spent, earlier))
                        })
                        .collect();
                    println!("         Postgres CPU ms a command by pool: {}", by_pool.join(", "));
                    println!("         state loads from: {}", loads_before.shown_since());
                    if !applied.is_empty() {
                        println!("         lag p99 ms by second of the phase: {}", by_second(&applied, started, phase));
                    }
                    // Without the relay there is no lag to split.
                    if !before_read.is_empty() {
                        let (before_read, reading, read_to_ack) = (
                            Summary::new(before_read, phase),
                            Summary::new(reading, phase),
                            Summary::new(read_to_ack, phase),
                        );
                        println!("         relay reads that found: {}", reads_before.shown_since());
                        println!(
                            "         relay p50/p99 ms: recorded → read sent {}/{}, read sent → rows back {}/{}, \
                             rows back → JetStream ack {}/{}",
                            ms(before_read.p50),
                            ms(before_read.p99),
                            ms(reading.p50),
                            ms(reading.p99),
                            ms(read_to_ack.p50),
                            ms(read_to_ack.p99)
                        );
                    }
                }
            }
        }
        let rounded = |mut ratios: Vec<f64>| {
            ratios.sort_by(f64::total_cmp);
            ratios.iter().map(|r| (r * 100.0).round() / 100.0).collect::<Vec<_>>()
        };
        let goal = match options.without {
            None => "goal at C=32: ≥ 0.50",
            Some(_) => "a decomposition run: the goal's workload runs the relay and the projector",
        };
        println!(
            "C={concurrency}: product / raw per round {:?} ({goal}); each command alone {:?}",
            rounded(ratios),
            rounded(alone)
        );
        println!(
            "C={concurrency}: CPU a command (Postgres + process + nats-server), product over raw, per round {:?}",
            rounded(cpu_ratios)
        );
        if options.without.is_none() {
            println!("C={concurrency}: {}", goal_held(&verdicts));
        }
    }
    let _ = stop.send(true);
    for task in [relay, projector].into_iter().flatten() {
        let _ = task.await;
    }
    database.pool().close();
    relay_database.pool().close();
    projector_database.pool().close();
    Ok(())
}

/// The goal's two halves (§2 of issue 15): at least half the raw append's
/// rate, with the projection lag's p99 within 50 ms, in the same round.
const GOAL_RATIO: f64 = 0.50;
const GOAL_LAG: Duration = Duration::from_millis(50);

/// In how many rounds both halves of the goal held, given each product
/// round's ratio to the raw append and its projection lag p99 (none: nothing
/// was projected, which does not meet it). The ratio is judged unrounded:
/// a 0.497 that the table shows as 0.50 does not hold.
fn goal_held(rounds: &[(f64, Option<Duration>)]) -> String {
    let rate_held = |ratio: f64| ratio >= GOAL_RATIO;
    let lag_held = |lag: Option<Duration>| lag.is_some_and(|lag| lag <= GOAL_LAG);
    let both = rounds.iter().filter(|&&(ratio, lag)| rate_held(ratio) && lag_held(lag)).count();
    let rate = rounds.iter().filter(|&&(ratio, _)| rate_held(ratio)).count();
    let lag = rounds.iter().filter(|&&(_, lag)| lag_held(lag)).count();
    let n = rounds.len();
    format!(
        "goal (≥ {GOAL_RATIO:.2} of raw and lag p99 ≤ {} ms in the same round) held in {both} of {n} rounds \
         (rate in {rate}, lag in {lag})",
        GOAL_LAG.as_millis()
    )
}

/// The projection lag's p99 for each second of a phase that began at
/// `started`, by when the events were applied (those applied after the
/// phase, its last commands', count in its last second): a miss made of
/// one slow second looks different from one spread over the phase.
fn by_second(applied: &[projector::Applied], started: Instant, phase: Duration) -> String {
    let seconds = phase.as_secs().max(1) as usize;
    let mut buckets = vec![Vec::new(); seconds];
    for event in applied {
        let second = event.at.saturating_duration_since(started).as_secs() as usize;
        buckets[second.min(seconds - 1)].push(event.lag);
    }
    let p99s: Vec<String> = buckets
        .into_iter()
        .map(|lags| match lags.is_empty() {
            true => "-".to_owned(),
            false => format!("{:.0}", Summary::new(lags, Duration::from_secs(1)).p99.as_secs_f64() * 1e3),
        })
        .collect();
    p99s.join(" ")
}

/// The commands of one stream's mix (create, 3 × assign, default, revoke).
const MIX_COMMANDS: usize = 6;

/// The mix's commands, in order (the product's latencies are also
/// reported per command; the three assigns as one).
const STEPS: [&str; 4] = ["create", "assign", "default", "revoke"];

/// Which of [`STEPS`] the mix's `n`th command is.
fn step_of(n: usize) -> usize {
    match n {
        0 => 0,
        1..=3 => 1,
        4 => 2,
        _ => 3,
    }
}

/// A closed loop at `concurrency`: each worker runs whole mixes (product) or
/// raw appends (six to a stream) until the phase ends. Also returns the product's
/// latencies by step of the mix.
#[allow(clippy::too_many_arguments)]
async fn measure(
    path: Path,
    concurrency: usize,
    phase: Duration,
    database: &Database,
    base: &str,
    secret: &[u8],
    round: usize,
) -> anyhow::Result<(Summary, Vec<Vec<Duration>>)> {
    let started = Instant::now();
    let deadline = started + phase;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let database = database.clone();
        let owner = Owner::new(secret, &format!("c{concurrency}r{round}w{worker}"))?;
        let mut http = match path {
            Path::Raw => None,
            _ => Some(Connection::open(base).await?),
        };
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut stream = 0usize;
            while Instant::now() < deadline {
                stream += 1;
                match path {
                    Path::Raw => {
                        // A stream's six events, one transaction each, as
                        // the product's mix and the peers harness's floor.
                        let stream = uuid::Uuid::new_v4();
                        for _ in 0..MIX_COMMANDS {
                            let begin = Instant::now();
                            super::append::raw_append(&database, &stream).await?;
                            samples.push((0, begin.elapsed()));
                            if Instant::now() >= deadline {
                                break;
                            }
                        }
                    }
                    Path::Http => {
                        let http = http.as_mut().expect("opened for this path");
                        let begin = Instant::now();
                        let (status, _) = http.send(Method::GET, "/health", None, None).await?;
                        anyhow::ensure!(status == 200, "health answered {status}");
                        samples.push((0, begin.elapsed()));
                    }
                    Path::Product | Path::Alone => {
                        let http = http.as_mut().expect("opened for this path");
                        samples.extend(owner.mix(http, stream).await?.into_iter().enumerate())
                    }
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let (mut samples, mut by_step) = (Vec::new(), vec![Vec::new(); STEPS.len()]);
    for worker in workers {
        for (n, sample) in worker.await?? {
            samples.push(sample);
            by_step[step_of(n)].push(sample);
        }
    }
    Ok((Summary::new(samples, started.elapsed()), by_step))
}

/// A user of the product, with a token.
struct Owner {
    /// `Bearer <token>`.
    authorization: HeaderValue,
}

impl Owner {
    fn new(secret: &[u8], name: &str) -> anyhow::Result<Self> {
        let owner = OwnerId::parse(name.to_owned()).map_err(|e| anyhow::anyhow!("owner {e}"))?;
        let token = mint_user_token(secret, &owner, chrono::Utc::now().timestamp() + 3600)?;
        Ok(Self { authorization: HeaderValue::from_str(&format!("Bearer {token}"))? })
    }

    /// The mix on a new stream (service `s{stream}`): the latency of each
    /// of its six commands.
    async fn mix(&self, http: &mut Connection, stream: usize) -> anyhow::Result<Vec<Duration>> {
        let service = format!("s{stream}");
        let mut samples = Vec::with_capacity(6);
        let mut send = async |method: Method, path: &str, body: Option<serde_json::Value>, expected: u16| {
            let begin = Instant::now();
            let (status, answer) = http.send(method, path, Some(&self.authorization), body.as_ref()).await?;
            anyhow::ensure!(status == expected, "{path} answered {status} (expected {expected})");
            anyhow::Ok((begin.elapsed(), answer))
        };
        let created = json!({"service": service, "name": "mix", "credential": {"kind": "api_key", "key": "k"}});
        let (took, created) = send(Method::POST, "/v1/connections", Some(created), 201).await?;
        samples.push(took);
        let created: serde_json::Value = serde_json::from_slice(&created)?;
        let id = created["connection_id"].as_str().unwrap_or_default().to_owned();
        let agents = format!("/v1/connections/{id}/agents");
        for agent in 0..3 {
            let body = json!({"agent_id": format!("agent-{stream}-{agent}")});
            samples.push(send(Method::POST, &agents, Some(body), 200).await?.0);
        }
        let default = format!("/v1/services/{service}/default");
        samples.push(send(Method::PUT, &default, Some(json!({"connection_id": id})), 200).await?.0);
        samples.push(send(Method::DELETE, &format!("/v1/connections/{id}"), None, 200).await?.0);
        Ok(samples)
    }
}

/// The database's transaction and row counters, and the CPU time of every
/// Postgres process on this machine (from /proc; zero where unreadable).
async fn counters(database: &Database) -> anyhow::Result<Counters> {
    let client = database.client().await?;
    let row = client
        .query_one(
            "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated FROM pg_stat_database \
             WHERE datname = current_database()",
            &[],
        )
        .await?;
    // The backends of this database by pool (`connections-commands`, ...):
    // which kind of work Postgres's CPU went to.
    let sessions = client
        .query("SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()", &[])
        .await?;
    let mut by_pool = BTreeMap::new();
    for session in sessions {
        let (pid, name): (i32, String) = (session.get(0), session.get(1));
        let pool = name.strip_prefix("connections-").unwrap_or("other").to_owned();
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|stat| cpu_of(&stat).1).unwrap_or_default();
        *by_pool.entry(pool).or_default() += cpu;
    }
    Ok(Counters {
        by_pool,
        transactions: row.get(0),
        inserted: row.get(1),
        updated: row.get(2),
        cpu: cpu_of_processes("postgres"),
        nats: cpu_of_processes("nats-server"),
        process: std::fs::read_to_string("/proc/self/stat").ok().map(|stat| cpu_of(&stat).1).unwrap_or_default(),
    })
}

/// The CPU time of every process named `name` on this machine.
fn cpu_of_processes(name: &str) -> Duration {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .map(|stat| cpu_of(&stat))
        .filter(|(command, _)| command == name)
        .map(|(_, cpu)| cpu)
        .sum()
}

/// A process's command name and CPU time (user + system) from its
/// `/proc/<pid>/stat` (zero where unreadable).
fn cpu_of(stat: &str) -> (String, Duration) {
    let ticks_per_second = 100.0; // USER_HZ on Linux

    // pid (comm) state ... : fields after the closing parenthesis.
    let Some((head, rest)) = stat.rsplit_once(") ") else { return (String::new(), Duration::ZERO) };
    let command = head.split_once(" (").map_or("", |(_, command)| command).to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after comm.
    let ticks = match (fields.get(11), fields.get(12)) {
        (Some(user), Some(system)) => user.parse::<u64>().unwrap_or(0) + system.parse::<u64>().unwrap_or(0),
        _ => 0,
    };
    (command, Duration::from_secs_f64(ticks as f64 / ticks_per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(started: Instant, at_ms: u64, lag_ms: u64) -> projector::Applied {
        projector::Applied { at: started + Duration::from_millis(at_ms), lag: Duration::from_millis(lag_ms) }
    }

    #[test]
    fn the_goal_holds_only_in_rounds_that_meet_both_halves() {
        let ms = Duration::from_millis;
        let rounds =
            [(0.52, Some(ms(40))), (0.49, Some(ms(40))), (0.60, Some(ms(51))), (0.50, Some(ms(50))), (0.70, None)];
        assert_eq!(
            goal_held(&rounds),
            "goal (≥ 0.50 of raw and lag p99 ≤ 50 ms in the same round) held in 2 of 5 rounds (rate in 4, lag in 3)"
        );
    }

    #[test]
    fn the_lag_is_told_second_by_second_and_late_events_count_in_the_last() {
        let started = Instant::now();
        let events = [
            applied(started, 100, 30),
            applied(started, 900, 40),
            applied(started, 2_500, 90),
            // Applied after the phase: its last second.
            applied(started, 3_400, 20),
        ];
        assert_eq!(by_second(&events, started, Duration::from_secs(3)), "40 - 90");
    }
}
