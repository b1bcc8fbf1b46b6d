//! The relay failover benchmark: `instances` server processes on one
//! database under a steady command rate; the relay's leader is killed with
//! SIGKILL `kills` times (and started again). For each kill: how long until
//! another instance reports the relay role, and the gap on the events
//! stream (the longest silence around the kill: the old leader's last
//! publish to the new leader's first). Baseline from the same run: the
//! longest silence in a window of the same length just before each kill,
//! with no kill.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connections_fanout::nats::connect_as;
use connections_fanout::Names;
use connections_sealing::MasterKey;
use futures_util::StreamExt;
use serde_json::json;

use super::stats::ms;

/// Options of `connections-bench failover`.
#[derive(clap::Args)]
pub struct FailoverOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// The NATS server, or a cluster's nodes (comma-separated).
    #[arg(long, env = "CONNECTIONS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Replicas of the streams (3 on a 3-node cluster).
    #[arg(long, env = "CONNECTIONS_NATS_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// Server instances.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Kills of the relay's leader.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Commands per second during the run (creates, spread over the instances).
    #[arg(long, default_value_t = 200)]
    rate: u32,
}

struct Instance {
    child: Child,
    base: String,
}

/// Runs the benchmark.
pub async fn run(options: FailoverOptions) -> anyhow::Result<()> {
    let database = super::fresh_database(&options.server).await?;
    let url = database.url.clone();
    let names = Names::new(&format!("fbench{}", &uuid::Uuid::now_v7().simple().to_string()[20..]))?;
    let access = super::nats_access(&options.nats_url)?;
    let secret = MasterKey::generate_base64()?;
    let env = Env { url: url.clone(), names: names.clone(), secret, options: &options };
    let result = measure(&env, &access).await;
    let context = async_nats::jetstream::new(super::bench_nats(&access, &names).await?);
    let _ = context.delete_stream(names.events_stream()).await;
    let _ = context.delete_stream(names.notices_stream()).await;
    database.remove().await?;
    result
}

struct Env<'a> {
    url: String,
    names: Names,
    secret: String,
    options: &'a FailoverOptions,
}

impl Env<'_> {
    fn spawn(&self, index: usize) -> anyhow::Result<Instance> {
        let mut command = Command::new(super::server_binary()?);
        command
            .arg("serve")
            .env("CONNECTIONS_DATABASE_URL", &self.url)
            .env("CONNECTIONS_LISTEN", "127.0.0.1:0")
            .env("CONNECTIONS_NATS_URL", &self.options.nats_url)
            .env("CONNECTIONS_NATS_PREFIX", self.names.prefix())
            .env("CONNECTIONS_NATS_REPLICAS", self.options.replicas.to_string())
            .env("CONNECTIONS_INSTANCE", format!("bench{index}"))
            .env("CONNECTIONS_JWT_SECRET", &self.secret)
            .env("CONNECTIONS_MASTER_KEY", &self.secret)
            .env("CONNECTIONS_DATABASE_POOL", "8")
            .env("CONNECTIONS_LOG", "warn")
            .env_remove("CONNECTIONS_MASTER_KEY_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if std::env::var_os("CONNECTIONS_NATS_ISSUER_FILE").is_none() {
            command.env("CONNECTIONS_NATS_INSECURE", "1");
        }
        let mut child = command.spawn()?;
        let mut lines = BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).lines();
        let base = loop {
            match lines.next() {
                Some(line) => {
                    if let Some(base) = line?.strip_prefix("listening on ") {
                        break base.trim().to_owned();
                    }
                }
                None => anyhow::bail!("instance {index} exited before listening"),
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Instance { child, base })
    }
}

