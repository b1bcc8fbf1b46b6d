//! The revocation benchmark.
//!
//! For N agent clients (each with its own NATS connection and the credential
//! cached), revocations at a fixed pace; for each, the time from the revoke
//! call's return — and, separately, from its commit (observed as the
//! server's announcement of it) — until the last of the N clients dropped the credential.
//! In the same run, the floor: a raw core-NATS publish to N subscribers on
//! the same server, until the last one received it. Then resolve latency,
//! uncached (HTTP, recorded in the access log) and from the cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use connections_agent::{AgentClient, AgentConfig, InvalidationReason};
use connections_api::auth::{mint_agent_token, mint_user_token, Authenticator};
use connections_api::runtime_nats::RuntimeNats;
use connections_api::{router, AppState, Lifecycle};
use connections_domain::{AgentId, OwnerId};
use connections_fanout::nats::{connect_as, NatsAccess};
use connections_fanout::relay::{self, RelayConfig};
use connections_fanout::{Names, Signals, UrgentNotices};
use connections_natsauth::Grant;
use connections_sealing::MasterKey;
use connections_store::{connect_pool, EventLog};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::watch;

use super::stats::{ms, Summary};

/// Options of `connections-bench revocation`.
#[derive(clap::Args)]
pub struct RevocationOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// The NATS server, or the nodes of a cluster (comma-separated): the
    /// runtimes, and the raw fan-out's subscribers, are spread over them in
    /// turn.
    #[arg(long, env = "CONNECTIONS_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Replicas of the streams the relay creates (3 on a 3-node cluster).
    #[arg(long, env = "CONNECTIONS_NATS_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// Also measure the raw fan-out on this unauthenticated NATS server (for
    /// the cost of authentication and permissions themselves).
    #[arg(long)]
    open_nats_url: Option<String>,
    /// Lifetime of runtimes' NATS credentials (renewed at two thirds).
    #[arg(long, default_value_t = 300)]
    runtime_ttl: u64,
    /// Client counts.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 100, 1000])]
    clients: Vec<usize>,
    /// Revocations per client count (one every 200 ms).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Replace the connection (`POST /v1/connections/{id}/replace`, which
    /// moves every agent to a new connection) instead of revoking it.
    #[arg(long)]
    replace: bool,
}

/// Runs the benchmark.
pub async fn run(options: RevocationOptions) -> anyhow::Result<()> {
    let deployment = super::Deployment::create(&options.server, &options.nats_url, "rbench").await?;
    let result = run_on(&deployment.url, &deployment.names, &deployment.access, &options).await;
    deployment.remove().await?;
    result
}

