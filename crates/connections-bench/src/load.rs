//! The resource-bounds benchmark: revokes and resolves at a fixed rate,
//! first on an idle server (the baseline, same run), then while 2,000 idle
//! change streams are open and 200 readers wait on a position the read
//! model never reaches (no projector runs, so every such read waits its
//! full 2 s and answers the documented 503). The p99 of revoke and resolve
//! under load is compared with the baseline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connections_api::auth::{mint_agent_token, mint_user_token};
use connections_domain::{AgentId, OwnerId};
use connections_sealing::MasterKey;
use connections_store::connect_pool;
use serde_json::json;

use super::stats::{ms, Summary};

/// Options of `connections-bench load`.
#[derive(clap::Args)]
pub struct LoadOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// Seconds of timed revokes and resolves per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Resolves per second.
    #[arg(long, default_value_t = 100)]
    resolve_rate: u64,
    /// Revokes per second.
    #[arg(long, default_value_t = 20)]
    revoke_rate: u64,
    /// Idle change streams held open under load (16 per user, the limit).
    #[arg(long, default_value_t = 2000)]
    streams: usize,
    /// Readers waiting on an unreachable `min_position` under load.
    #[arg(long, default_value_t = 200)]
    waiters: usize,
}

/// Runs the benchmark.
pub async fn run(options: LoadOptions) -> anyhow::Result<()> {
    let database = super::fresh_database(&options.server).await?;
    let result = run_on(&database.url, &options).await;
    database.remove().await?;
    result
}

/// Statuses seen, by code.
pub(super) type Statuses = Arc<Mutex<BTreeMap<u16, usize>>>;

