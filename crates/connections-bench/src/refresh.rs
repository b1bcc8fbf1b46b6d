//! The token-refresh benchmark: `--connections` OAuth connections (one per
//! user, as users have them) whose access tokens all expire within the same
//! minute, refreshed by the background upkeep leader against a real
//! authorization server on loopback (`tests/oauth/provider.mjs`,
//! oauth2-mock-server). Measured: refresher throughput (refreshes recorded
//! per second while the backlog lasted) and how late each refresh was past
//! its target time (expiry minus the margin), as a full distribution; and,
//! in the same run, the provider's raw token-endpoint rate (bare
//! refresh-token grants at the same concurrency), before and after.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use connections_api::auth::mint_user_token;
use connections_api::providers::Providers;
use connections_api::{Settings, UpkeepSettings};
use connections_domain::OwnerId;
use connections_sealing::MasterKey;
use connections_store::connect_pool;
use futures_util::StreamExt;
use serde_json::json;

use super::stats::{ms, Summary};

/// Options of `connections-bench refresh`.
#[derive(clap::Args)]
pub struct RefreshOptions {
    /// The Postgres server (a fresh database is created on it and dropped after).
    #[arg(long, env = "CONNECTIONS_BENCH_SERVER", default_value = "postgres://postgres@127.0.0.1:5432")]
    server: String,
    /// OAuth connections, one per user.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// The window their tokens expire in, in seconds.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// Refreshes in flight at once (`CONNECTIONS_REFRESH_CONCURRENCY`).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of raw token-endpoint requests per baseline phase.
    #[arg(long, default_value_t = 5)]
    raw_seconds: u64,
    /// The test authorization server (run with `node`; `npm ci --prefix tests/oauth` installs it).
    #[arg(long, default_value = "tests/oauth/provider.mjs")]
    provider_script: std::path::PathBuf,
}

/// The margin the upkeep refreshes ahead of expiry in this run
/// (`CONNECTIONS_REFRESH_MARGIN_SECS`; 300 by default). Shorter than the
/// default so that the run does not wait out tokens living twice the
/// default margin (a token is refreshed at half its lifetime when that is
/// shorter); the refresher's work per connection is the same.
const MARGIN: Duration = Duration::from_secs(20);

/// Runs the benchmark.
pub async fn run(options: RefreshOptions) -> anyhow::Result<()> {
    let provider = Provider::start(&options.provider_script)?;
    let database = super::fresh_database(&options.server).await?;
    let result = run_on(&database.url, &options, &provider.base).await;
    database.remove().await?;
    result
}

/// The authorization server, stopped (stdin closed) on drop.
struct Provider {
    child: Child,
    base: String,
}

