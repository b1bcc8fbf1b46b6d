//! `connections-bench …`: benchmarks that always run their raw baseline in
//! the same run and print ratios, because these machines are shared and noisy.
//! They live apart from the server binary, which so carries neither the agent
//! client nor an HTTP client.

/// As the server's binary (see `crates/connections/src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod append;
mod audit;
mod commands;
mod failover;
mod fanout;
mod generate;
mod http1;
mod load;
mod refresh;
mod revocation;
mod rewrap;
mod stats;
mod streams;

use clap::{Parser, Subcommand};
use connections_fanout::nats::NatsAccess;
use connections_testkit::FreshDatabase;

/// Benchmarks against the local services (PostgreSQL, NATS).
#[derive(Parser)]
#[command(name = "connections-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The driver prints every statement's parameters at debug level; those
    // lines are never written, whatever CONNECTIONS_LOG asks.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONNECTIONS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive("tokio_postgres::query=info".parse().expect("a valid directive"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    run(Cli::parse().command).await
}

/// The benchmarks.
#[derive(Subcommand)]
enum BenchCommand {
    /// Append throughput and latency: raw INSERT baseline, the store's
    /// append path, and the full HTTP command path, at several concurrencies.
    Append(append::AppendOptions),
    /// Fan-out: commit → JetStream ack against a raw publish-ack baseline,
    /// projection lag under a fixed command rate, and full-rebuild
    /// throughput against a raw scan of the same events.
    Fanout(fanout::FanoutOptions),
    /// Revocation: revoke → every cached agent client dropping the
    /// credential, against a raw core-NATS fan-out to as many subscribers;
    /// resolve latency uncached and from the cache.
    Revocation(revocation::RevocationOptions),
    /// Resource bounds: revokes and resolves at a fixed rate, idle and then
    /// under 2,000 idle change streams and 200 readers waiting on an
    /// unreachable min_position; p99 compared with the idle baseline.
    Load(load::LoadOptions),
    /// OAuth token upkeep: connections whose tokens all expire within one
    /// minute, refreshed by the upkeep leader against a real authorization
    /// server; throughput and lateness against the provider's raw
    /// token-endpoint rate.
    Refresh(refresh::RefreshOptions),
    /// Master key rotation: re-wrapping every data key against a raw UPDATE
    /// of the same rows, and resolve latency during it against without it.
    Rewrap(rewrap::RewrapOptions),
    /// The command mix users run (create, 3 × assign, set default, revoke
    /// per new stream) over HTTP with the relay and projector running,
    /// against a raw append interleaved, with Postgres's transactions, rows
    /// and CPU per command and the projection lag.
    Commands(commands::CommandsOptions),
    /// Relay failover: instances on one database under a steady command
    /// rate, the relay's leader killed with SIGKILL again and again; the
    /// takeover time and the gap on the events stream, against the longest
    /// silence without a kill.
    Failover(failover::FailoverOptions),
    /// Audit over a generated million-event log: export, verify and as-of
    /// from Postgres and offline from the file, against raw reads of the
    /// same rows and the same file.
    Audit(audit::AuditOptions),
    /// Cost per stream: a command and a resolve on a fresh stream, on a
    /// stream of 100,000 events and on a connection used by 20,000 agents,
    /// at a fixed rate, against a raw append at the same rate.
    Streams(streams::StreamsOptions),
}

/// Runs one benchmark.
async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(options) => append::run(options).await,
        BenchCommand::Fanout(options) => fanout::run(options).await,
        BenchCommand::Revocation(options) => revocation::run(options).await,
        BenchCommand::Audit(options) => audit::run(options).await,
        BenchCommand::Failover(options) => failover::run(options).await,
        BenchCommand::Commands(options) => commands::run(options).await,
        BenchCommand::Load(options) => load::run(options).await,
        BenchCommand::Refresh(options) => refresh::run(options).await,
        BenchCommand::Rewrap(options) => rewrap::run(options).await,
        BenchCommand::Streams(options) => streams::run(options).await,
    }
}

