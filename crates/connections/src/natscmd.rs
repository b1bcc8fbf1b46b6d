//! `connections nats …`: set up NATS authentication and issue credentials
//! for read-only consumers of the events stream.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use connections_natsauth::{creds_file, new_user_key, Grant, Setup};
use connections_wire::Names;

/// NATS authentication.
#[derive(Subcommand)]
pub enum NatsCommand {
    /// Generate an operator, a system account and the service's account:
    /// writes DIR/issuer.json (the account signing key the server uses,
    /// secret), DIR/auth.conf (for nats-server: `-c DIR/auth.conf`), and the
    /// operator and account seeds (secret; keep them offline).
    Init {
        /// Where to write (created, mode 0700).
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing set-up (every issued credential stops working).
        #[arg(long)]
        force: bool,
    },
    /// Print a NATS credentials file for a read-only consumer of the events
    /// stream: it may read `<prefix>_events` through its own durable pull
    /// consumer `<prefix>_reader_<NAME>` and its own inbox prefix
    /// `_INBOX_<prefix>_reader_<NAME>`, and nothing else.
    Reader {
        /// The reader's name, `[A-Za-z0-9_-]{1,64}`.
        #[arg(long)]
        name: String,
        /// Lifetime in seconds (0: no expiry).
        #[arg(long, default_value_t = 30 * 86_400)]
        ttl: i64,
    },
}

/// Runs a `nats` subcommand.
pub fn run(command: NatsCommand) -> anyhow::Result<()> {
    match command {
        NatsCommand::Init { dir, force } => init(&dir, force),
        NatsCommand::Reader { name, ttl } => {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            anyhow::ensure!(valid, "--name must be 1-64 characters from [A-Za-z0-9_-]");
            anyhow::ensure!(ttl >= 0, "--ttl must be 0 or a number of seconds");
            let path = std::env::var("CONNECTIONS_NATS_ISSUER_FILE")
                .context("set CONNECTIONS_NATS_ISSUER_FILE (written by `connections nats init`)")?;
            let issuer = crate::config::issuer(&path)?;
            let names = Names::new(&std::env::var("CONNECTIONS_NATS_PREFIX").unwrap_or_else(|_| "connections".into()))?;
            let (public_key, seed) = new_user_key();
            let now = chrono::Utc::now().timestamp();
            let jwt = issuer.issue(&Grant::reader(&names, &name), &public_key, now, (ttl > 0).then_some(now + ttl))?;
            print!("{}", creds_file(&jwt, &seed));
            eprintln!(
                "consumer: {}  inbox prefix: {}  stream: {}",
                Grant::reader_consumer(&names, &name),
                Grant::reader_inbox(&names, &name),
                names.events_stream()
            );
            Ok(())
        }
    }
}

fn init(dir: &Path, force: bool) -> anyhow::Result<()> {
    let issuer_path = dir.join("issuer.json");
    if issuer_path.exists() && !force {
        anyhow::bail!(
            "{} exists; pass --force to replace it (every issued credential stops working)",
            issuer_path.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, 0o700)?;
    let setup = Setup::generate(chrono::Utc::now().timestamp())?;
    write_secret(&issuer_path, &serde_json::to_vec_pretty(&setup.issuer)?)?;
    write_secret(&dir.join("operator.nk"), setup.operator_seed.as_bytes())?;
    write_secret(&dir.join("account.nk"), setup.account_seed.as_bytes())?;
    std::fs::write(dir.join("auth.conf"), &setup.server_config)?;
    println!("wrote {}/{{issuer.json,auth.conf,operator.nk,account.nk}}", dir.display());
    println!("account {}", setup.issuer.account);
    Ok(())
}

fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    let _ = (path, mode);
    Ok(())
}