async fn run_on(url: &str, options: &LoadOptions) -> anyhow::Result<()> {
    let secret = MasterKey::generate_base64()?.into_bytes();
    // As `serve` sizes them: commands and resolves apart from reads.
    let master_key = Arc::new(MasterKey::from_base64("bench", &MasterKey::generate_base64()?)?);
    let state = connections_api::AppState::local(
        connect_pool(url, 32)?,
        connect_pool(url, 16)?,
        master_key,
        &secret,
        Default::default(),
    )?;
    let base = super::serve_locally(state).await?;

    let owner = OwnerId::parse("load-owner").map_err(|e| anyhow::anyhow!("{e}"))?;
    let user_token = mint_user_token(&secret, &owner, chrono::Utc::now().timestamp() + 3600)?;
    let agent = AgentId::parse("agent-r").map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent_token = mint_agent_token(&secret, &agent, &owner, chrono::Utc::now().timestamp() + 3600)?;
    let http = reqwest::Client::new();
    let create = |service: String, agent: Option<&str>| {
        let mut body = json!({"service": service, "name": "n", "credential": {"kind": "api_key", "key": "k"}});
        if let Some(agent) = agent {
            body["agent_id"] = json!(agent);
        }
        http.post(format!("{base}/v1/connections")).bearer_auth(&user_token).json(&body).send()
    };
    create("resolved".into(), Some("agent-r")).await?.error_for_status()?;
    // One connection (on a service of its own) per timed revoke.
    let revokes_per_phase = (options.revoke_rate * options.seconds) as usize;
    let mut to_revoke = Vec::with_capacity(2 * revokes_per_phase);
    for n in 0..2 * revokes_per_phase {
        let created: serde_json::Value = create(format!("r{n}"), None).await?.error_for_status()?.json().await?;
        to_revoke.push(created["connection_id"].as_str().unwrap_or_default().to_owned());
    }
    let head = created_head(&http, &base, &user_token).await?;

    println!(
        "bench load: resolves {}/s and revokes {}/s for {} s per phase; under load: {} idle change streams, {} readers \
         waiting on an unreachable min_position (no projector runs)",
        options.resolve_rate, options.revoke_rate, options.seconds, options.streams, options.waiters
    );
    let baseline = timed(&http, &base, &agent_token, &user_token, options, &to_revoke[..revokes_per_phase]).await?;

    // The load: idle streams, and readers that each wait out min_position.
    let stop = Arc::new(AtomicBool::new(false));
    let load_statuses: Statuses = Arc::default();
    let mut streams = Vec::with_capacity(options.streams);
    let stream_client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    for n in 0..options.streams {
        let user = OwnerId::parse(format!("watcher-{}", n / 16)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let token = mint_user_token(&secret, &user, chrono::Utc::now().timestamp() + 3600)?;
        let response = stream_client.get(format!("{base}/v1/stream")).bearer_auth(token).send().await?;
        *load_statuses.lock().expect("statuses").entry(response.status().as_u16()).or_default() += 1;
        streams.push(response);
    }
    let mut waiters = Vec::with_capacity(options.waiters);
    for _ in 0..options.waiters {
        let (http, base, token, stop, statuses) =
            (http.clone(), base.clone(), user_token.clone(), stop.clone(), load_statuses.clone());
        waiters.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = match http
                    .get(format!("{base}/v1/services?min_position={head}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                *statuses.lock().expect("statuses").entry(status).or_default() += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = timed(&http, &base, &agent_token, &user_token, options, &to_revoke[revokes_per_phase..]).await?;
    stop.store(true, Ordering::Relaxed);
    for waiter in waiters {
        let _ = waiter.await;
    }
    drop(streams);

    println!("{:<10} {:<9} {:>6} {:>9} {:>9} {:>9}  statuses", "phase", "op", "n", "p50 ms", "p99 ms", "max ms");
    for (phase, result) in [("baseline", &baseline), ("loaded", &loaded)] {
        for (op, summary, statuses) in [
            ("resolve", &result.resolve, &result.resolve_statuses),
            ("revoke", &result.revoke, &result.revoke_statuses),
        ] {
            println!(
                "{:<10} {:<9} {:>6} {:>9} {:>9} {:>9}  {:?}",
                phase,
                op,
                summary.operations,
                ms(summary.p50),
                ms(summary.p99),
                ms(summary.max),
                statuses.lock().expect("statuses")
            );
        }
    }
    let ratio = |a: &Summary, b: &Summary| b.p99.as_secs_f64() / a.p99.as_secs_f64().max(1e-9);
    println!(
        "p99 loaded / baseline: resolve {:.2}, revoke {:.2} (goal ≤ 2)",
        ratio(&baseline.resolve, &loaded.resolve),
        ratio(&baseline.revoke, &loaded.revoke)
    );
    println!(
        "load requests by status (streams opened, then min_position reads): {:?}",
        load_statuses.lock().expect("statuses")
    );
    Ok(())
}

/// The newest position, from a command answer.
async fn created_head(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<i64> {
    let body = json!({"service": "head", "name": "n", "credential": {"kind": "api_key", "key": "k"}});
    let created: serde_json::Value =
        http.post(format!("{base}/v1/connections")).bearer_auth(token).json(&body).send().await?.json().await?;
    created["position"].as_i64().ok_or_else(|| anyhow::anyhow!("no position in {created}"))
}

struct Timed {
    resolve: Summary,
    revoke: Summary,
    resolve_statuses: Statuses,
    revoke_statuses: Statuses,
}

/// Resolves and revokes at fixed rates (open loop: each starts on its tick
/// whether or not the previous one finished), for `options.seconds`.
async fn timed(
    http: &reqwest::Client,
    base: &str,
    agent_token: &str,
    user_token: &str,
    options: &LoadOptions,
    to_revoke: &[String],
) -> anyhow::Result<Timed> {
    let resolve_samples = Arc::new(Mutex::new(Vec::new()));
    let revoke_samples = Arc::new(Mutex::new(Vec::new()));
    let resolve_statuses: Statuses = Arc::default();
    let revoke_statuses: Statuses = Arc::default();
    let mut tasks = Vec::new();
    let started = Instant::now();
    let resolves = options.resolve_rate * options.seconds;
    let mut revokes = to_revoke.iter();
    let tick = Duration::from_secs(1) / options.resolve_rate as u32;
    let revoke_every = (options.resolve_rate / options.revoke_rate.max(1)).max(1);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..resolves {
        interval.tick().await;
        let request =
            http.post(format!("{base}/v1/resolve")).bearer_auth(agent_token).json(&json!({"service": "resolved"}));
        tasks.push(spawn_timed(request, resolve_samples.clone(), resolve_statuses.clone()));
        if n % revoke_every == 0 {
            if let Some(id) = revokes.next() {
                let request = http.delete(format!("{base}/v1/connections/{id}")).bearer_auth(user_token);
                tasks.push(spawn_timed(request, revoke_samples.clone(), revoke_statuses.clone()));
            }
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let take = |samples: Arc<Mutex<Vec<Duration>>>| std::mem::take(&mut *samples.lock().expect("samples"));
    Ok(Timed {
        resolve: Summary::new(take(resolve_samples), elapsed),
        revoke: Summary::new(take(revoke_samples), elapsed),
        resolve_statuses,
        revoke_statuses,
    })
}

/// Sends `request` now, recording its latency and status.
pub(super) fn spawn_timed(
    request: reqwest::RequestBuilder,
    samples: Arc<Mutex<Vec<Duration>>>,
    statuses: Statuses,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let began = Instant::now();
        let status = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
            Err(_) => 0,
        };
        samples.lock().expect("samples").push(began.elapsed());
        *statuses.lock().expect("statuses").entry(status).or_default() += 1;
    })
}