async fn measure(env: &Env<'_>, access: &connections_fanout::nats::NatsAccess) -> anyhow::Result<()> {
    let options = env.options;
    let mut instances = (0..options.instances).map(|i| env.spawn(i)).collect::<anyhow::Result<Vec<_>>>()?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let bases: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(instances.iter().map(|i| i.base.clone()).collect()));

    // The events as they reach JetStream, timed.
    let mut grant = connections_natsauth::Grant::service(&env.names);
    grant.subscribe.allow.push(env.names.events_wildcard());
    let watcher = connect_as(access, &grant, &env.names.service_inbox(), "bench failover").await?;
    let mut subscription = watcher.subscribe(env.names.events_wildcard()).await?;
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let recorded = arrivals.clone();
    tokio::spawn(async move {
        while subscription.next().await.is_some() {
            recorded.lock().expect("arrivals").push(Instant::now());
        }
    });

    // Creates at a fixed rate, spread over the instances.
    let owner = connections_domain::OwnerId::parse("failover-owner").map_err(|e| anyhow::anyhow!("{e}"))?;
    let token =
        connections_api::auth::mint_user_token(env.secret.as_bytes(), &owner, chrono::Utc::now().timestamp() + 3600)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (http, bases, stop) = (http.clone(), bases.clone(), stop.clone());
        let period = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut turn = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                ticks.tick().await;
                turn += 1;
                let base = {
                    let bases = bases.lock().expect("bases");
                    bases[turn % bases.len()].clone()
                };
                let (http, token) = (http.clone(), token.clone());
                tokio::spawn(async move {
                    let _ = http
                        .post(format!("{base}/v1/connections"))
                        .bearer_auth(token)
                        .json(&json!({"service": format!("svc{}", turn % 50), "name": "f",
                                      "credential": {"kind": "api_key", "key": "k"}}))
                        .send()
                        .await;
                });
            }
        })
    };

    println!(
        "bench failover: {} instances, {} commands/s, NATS {} (streams R{}), {} kills of the relay's leader",
        options.instances, options.rate, options.nats_url, options.replicas, options.kills
    );
    println!("{:>5} {:>14} {:>14} {:>22}", "kill", "takeover ms", "gap ms", "baseline silence ms");
    let mut takeovers = Vec::new();
    let mut gaps = Vec::new();
    let mut baselines = Vec::new();
    for kill in 1..=options.kills {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leader = holder(&http, &instances, Duration::from_secs(20)).await?;
        let killed_at = Instant::now();
        instances[leader].child.kill()?;
        let _ = instances[leader].child.wait();
        let next = holder(&http, &instances, Duration::from_secs(20)).await?;
        anyhow::ensure!(next != leader, "the killed instance still leads");
        let takeover = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let window = takeover + Duration::from_secs(1);
        let (gap, baseline) = {
            let arrivals = arrivals.lock().expect("arrivals");
            let silence = |from: Instant, to: Instant| {
                let inside: Vec<Instant> = arrivals.iter().copied().filter(|at| *at >= from && *at <= to).collect();
                inside.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or(to - from)
            };
            let margin = Duration::from_millis(200);
            (silence(killed_at - margin, killed_at + window), silence(killed_at - margin - window, killed_at - margin))
        };
        println!("{kill:>5} {:>14} {:>14} {:>22}", ms(takeover), ms(gap), ms(baseline));
        takeovers.push(takeover);
        gaps.push(gap);
        baselines.push(baseline);
        instances[leader] = env.spawn(leader)?;
        *bases.lock().expect("bases") = instances.iter().map(|i| i.base.clone()).collect();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = load.await;
    for summary in [
        ("takeover (kill → another instance holds the relay)", &mut takeovers),
        ("publish gap (longest silence on the stream around the kill)", &mut gaps),
        ("baseline: longest silence before the kill, no kill", &mut baselines),
    ] {
        summary.1.sort();
        println!(
            "{:<62} median {} ms, worst {} ms",
            summary.0,
            ms(summary.1[summary.1.len() / 2]),
            ms(*summary.1.last().unwrap_or(&Duration::ZERO))
        );
    }
    for instance in &mut instances {
        let _ = instance.child.kill();
        let _ = instance.child.wait();
    }
    Ok(())
}

/// The instance that reports the relay role, waiting up to `within`.
async fn holder(http: &reqwest::Client, instances: &[Instance], within: Duration) -> anyhow::Result<usize> {
    let started = Instant::now();
    loop {
        for (index, instance) in instances.iter().enumerate() {
            if let Ok(response) = http.get(format!("{}/health", instance.base)).send().await {
                if let Ok(body) = response.json::<serde_json::Value>().await {
                    if body["roles"]
                        .as_array()
                        .is_some_and(|roles| roles.iter().any(|r| r == connections_fanout::roles::RELAY))
                    {
                        return Ok(index);
                    }
                }
            }
        }
        anyhow::ensure!(started.elapsed() < within, "no instance took the relay within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
