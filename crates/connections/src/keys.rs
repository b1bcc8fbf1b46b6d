//! `connections keys status` and `connections keys rewrap`: master key
//! rotation, online, against the configured keyring
//! (`CONNECTIONS_MASTER_KEYS_FILE`; see the README, "Rotating the master key").

use connections_api::{rekey, AppState};

/// The key commands.
#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Live data keys per master key id, and which ids the keyring holds.
    Status,
    /// Re-wrap every live data key under the current master key, online,
    /// resumable (run it again after a crash), safe beside revokes and a
    /// second rewrapper. Prints what remains under each id.
    Rewrap {
        /// Connections listed per batch.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch: i64,
        /// Re-wraps in flight at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
        concurrency: u64,
    },
}

/// What the key commands need of a server's state (no HTTP, no NATS).
pub fn state(database_url: &str) -> anyhow::Result<AppState> {
    let database = connections_store::connect_pool(database_url, 16)?;
    // No token is ever verified here: a random secret.
    let random = connections_sealing::MasterKey::generate_base64()?.into_bytes();
    Ok(connections_api::AppState::local(
        database.clone(),
        database,
        crate::config::master_key()?,
        &random,
        Default::default(),
    )?)
}

/// Runs a key command.
pub async fn run(command: KeysCommand, database_url: &str) -> anyhow::Result<()> {
    let app = state(database_url)?;
    let loaded = app.master_key.key_ids();
    match command {
        KeysCommand::Status => {
            print_counts(&rekey::key_counts(&app).await?, &loaded);
        }
        KeysCommand::Rewrap { batch, concurrency } => {
            let started = std::time::Instant::now();
            let report = rekey::rewrap_all(&app, batch, concurrency as usize).await?;
            println!(
                "rewrapped {} data keys under {} in {:.1} s ({} skipped: moved by another rewrapper or revoked)",
                report.rewrapped,
                loaded[0],
                started.elapsed().as_secs_f64(),
                report.skipped
            );
            print_counts(&report.remaining, &loaded);
        }
    }
    Ok(())
}

fn print_counts(counts: &[(String, i64)], loaded: &[&str]) {
    if counts.is_empty() {
        println!("no live data keys");
    }
    for (id, count) in counts {
        let role = match loaded.iter().position(|l| l == id) {
            Some(0) => "current",
            Some(_) => "previous (can be removed once this is 0)",
            None => "NOT IN THE KEYRING: these connections cannot be resolved",
        };
        println!("{id}: {count} live data keys ({role})");
    }
    for id in loaded.iter().skip(1).filter(|id| !counts.iter().any(|(c, _)| c == *id)) {
        println!("{id}: 0 live data keys (previous: can be removed from the keyring)");
    }
}