/// A labelled counter's values (this process) for a fixed set of labels,
/// taken before a phase to tell what the phase added.
#[derive(Clone, Copy)]
struct Counts<const N: usize> {
    counter: &'static connections_metrics::CounterVec,
    values: [(&'static str, u64); N],
}

impl<const N: usize> Counts<N> {
    /// The values of `counter` for `labels`, now.
    fn now(counter: &'static connections_metrics::CounterVec, labels: [&'static str; N]) -> Self {
        Self { counter, values: labels.map(|label| (label, counter.get(&[label]))) }
    }

    /// What each label added since these values were taken.
    fn since(&self) -> [(&'static str, u64); N] {
        self.values.map(|(label, before)| (label, self.counter.get(&[label]) - before))
    }

    /// [`Self::since`] as `label n, label n, ...`.
    fn shown_since(&self) -> String {
        self.since().map(|(label, added)| format!("{label} {added}")).join(", ")
    }
}

/// The relay's reads by what they found: events, only events held back
/// behind an older running transaction, or nothing.
fn relay_reads() -> Counts<3> {
    Counts::now(&connections_metrics::RELAY_READS, ["events", "held_back", "nothing"])
}

/// Where commands and resolves found the states they decided on: this
/// instance's cache, the log, or the stream's keyed copy.
fn state_loads() -> Counts<3> {
    Counts::now(&connections_metrics::STATE_LOADS, ["cache", "log", "copy"])
}

/// Serves `state` on a loopback port (no delay on small answers); its base URL.
async fn serve_locally(state: connections_api::AppState) -> anyhow::Result<String> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(listener, connections_api::router(state))));
    Ok(base)
}

/// How a benchmark reaches NATS: as the service, with the credentials the
/// deployment would use when `CONNECTIONS_NATS_ISSUER_FILE` is set
/// (permissions in force), else without authentication.
fn nats_access(url: &str) -> anyhow::Result<NatsAccess> {
    Ok(match std::env::var("CONNECTIONS_NATS_ISSUER_FILE") {
        Ok(path) => NatsAccess::secured(url, std::sync::Arc::new(issuer(&path)?)),
        Err(_) => NatsAccess::insecure(url),
    })
}

/// A benchmark's own NATS client: the service's rights plus the JetStream
/// API on every stream under its prefix (for raw baselines' streams).
async fn bench_nats(access: &NatsAccess, names: &connections_fanout::Names) -> anyhow::Result<async_nats::Client> {
    let mut grant = connections_natsauth::Grant::service(names);
    grant.publish.allow.push("$JS.API.>".into());
    // `bench fanout`'s raw baseline on a stream being read acks what it reads.
    grant.publish.allow.push(format!("$JS.ACK.{}_rawread.>", names.prefix()));
    Ok(connections_fanout::nats::connect_as(access, &grant, &names.service_inbox(), "bench").await?)
}

/// The `connections` binary built next to this one (the audit and failover
/// benchmarks run it as a process): `cargo build --release` builds both.
fn server_binary() -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::current_exe()?.with_file_name("connections");
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it with `cargo build --release -p connections`",
        path.display()
    );
    Ok(path)
}

/// The issuer in an issuer file (`connections nats init` writes one).
fn issuer(path: &str) -> anyhow::Result<connections_natsauth::Issuer> {
    use anyhow::Context;
    let json = std::fs::read_to_string(path).with_context(|| format!("reading CONNECTIONS_NATS_ISSUER_FILE {path}"))?;
    connections_natsauth::Issuer::from_json(&json).with_context(|| format!("CONNECTIONS_NATS_ISSUER_FILE {path}"))
}

/// A benchmark's own fresh, migrated database on `server`; its
/// [`FreshDatabase::remove`] drops it.
async fn fresh_database(server: &str) -> anyhow::Result<FreshDatabase> {
    Ok(FreshDatabase::create(server, "connections_bench").await?)
}

/// A benchmark's own deployment: a fresh, migrated database on `server` and
/// a NATS prefix of its own; [`Deployment::remove`] drops both.
struct Deployment {
    database: FreshDatabase,
    url: String,
    names: connections_fanout::Names,
    access: NatsAccess,
}

impl Deployment {
    /// Creates the database and picks the prefix (`tag` and a random suffix).
    async fn create(server: &str, nats_url: &str, tag: &str) -> anyhow::Result<Self> {
        let database = fresh_database(server).await?;
        let names =
            connections_fanout::Names::new(&format!("{tag}{}", &uuid::Uuid::now_v7().simple().to_string()[20..]))?;
        let access = nats_access(nats_url)?;
        Ok(Self { url: database.url.clone(), database, names, access })
    }

    /// Deletes the prefix's streams and drops the database.
    async fn remove(self) -> anyhow::Result<()> {
        let context = async_nats::jetstream::new(bench_nats(&self.access, &self.names).await?);
        let _ = context.delete_stream(self.names.events_stream()).await;
        let _ = context.delete_stream(self.names.notices_stream()).await;
        Ok(self.database.remove().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_refuses_a_pool_of_no_connections_or_a_word() {
        for pool in ["0", "eight", "-1", "70000"] {
            let parsed = Cli::try_parse_from(["connections-bench", "commands", "--pool", pool]);
            assert!(parsed.is_err(), "--pool {pool} was accepted");
        }
    }

    #[test]
    fn the_mix_takes_the_servers_pool_size() {
        let parsed = Cli::try_parse_from(["connections-bench", "commands", "--pool", "8"]).expect("a valid pool");
        let BenchCommand::Commands(options) = parsed.command else { panic!("not the mix") };
        assert_eq!(options.pool(), 8);
    }
}
