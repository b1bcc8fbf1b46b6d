//! The master key rotation benchmark: `--connections` connections (one per
//! user) created under key k1; then, on a server whose keyring is k2 with k1
//! still loaded, `rekey::rewrap_all` moves every data key to k2 while
//! resolves run at a fixed rate. Measured, in the same run: the rewrap rate
//! against a raw `UPDATE` of the same `data_keys` rows (one statement per
//! row, same concurrency), and resolve latency (full histogram) during the
//! rewrap against the same resolve load without it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connections_api::auth::{mint_agent_token, mint_user_token};
use connections_api::{rekey, AppState};
use connections_domain::{AgentId, OwnerId};
use connections_sealing::MasterKey;
use connections_store::connect_pool;
use futures_util::StreamExt;
use serde_json::json;

use super::stats::{ms, Summary};

/// Options of `connections-bench rewrap`.
#[derive(clap::Args)]
pub struct RewrapOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// Connections (one per user) whose data keys are re-wrapped.
    #[arg(long, default_value_t = 100_000)]
    connections: usize,
    /// Re-wraps (and raw updates) in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Resolves per second, with and without the rewrap.
    #[arg(long, default_value_t = 100)]
    resolve_rate: u64,
    /// Seconds of resolves without the rewrap (the baseline).
    #[arg(long, default_value_t = 15)]
    baseline_seconds: u64,
}

/// Runs the benchmark.
pub async fn run(options: RewrapOptions) -> anyhow::Result<()> {
    let database = super::fresh_database(&options.server).await?;
    let result = run_on(&database.url, &options).await;
    database.remove().await?;
    result
}

fn state(url: &str, master_key: MasterKey, secret: &[u8]) -> anyhow::Result<AppState> {
    Ok(AppState::local(
        connect_pool(url, 32)?,
        connect_pool(url, 8)?,
        Arc::new(master_key),
        secret,
        Default::default(),
    )?)
}

