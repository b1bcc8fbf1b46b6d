//! `connections bench …`: benchmarks that always run their raw baseline in
//! the same run and print ratios, because these machines are shared and noisy.

mod append;
mod audit;
mod fanout;
mod generate;
mod revocation;
mod stats;

use clap::Subcommand;

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
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
    /// Audit over a generated million-event log: export, verify and as-of
    /// from Postgres and offline from the file, against raw reads of the
    /// same rows and the same file.
    Audit(audit::AuditOptions),
}

/// Runs one benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(options) => append::run(options).await,
        BenchCommand::Fanout(options) => fanout::run(options).await,
        BenchCommand::Revocation(options) => revocation::run(options).await,
        BenchCommand::Audit(options) => audit::run(options).await,
    }
}