impl Provider {
    fn start(script: &std::path::Path) -> anyhow::Result<Self> {
        let mut child = Command::new("node")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting node {}: {e}", script.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).read_line(&mut line)?;
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow::anyhow!("the provider said {line:?}"))?
            .to_owned();
        Ok(Self { child, base })
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run_on(url: &str, options: &RefreshOptions, provider: &str) -> anyhow::Result<()> {
    let text = format!(
        r#"{{"redirect_uri": "http://127.0.0.1:9/v1/oauth/callback", "providers": [{{"service": "google-calendar",
            "authorization_endpoint": "{provider}/authorize", "token_endpoint": "{provider}/token",
            "revocation_endpoint": "{provider}/revoke", "client_id": "bench", "client_secret_env": "BENCH_SECRET",
            "scopes": ["calendar.read"]}}]}}"#
    );
    let providers = Providers::parse(&text, |_| Some("bench-client-secret".to_owned()))?;
    let secret = MasterKey::generate_base64()?.into_bytes();
    let upkeep = UpkeepSettings { margin: MARGIN, concurrency: options.concurrency, ..Default::default() };
    let master_key = Arc::new(MasterKey::from_base64("bench", &MasterKey::generate_base64()?)?);
    let settings = Settings { providers, upkeep, ..Default::default() };
    let state = connections_api::AppState::local(
        connect_pool(url, 32)?,
        connect_pool(url, 16)?,
        master_key,
        &secret,
        settings,
    )?;
    let base = super::serve_locally(state.clone()).await?;
    let http = reqwest::Client::new();

    println!(
        "bench refresh: {} OAuth connections (one per user) expiring within {} s; margin {} s; {} refreshes in \
         flight; provider {provider} (oauth2-mock-server)",
        options.connections,
        options.window,
        MARGIN.as_secs(),
        options.concurrency
    );
    let raw_before = raw_rate(&http, provider, options).await?;
    println!("raw token endpoint (before): {:.0} refresh grants/s at {} in flight", raw_before, options.concurrency);

    // The window starts once every connection exists: created first with
    // targets planned ahead, then checked.
    let lead = Duration::from_secs(30 + options.connections as u64 / 200);
    let start = Utc::now() + chrono::Duration::from_std(lead)?;
    let window = chrono::Duration::seconds(options.window as i64);
    let margin = chrono::Duration::from_std(MARGIN)?;
    let expiry_of = |n: usize| start + margin + window * (n as i32) / (options.connections as i32);
    let created = Instant::now();
    let created_count = futures_util::stream::iter(0..options.connections)
        .map(|n| {
            let (http, base, secret) = (&http, &base, &secret);
            async move {
                let owner = OwnerId::parse(format!("user-{n}")).map_err(|e| anyhow::anyhow!("{e}"))?;
                let token = mint_user_token(secret, &owner, Utc::now().timestamp() + 3600)?;
                let expires_at = expiry_of(n);
                let body = json!({"service": "google-calendar", "name": "Calendar", "agent_id": "assistant",
                    "credential": {"kind": "oauth2", "access_token": format!("at-{n}"),
                        "refresh_token": format!("rt-{n}"), "expires_at": expires_at.to_rfc3339(),
                        "scopes": ["calendar.read"]}});
                let answer: serde_json::Value = http
                    .post(format!("{base}/v1/connections"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                anyhow::Ok(answer["connection_id"].as_str().unwrap_or_default().to_owned())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .len();
    println!("created {created_count} connections in {:.1} s", created.elapsed().as_secs_f64());
    anyhow::ensure!(Utc::now() < start, "creating the connections took longer than the lead; use fewer");
    // The target of each refresh is what the schedule says (expiry minus
    // the margin), read back rather than assumed.
    let client = state.database.pool().get().await?;
    let targets: HashMap<String, DateTime<Utc>> = client
        .query("SELECT connection_id::text, due_at FROM refresh_schedule", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let (earliest, latest) = (targets.values().min().copied(), targets.values().max().copied());
    if let (Some(earliest), Some(latest)) = (earliest, latest) {
        println!(
            "targets: {} scheduled, from {} to {} ({:.1} s)",
            targets.len(),
            earliest.format("%H:%M:%S%.3f"),
            latest.format("%H:%M:%S%.3f"),
            (latest - earliest).num_milliseconds() as f64 / 1e3
        );
    }

    // The upkeep leader, as `serve` runs it.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let upkeep = tokio::spawn(connections_api::upkeep::run(state.clone(), url.to_owned(), 7_243_901, stopping));
    let refreshed = || async {
        let row =
            client.query_one("SELECT count(*) FROM events WHERE event_type = 'credential_refreshed'", &[]).await?;
        anyhow::Ok(row.get::<_, i64>(0) as usize)
    };
    let deadline = Instant::now() + lead + Duration::from_secs(options.window) + Duration::from_secs(600);
    loop {
        let done = refreshed().await?;
        if done >= options.connections {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {done} refreshed after ten minutes past the window");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let rows = client
        .query(
            "SELECT data->>'connection_id', recorded_at FROM events WHERE event_type = 'credential_refreshed' \
             ORDER BY position",
            &[],
        )
        .await?;
    let mut lateness = Vec::with_capacity(rows.len());
    let mut early = 0;
    let (mut first, mut last) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    for row in &rows {
        let id: String = row.get(0);
        let at: DateTime<Utc> = row.get(1);
        let target = targets.get(&id).ok_or_else(|| anyhow::anyhow!("a refresh of an unknown connection"))?;
        match at.signed_duration_since(*target).to_std() {
            Ok(late) => lateness.push(late),
            Err(_) => {
                early += 1;
                lateness.push(Duration::ZERO);
            }
        }
        first = Some(first.map_or(at, |f| f.min(at)));
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let late = Summary::new(lateness.clone(), span.max(Duration::from_millis(1)));
    lateness.sort_unstable();
    let p90 = lateness.get(lateness.len() * 9 / 10).copied().unwrap_or_default();
    let rate = rows.len() as f64 / span.as_secs_f64().max(0.001);
    println!(
        "spread over {} s: {} refreshes from the first to the last in {:.1} s = {:.0}/s ({:.0}/s come due); \
         {early} before their target",
        options.window,
        rows.len(),
        span.as_secs_f64(),
        rate,
        options.connections as f64 / options.window as f64
    );
    println!(
        "lateness past target (ms): p50 {} p90 {} p99 {} max {}",
        ms(late.p50),
        ms(p90),
        ms(late.p99),
        ms(late.max)
    );

    // Capacity: every connection due at once (the schedule moved to now,
    // the only shortcut taken), refreshed from version 2 to 3.
    client.execute("UPDATE refresh_schedule SET due_at = now()", &[]).await?;
    let burst = Instant::now();
    loop {
        let done = refreshed().await?;
        if done >= 2 * options.connections {
            break;
        }
        anyhow::ensure!(burst.elapsed() < Duration::from_secs(900), "only {done} refreshed in the burst");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let burst = burst.elapsed();
    stop.send(true)?;
    let _ = upkeep.await;
    let capacity = options.connections as f64 / burst.as_secs_f64();
    println!(
        "all due at once: {} refreshes in {:.1} s = {:.0}/s (poll granularity 100 ms)",
        options.connections,
        burst.as_secs_f64(),
        capacity
    );
    let raw_after = raw_rate(&http, provider, options).await?;
    println!("raw token endpoint (after): {:.0} refresh grants/s at {} in flight", raw_after, options.concurrency);
    let raw = (raw_before + raw_after) / 2.0;
    println!("ratio refresher capacity / raw token endpoint: {:.2}", capacity / raw);
    Ok(())
}

/// Bare refresh-token grants against the provider for `raw_seconds`,
/// `concurrency` in flight: grants per second.
async fn raw_rate(http: &reqwest::Client, provider: &str, options: &RefreshOptions) -> anyhow::Result<f64> {
    let until = Instant::now() + Duration::from_secs(options.raw_seconds);
    let started = Instant::now();
    let counts = futures_util::future::try_join_all((0..options.concurrency).map(|_| async move {
        let mut count = 0usize;
        while Instant::now() < until {
            http.post(format!("{provider}/token"))
                .basic_auth("bench", Some("bench-client-secret"))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", "raw"), ("scope", "calendar.read")])
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            count += 1;
        }
        anyhow::Ok(count)
    }))
    .await?;
    Ok(counts.iter().sum::<usize>() as f64 / started.elapsed().as_secs_f64())
}