async fn run_on(url: &str, options: &RewrapOptions) -> anyhow::Result<()> {
    let secret = MasterKey::generate_base64()?.into_bytes();
    let k1 = MasterKey::from_base64("k1", &MasterKey::generate_base64()?)?;
    let k2 = MasterKey::from_base64("k2", &MasterKey::generate_base64()?)?;
    let before = super::serve_locally(state(url, k1.clone(), &secret)?).await?;
    let http = reqwest::Client::new();
    println!(
        "bench rewrap: {} connections (one per user), {} re-wraps in flight, resolves at {}/s",
        options.connections, options.concurrency, options.resolve_rate
    );
    let created = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..options.connections)
        .map(|n| {
            let (http, before, secret) = (&http, &before, &secret);
            async move {
                let owner = OwnerId::parse(format!("user-{n}")).map_err(|e| anyhow::anyhow!("{e}"))?;
                let token = mint_user_token(secret, &owner, chrono::Utc::now().timestamp() + 3600)?;
                let body = json!({"service": "github", "name": "Code", "agent_id": "agent",
                    "credential": {"kind": "api_key", "key": format!("k-{n}")}});
                http.post(format!("{before}/v1/connections"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    println!("created {} connections in {:.1} s", options.connections, created.elapsed().as_secs_f64());

    // The rotated server: k2 current, k1 still unwrapping.
    let ring = k2.with_previous(vec![k1.clone()])?.deriving_from(&k1);
    let after = super::serve_locally(state(url, ring.clone(), &secret)?).await?;
    // The rewrapper has pools of its own, as `connections keys rewrap` does
    // in its own process.
    let rotated = state(url, ring, &secret)?;
    let tokens: Vec<(String, usize)> = (0..200)
        .map(|i| {
            let n = (i * 7919) % options.connections;
            let owner = OwnerId::parse(format!("user-{n}")).map_err(|e| anyhow::anyhow!("{e}"))?;
            let agent = AgentId::parse("agent").map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((mint_agent_token(&secret, &agent, &owner, chrono::Utc::now().timestamp() + 3600)?, n))
        })
        .collect::<anyhow::Result<_>>()?;

    let idle =
        resolves(&http, &after, &tokens, options.resolve_rate, Duration::from_secs(options.baseline_seconds), None)
            .await?;

    // The raw floor: one UPDATE per row of the same table, same concurrency.
    let client = rotated.database.pool().get().await?;
    let ids: Vec<uuid::Uuid> =
        client.query("SELECT connection_id FROM data_keys", &[]).await?.iter().map(|row| row.get(0)).collect();
    drop(client);
    let raw_started = Instant::now();
    let raw: Vec<anyhow::Result<()>> = futures_util::stream::iter(ids.chunks(ids.len().div_ceil(options.concurrency)))
        .map(|chunk| {
            let database = rotated.database.clone();
            async move {
                let client = database.pool().get().await?;
                let statement =
                    client.prepare("UPDATE data_keys SET wrapped_key = wrapped_key WHERE connection_id = $1").await?;
                for id in chunk {
                    client.execute(&statement, &[id]).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    raw.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let raw_rate = ids.len() as f64 / raw_started.elapsed().as_secs_f64();

    // The rewrap, with the same resolve load.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (http, after, tokens, done) = (http.clone(), after.clone(), tokens.clone(), done.clone());
        let rate = options.resolve_rate;
        tokio::spawn(async move { resolves(&http, &after, &tokens, rate, Duration::from_secs(3600), Some(done)).await })
    };
    let started = Instant::now();
    let report = rekey::rewrap_all(&rotated, 500, options.concurrency).await?;
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let during = load.await??;
    let rate = report.rewrapped as f64 / elapsed.as_secs_f64();

    println!(
        "raw UPDATE of the same {} rows (one per statement, {} at once): {:.0} rows/s",
        ids.len(),
        options.concurrency,
        raw_rate
    );
    println!(
        "rewrap: {} keys in {:.1} s = {:.0} keys/s ({} skipped); remaining {:?}",
        report.rewrapped,
        elapsed.as_secs_f64(),
        rate,
        report.skipped,
        report.remaining
    );
    println!("ratio rewrap / raw UPDATE: {:.2}", rate / raw_rate);
    for (label, summary) in [("without the rewrap", &idle), ("during the rewrap", &during)] {
        println!(
            "resolve {label}: {} at {:.0}/s, p50 {} p99 {} max {} ms",
            summary.operations,
            summary.per_second,
            ms(summary.p50),
            ms(summary.p99),
            ms(summary.max)
        );
    }
    println!("ratio resolve p99 during / without: {:.2}", during.p99.as_secs_f64() / idle.p99.as_secs_f64());
    Ok(())
}

/// Resolves at `rate` per second (fixed rate, open loop) for `seconds` or
/// until `until` is set; every answer must be 200.
async fn resolves(
    http: &reqwest::Client,
    base: &str,
    tokens: &[(String, usize)],
    rate: u64,
    seconds: Duration,
    until: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> anyhow::Result<Summary> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0.. {
        ticker.tick().await;
        let stop = until.as_ref().is_some_and(|flag| flag.load(std::sync::atomic::Ordering::SeqCst));
        if stop || started.elapsed() >= seconds {
            break;
        }
        let (token, n) = tokens[i % tokens.len()].clone();
        let (http, base, samples, failures) = (http.clone(), base.to_owned(), samples.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = http
                .post(format!("{base}/v1/resolve"))
                .bearer_auth(token)
                .json(&json!({"service": "github"}))
                .send()
                .await;
            match answer {
                Ok(answer) if answer.status() == 200 => samples.lock().expect("samples").push(sent.elapsed()),
                Ok(answer) => failures.lock().expect("failures").push(format!("user-{n}: {}", answer.status())),
                Err(error) => failures.lock().expect("failures").push(format!("user-{n}: {error}")),
            }
        }));
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.await?;
    }
    let failures = failures.lock().expect("failures").clone();
    anyhow::ensure!(failures.is_empty(), "resolves failed: {:?}", &failures[..failures.len().min(5)]);
    let samples = samples.lock().expect("samples").clone();
    Ok(Summary::new(samples, elapsed))
}
