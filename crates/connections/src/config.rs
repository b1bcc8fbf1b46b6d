//! Configuration from the environment.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use connections_api::auth::Authenticator;
use connections_fanout::Names;
use connections_sealing::MasterKey;

/// Everything `serve` needs.
pub struct Config {
    /// `CONNECTIONS_LISTEN`, default 127.0.0.1:8080 (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `CONNECTIONS_DATABASE_URL`, default the `connections` database on the local server.
    pub database_url: String,
    /// `CONNECTIONS_NATS_URL`, default nats://127.0.0.1:4222.
    pub nats_url: String,
    /// `CONNECTIONS_DATABASE_POOL`, default 32.
    pub pool_size: usize,
    /// `CONNECTIONS_NATS_PREFIX`, default `connections`: the start of every
    /// subject, stream and consumer name.
    pub names: Names,
    /// `CONNECTIONS_AUDIT_CHECKPOINT_SECS`, default 86400: how often the
    /// server stores an audit checkpoint; 0 turns it off.
    pub audit_checkpoint_every: Option<std::time::Duration>,
}

impl Config {
    /// Reads the configuration; keys and secrets are read separately.
    pub fn from_env() -> anyhow::Result<Self> {
        let listen =
            env_or("CONNECTIONS_LISTEN", "127.0.0.1:8080").parse().context("CONNECTIONS_LISTEN must be host:port")?;
        let pool_size =
            env_or("CONNECTIONS_DATABASE_POOL", "32").parse().context("CONNECTIONS_DATABASE_POOL must be a number")?;
        Ok(Self {
            listen,
            database_url: database_url(),
            nats_url: env_or("CONNECTIONS_NATS_URL", "nats://127.0.0.1:4222"),
            pool_size,
            names: Names::new(&env_or("CONNECTIONS_NATS_PREFIX", "connections"))?,
            audit_checkpoint_every: match env_or("CONNECTIONS_AUDIT_CHECKPOINT_SECS", "86400")
                .parse::<u64>()
                .context("CONNECTIONS_AUDIT_CHECKPOINT_SECS must be a number of seconds")?
            {
                0 => None,
                seconds => Some(std::time::Duration::from_secs(seconds)),
            },
        })
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `CONNECTIONS_DATABASE_URL`, default the `connections` database on the local server.
pub fn database_url() -> String {
    env_or("CONNECTIONS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/connections")
}

/// The master key: `CONNECTIONS_MASTER_KEY` (base64) or the file named by
/// `CONNECTIONS_MASTER_KEY_FILE`, with id `CONNECTIONS_MASTER_KEY_ID` (default `k1`).
pub fn master_key() -> anyhow::Result<Arc<MasterKey>> {
    let key_id = env_or("CONNECTIONS_MASTER_KEY_ID", "k1");
    let encoded = match (std::env::var("CONNECTIONS_MASTER_KEY"), std::env::var("CONNECTIONS_MASTER_KEY_FILE")) {
        (Ok(value), _) => value,
        (Err(_), Ok(path)) => std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?,
        _ => anyhow::bail!(
            "set CONNECTIONS_MASTER_KEY (base64 of 64 random bytes) or CONNECTIONS_MASTER_KEY_FILE; ops/run makes one"
        ),
    };
    Ok(Arc::new(MasterKey::from_base64(&key_id, &encoded)?))
}

/// The HS256 development secret, `CONNECTIONS_JWT_SECRET` (at least 32 bytes).
pub fn jwt_secret() -> anyhow::Result<Vec<u8>> {
    let secret = std::env::var("CONNECTIONS_JWT_SECRET")
        .context("set CONNECTIONS_JWT_SECRET (at least 32 bytes) to mint or verify development tokens")?;
    Ok(secret.into_bytes())
}

/// The token verifier: a production public key if configured
/// (`CONNECTIONS_JWT_ED25519_PUBLIC_KEY_FILE` or `CONNECTIONS_JWT_RS256_PUBLIC_KEY_FILE`),
/// else HS256 with `CONNECTIONS_JWT_SECRET`.
pub fn authenticator() -> anyhow::Result<Arc<Authenticator>> {
    if let Ok(path) = std::env::var("CONNECTIONS_JWT_ED25519_PUBLIC_KEY_FILE") {
        let pem = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
        return Ok(Arc::new(Authenticator::ed25519_pem(&pem)?));
    }
    if let Ok(path) = std::env::var("CONNECTIONS_JWT_RS256_PUBLIC_KEY_FILE") {
        let pem = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
        return Ok(Arc::new(Authenticator::rs256_pem(&pem)?));
    }
    Ok(Arc::new(Authenticator::hs256(&jwt_secret()?)?))
}