async fn run_on(url: &str, names: &Names, access: &NatsAccess, options: &RevocationOptions) -> anyhow::Result<()> {
    let database = connect_pool(url, 16)?;
    let secret = MasterKey::generate_base64()?.into_bytes();
    let signals = Signals::new();
    let (stop, stopping) = watch::channel(false);
    let mut relay_config = RelayConfig::new(names.clone(), url.to_owned(), access.clone());
    relay_config.replicas = options.replicas;
    let (relayed, relay_watch) = RelayWatch::start();
    relay_config.acked = Some(relayed);
    let relay = tokio::spawn(relay::run(database.clone(), relay_config, signals.clone(), stopping));
    let state = AppState {
        database: database.clone(),
        reads: database.clone(),
        master_key: Arc::new(MasterKey::from_base64("bench", &MasterKey::generate_base64()?)?),
        authenticator: Arc::new(Authenticator::hs256(&secret)?),
        signals: signals.clone(),
        // As `serve` runs it: commands publish their urgent notices at once.
        lifecycle: Lifecycle {
            urgent_notices: Some(UrgentNotices::new(
                connections_fanout::nats::connect(access, names, "bench server").await?,
                names.clone(),
                signals.stored_notices.clone(),
            )),
            ..Default::default()
        },
        settings: Default::default(),
        runtime_nats: Arc::new(RuntimeNats {
            names: names.clone(),
            urls: nodes(&options.nats_url),
            issuer: access.issuer.clone(),
            ttl: Duration::from_secs(options.runtime_ttl),
        }),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let watches = Watches {
        commits: CommitWatch::start(&signals),
        notices: NoticeWatch::start(access, names).await?,
        relay: relay_watch,
        database: database.clone(),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!(
        "bench revocation: {} {} per client count, one every 200 ms; NATS {} ({} node(s), streams R{}; {})",
        options.rounds,
        if options.replace { "replacements (every agent moved to a new connection)" } else { "revocations" },
        options.nats_url,
        nodes(&options.nats_url).len(),
        options.replicas,
        if access.issuer.is_some() {
            "JWT authentication, runtimes with scoped credentials"
        } else {
            "no authentication: set CONNECTIONS_NATS_ISSUER_FILE to measure with permissions in force"
        }
    );
    println!("{:>6} {:<38} {:>9} {:>9} {:>9}", "N", "measurement", "p50 ms", "p99 ms", "max ms");
    for &n in &options.clients {
        // The floor: a raw fan-out to N other subscribers, after each
        // revocation (interleaved, so that both see the machine as it was
        // then) and again after all of them.
        let mut raw = RawFanout::start(access, names, n).await?;
        let Rounds { from_return, from_commit, to_notice, interleaved, connects } =
            revocations(&base, &secret, options, n, &watches, &mut raw).await?;
        // The N runtimes have just disconnected; let the server settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let floor = raw_fanout(&mut raw, options.rounds).await?;
        drop(raw);
        println!(
            "{:>6} {:<38} {:>9} {:>9} {:>9}   all {n} in {:.2} s",
            n,
            "runtime: obtain credentials + connect",
            ms(connects.summary.p50),
            ms(connects.summary.p99),
            ms(connects.summary.max),
            connects.wall.as_secs_f64()
        );
        if connects.failed_closed > 0 {
            println!(
                "{:>6} clients that failed closed (NATS down or dropped notices) instead: {}",
                n, connects.failed_closed
            );
        }
        if let Some(open_url) = &options.open_nats_url {
            let mut open = RawFanout::start(&NatsAccess::insecure(open_url.clone()), names, n).await?;
            let open = raw_fanout(&mut open, options.rounds).await?;
            println!(
                "{:>6} {:<38} {:>9} {:>9} {:>9}",
                n,
                "raw, unauthenticated server (other)",
                ms(open.p50),
                ms(open.p99),
                ms(open.max)
            );
        }
        let returned = if options.replace {
            "replace returned → last client dropped"
        } else {
            "revoke returned → last client dropped"
        };
        for (label, summary) in [
            (returned, &from_return),
            ("commit → last client dropped", &from_commit),
            ("commit → revoked notice at one watcher", &to_notice),
            ("raw publish → last of N, interleaved", &interleaved),
            ("raw publish → last of N, after", &floor),
        ] {
            println!("{:>6} {:<38} {:>9} {:>9} {:>9}", n, label, ms(summary.p50), ms(summary.p99), ms(summary.max));
        }
        for (label, raw) in [("interleaved", &interleaved), ("after", &floor)] {
            let margin = from_return.p99.saturating_sub(raw.p99);
            println!("{:>6} {:<38} {:>9} {:>9}", n, format!("difference (revocation − raw {label})"), "", ms(margin));
        }
    }
    let (uncached, cached) = resolve_latency(&base, &secret).await?;
    println!(
        "resolve, uncached (POST /v1/resolve: read, unseal, access log, commit): p50 {} ms, p99 {} ms over {} calls",
        ms(uncached.p50),
        ms(uncached.p99),
        uncached.operations
    );
    println!(
        "resolve, from the cache: p50 {} ns, p99 {} ns, max {} ns over {} calls",
        cached.p50.as_nanos(),
        cached.p99.as_nanos(),
        cached.max.as_nanos(),
        cached.operations
    );
    let _ = stop.send(true);
    let _ = relay.await;
    database.pool().close();
    Ok(())
}

/// N clients cache one owner's default; `rounds` times: revoke, measure,
/// set up a fresh default, let the clients cache it again.
async fn revocations(
    base: &str,
    secret: &[u8],
    options: &RevocationOptions,
    n: usize,
    watches: &Watches,
    raw: &mut RawFanout,
) -> anyhow::Result<Rounds> {
    let Watches { commits, notices, relay, database } = watches;
    let mut backlog = Vec::new();
    let mut copies = Vec::new();
    let owner = OwnerId::parse(format!("owner-{n}")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let user_token = mint_user_token(secret, &owner, chrono::Utc::now().timestamp() + 3600)?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let agent = AgentId::parse(format!("agent-{i}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        tokens.push(mint_agent_token(secret, &agent, &owner, chrono::Utc::now().timestamp() + 3600)?);
    }
    // Every runtime obtains its NATS credentials and connects, 8 at a time.
    let started = Instant::now();
    let nodes = nodes(&options.nats_url);
    let connected = futures_util::stream::iter(tokens.into_iter().enumerate())
        .map(|(index, token)| {
            let mut config = AgentConfig::new(base, token);
            if nodes.len() > 1 {
                config.nats_url = Some(nodes[index % nodes.len()].clone());
            }
            async move {
                let began = Instant::now();
                AgentClient::connect(config).await.map(|client| (client, began.elapsed()))
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let wall = started.elapsed();
    let mut clients = Vec::with_capacity(n);
    let mut connect_times = Vec::with_capacity(n);
    for outcome in connected {
        let (client, took) = outcome?;
        connect_times.push(took);
        clients.push(client);
    }
    let mut connects =
        Connects { summary: Summary::new(connect_times, wall.max(Duration::from_millis(1))), wall, failed_closed: 0 };
    let mut receivers: Vec<_> = clients.iter().map(|client| client.invalidations()).collect();
    let mut interleaved = Vec::new();
    let mut median_client = Vec::new();
    let mut from_return = Vec::new();
    let mut from_commit = Vec::new();
    let mut to_notice = Vec::new();
    // When each revoke returned, and each raw round began, on the wall
    // clock: to find a late round in traces taken beside the run (a
    // collector's log, `perf sched`, a CPU probe).
    let mut returned_at = Vec::new();
    let mut raw_at = Vec::new();
    for round in 0..options.rounds {
        // Each round on a service of its own, so that each round's stream
        // starts empty (a stream is folded whole per command).
        let service = format!("svc{round}");
        // A fresh default, cached by every client (bounded concurrency).
        let created: serde_json::Value = http
            .post(format!("{base}/v1/connections"))
            .bearer_auth(&user_token)
            .json(&json!({"service": service, "name": "bench", "credential": {"kind": "api_key", "key": "k"}}))
            .send()
            .await?
            .json()
            .await?;
        let id = created["connection_id"].as_str().unwrap_or_default().to_owned();
        http.put(format!("{base}/v1/services/{service}/default"))
            .bearer_auth(&user_token)
            .json(&json!({"connection_id": id}))
            .send()
            .await?;
        let resolved = futures_util::stream::iter(clients.iter())
            .map(|client| {
                let (service, id) = (service.clone(), &id);
                async move {
                    // Every agent binds the new default on its first resolve, all
                    // on the owner's one stream for the service (they queue on its
                    // lock), a few at a time. An answer is not cached when a notice
                    // arrived while it was fetched (the client cannot tell which
                    // service a revocation touches before the answer is in), and
                    // the previous round's unbind notices may still be arriving:
                    // resolve again until cached, a bounded number of times.
                    let mut outcome = Err("not tried".to_owned());
                    for _ in 0..5 {
                        outcome = match tokio::time::timeout(Duration::from_secs(30), client.resolve(&service)).await {
                            Ok(resolved) => resolved.map(|_| ()).map_err(|e| e.to_string()),
                            Err(_) => Err(format!(
                                "client {}: no answer to a resolve in 30 s ({})",
                                client.agent(),
                                client.diagnose(id)
                            )),
                        };
                        if outcome.is_ok() && client.cached(&service).is_some() {
                            break;
                        }
                    }
                    outcome
                }
            })
            .buffer_unordered(2)
            .collect::<Vec<_>>()
            .await;
        if let Some(Err(error)) = resolved.iter().find(|r| r.is_err()) {
            anyhow::bail!("a client could not resolve: {error}");
        }
        anyhow::ensure!(clients.iter().all(|c| c.cached(&service).is_some()), "a client did not cache");
        for receiver in &mut receivers {
            while receiver.try_recv().is_ok() {}
        }
        commits.clear();
        tokio::time::sleep(Duration::from_millis(200)).await;
        notices.clear();
        let head = EventLog::head_position(&database.client().await?).await?.unwrap_or(0);
        backlog.push(head - relay.last());

        let response = if options.replace {
            http.post(format!("{base}/v1/connections/{id}/replace"))
                .bearer_auth(&user_token)
                .json(&json!({"credential": {"kind": "api_key", "key": "k2"}}))
                .send()
                .await?
        } else {
            http.delete(format!("{base}/v1/connections/{id}")).bearer_auth(&user_token).send().await?
        };
        let returned = Instant::now();
        returned_at.push(chrono::Utc::now());
        let expected = if options.replace { 201 } else { 200 };
        anyhow::ensure!(response.status() == expected, "the command answered {}", response.status());
        if options.replace {
            let answer: serde_json::Value = response.json().await?;
            let moved = answer["moved_agents"].as_array().map_or(0, Vec::len);
            anyhow::ensure!(moved == n, "the replacement moved {moved} agents, not {n}");
        }
        let mut last = returned;
        let mut arrivals = Vec::with_capacity(n);
        for (receiver, client) in receivers.iter_mut().zip(&clients) {
            let mut others = Vec::new();
            let invalidation = loop {
                let invalidation =
                    tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await.map_err(|_| {
                        anyhow::anyhow!(
                            "client {} neither dropped the revoked credential nor failed closed in 10 s \
                             (round {round}, connection {id}; fresh: {}; cached for the service: {:?}; \
                             other invalidations meanwhile: {others:?}; {})",
                            client.agent(),
                            client.is_fresh(),
                            client.cached(&service).map(|c| c.connection_id.clone()),
                            client.diagnose(&id),
                        )
                    })??;
                if invalidation.connection_id == id {
                    break invalidation;
                }
                others.push((invalidation.connection_id, invalidation.reason));
            };
            if invalidation.reason == InvalidationReason::FailedClosed {
                connects.failed_closed += 1;
            }
            last = last.max(invalidation.at);
            arrivals.push(invalidation.at.saturating_duration_since(returned));
        }
        from_return.push(last.saturating_duration_since(returned));
        arrivals.sort_unstable();
        median_client.push(arrivals[arrivals.len() / 2]);
        if let Some(committed) = commits.first_after(returned - Duration::from_secs(5)) {
            from_commit.push(last.saturating_duration_since(committed));
            if let Some(noticed) = notices.first() {
                to_notice.push(noticed.saturating_duration_since(committed));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        copies.push(notices.count());
        raw_at.push(chrono::Utc::now());
        interleaved.push(raw.round().await?);
    }
    // Round by round: a p99 over 20 rounds is the slowest one, so show
    // which, and whether the notice was late reaching NATS's subscribers
    // (the watcher) or the runtimes were late after it.
    let listing =
        |samples: &[Duration]| samples.iter().map(|d| format!("{:.1}", d.as_secs_f64() * 1e3)).collect::<Vec<_>>();
    println!("{n:>6} per round, revoke returned → last client dropped (ms): {}", listing(&from_return).join(" "));
    println!("{n:>6} per round, revoke returned → median client (ms):     {}", listing(&median_client).join(" "));
    println!("{n:>6} per round, commit → notice at the watcher (ms):        {}", listing(&to_notice).join(" "));
    println!("{n:>6} per round, raw publish → last of N, interleaved (ms): {}", listing(&interleaved).join(" "));
    println!("{n:>6} per round, events the relay had not published at the revoke: {backlog:?}");
    println!("{n:>6} per round, revoked notices at the watcher (2 = fanned out twice): {copies:?}");
    let clock = |times: &[chrono::DateTime<chrono::Utc>]| {
        times.iter().map(|at| format!("{:.3}", at.timestamp_millis() as f64 / 1e3)).collect::<Vec<_>>().join(" ")
    };
    println!("{n:>6} per round, revoke returned at (Unix time, s): {}", clock(&returned_at));
    println!("{n:>6} per round, raw round began at (Unix time, s): {}", clock(&raw_at));
    let window = Duration::from_secs(1);
    Ok(Rounds {
        from_return: Summary::new(from_return, window),
        from_commit: Summary::new(from_commit, window),
        to_notice: Summary::new(to_notice, window),
        interleaved: Summary::new(interleaved, window),
        connects,
    })
}

/// What the revocation rounds at one client count measured.
struct Rounds {
    from_return: Summary,
    from_commit: Summary,
    to_notice: Summary,
    /// The raw fan-out, one after each revocation.
    interleaved: Summary,
    connects: Connects,
}

/// How long runtimes took to obtain NATS credentials and connect (and how
/// many dropped a credential by failing closed rather than on its notice).
struct Connects {
    summary: Summary,
    wall: Duration,
    failed_closed: usize,
}

/// What the rounds watch besides the runtimes.
struct Watches {
    commits: CommitWatch,
    notices: NoticeWatch,
    relay: RelayWatch,
    database: connections_store::Database,
}

/// Follows the relay's acknowledged publishes (its benchmark hook).
struct RelayWatch {
    last: Arc<std::sync::atomic::AtomicI64>,
}

impl RelayWatch {
    fn start() -> (tokio::sync::mpsc::UnboundedSender<relay::Relayed>, Self) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<relay::Relayed>();
        let last = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let recorder = last.clone();
        tokio::spawn(async move {
            while let Some(relayed) = rx.recv().await {
                recorder.fetch_max(relayed.position, std::sync::atomic::Ordering::SeqCst);
            }
        });
        (tx, Self { last })
    }

    /// The newest position the relay has published and had acknowledged.
    fn last(&self) -> i64 {
        self.last.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Records when the server announces its commits (`Signals::commits`,
/// right after COMMIT returned).
struct CommitWatch {
    seen: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl CommitWatch {
    fn start(signals: &Signals) -> Self {
        let mut commits = signals.commits.subscribe();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = seen.clone();
        tokio::spawn(async move {
            while commits.changed().await.is_ok() {
                recorder.lock().expect("commits").push(Instant::now());
            }
        });
        Self { seen }
    }

    fn clear(&self) {
        self.seen.lock().expect("commits").clear();
    }

    fn first_after(&self, after: Instant) -> Option<Instant> {
        self.seen.lock().expect("commits").iter().copied().find(|at| *at >= after)
    }
}

/// Records when `revoked` notices reach one plain subscriber (where the
/// time from commit to the last runtime goes: to the notice, or after it).
struct NoticeWatch {
    seen: Arc<std::sync::Mutex<Vec<Instant>>>,
    _client: async_nats::Client,
}

impl NoticeWatch {
    async fn start(access: &NatsAccess, names: &Names) -> anyhow::Result<Self> {
        let mut grant = connections_natsauth::Grant::service(names);
        grant.subscribe.allow.push(names.notices_wildcard());
        let client = connect_as(access, &grant, &names.service_inbox(), "notice watcher").await?;
        let mut subscription = client.subscribe(names.notices_wildcard()).await?;
        client.flush().await?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let at = Instant::now();
                if serde_json::from_slice::<serde_json::Value>(&message.payload).is_ok_and(|n| n["kind"] == "revoked") {
                    recorder.lock().expect("notices").push(at);
                }
            }
        });
        Ok(Self { seen, _client: client })
    }

    fn clear(&self) {
        self.seen.lock().expect("notices").clear();
    }

    fn first(&self) -> Option<Instant> {
        self.seen.lock().expect("notices").first().copied()
    }

    /// How many `revoked` notices arrived since the last clear: more than
    /// one means a second fan-out of the same notice.
    fn count(&self) -> usize {
        self.seen.lock().expect("notices").len()
    }
}

/// The servers of a comma-separated list.
fn nodes(urls: &str) -> Vec<String> {
    connections_fanout::nats::servers(urls).into_iter().map(str::to_owned).collect()
}

/// The floor, measured after the revocations: a core-NATS publish to N
/// subscribers (one connection each), until the last one has it. With
/// authentication, the subscribers hold runtime credentials (for one
/// owner's connection notices) and the publisher the service's, as in the
/// product.
async fn raw_fanout(raw: &mut RawFanout, rounds: usize) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(50)).await;
        samples.push(raw.round().await?);
    }
    Ok(Summary::new(samples, Duration::from_secs(1)))
}

/// N raw subscribers (one connection each) and a publisher: one publish,
/// timed until the last subscriber has it.
struct RawFanout {
    subject: String,
    publisher: async_nats::Client,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    subscribers: Vec<tokio::task::JoinHandle<()>>,
}

impl RawFanout {
    async fn start(access: &NatsAccess, names: &Names, n: usize) -> anyhow::Result<Self> {
        let subject = names.connection_notices("rawbench", &uuid::Uuid::now_v7().simple().to_string());
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let mut subscribers = Vec::with_capacity(n);
        let nodes = nodes(&access.url);
        for i in 0..n {
            let grant = Grant::runtime(names, "rawbench", &format!("raw-{i}"));
            // Spread over the nodes like the runtimes.
            let node = NatsAccess { url: nodes[i % nodes.len()].clone(), issuer: access.issuer.clone() };
            let client = connect_as(&node, &grant, "_INBOX_unused", "raw subscriber").await?;
            let mut subscription = client.subscribe(subject.clone()).await?;
            client.flush().await?;
            let tx = tx.clone();
            subscribers.push(tokio::spawn(async move {
                let _client = client;
                while subscription.next().await.is_some() {
                    let _ = tx.send(Instant::now());
                }
            }));
        }
        let publisher = connections_fanout::nats::connect(access, names, "raw publisher").await?;
        Ok(Self { subject, publisher, arrivals, subscribers })
    }

    async fn round(&mut self) -> anyhow::Result<Duration> {
        while self.arrivals.try_recv().is_ok() {}
        let sent = Instant::now();
        self.publisher.publish(self.subject.clone(), "revoked".into()).await?;
        self.publisher.flush().await?;
        let mut last = sent;
        for _ in 0..self.subscribers.len() {
            last = last.max(tokio::time::timeout(Duration::from_secs(10), self.arrivals.recv()).await?.unwrap_or(sent));
        }
        Ok(last - sent)
    }
}

impl Drop for RawFanout {
    fn drop(&mut self) {
        for subscriber in &self.subscribers {
            subscriber.abort();
        }
    }
}

/// Uncached: 2,000 sequential `POST /v1/resolve` calls; cached: one
/// client, 100,000 cache hits.
async fn resolve_latency(base: &str, secret: &[u8]) -> anyhow::Result<(Summary, Summary)> {
    let owner = OwnerId::parse("owner-cache").map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent = AgentId::parse("agent-cache").map_err(|e| anyhow::anyhow!("{e}"))?;
    let user_token = mint_user_token(secret, &owner, chrono::Utc::now().timestamp() + 3600)?;
    reqwest::Client::new()
        .post(format!("{base}/v1/connections"))
        .bearer_auth(&user_token)
        .json(&json!({"service": "svc", "name": "c", "agent_id": "agent-cache", "credential": {"kind": "api_key", "key": "k"}}))
        .send()
        .await?;
    let token = mint_agent_token(secret, &agent, &owner, chrono::Utc::now().timestamp() + 3600)?;
    let http = reqwest::Client::new();
    let mut uncached = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let started = Instant::now();
        let response =
            http.post(format!("{base}/v1/resolve")).bearer_auth(&token).json(&json!({"service": "svc"})).send().await?;
        anyhow::ensure!(response.status() == 200, "resolve answered {}", response.status());
        response.bytes().await?;
        uncached.push(started.elapsed());
    }
    let client = AgentClient::connect(AgentConfig::new(base, token)).await?;
    client.resolve("svc").await?;
    let mut samples = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let started = Instant::now();
        let hit = client.resolve("svc").await?;
        samples.push(started.elapsed());
        std::hint::black_box(hit);
    }
    Ok((Summary::new(uncached, Duration::from_secs(1)), Summary::new(samples, Duration::from_secs(1))))
}
