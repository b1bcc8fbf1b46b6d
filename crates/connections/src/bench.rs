//! `connections bench …`: benchmarks that always run their raw baseline in
//! the same run and print ratios, because these machines are shared and noisy.

mod append;
mod stats;

use clap::Subcommand;

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Append throughput and latency: raw INSERT baseline, the store's
    /// append path, and the full HTTP command path, at several concurrencies.
    Append(append::AppendOptions),
}

/// Runs one benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(options) => append::run(options).await,
    }
}
