//! Configuration from the environment.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use connections_api::auth::Authenticator;
use connections_fanout::Names;
use connections_natsauth::Issuer;
use connections_sealing::MasterKey;

/// Everything `serve` needs.
pub struct Config {
    /// `CONNECTIONS_LISTEN`, default 127.0.0.1:8080 (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `CONNECTIONS_DATABASE_URL`, default the `connections` database on the local server.
    pub database_url: String,
    /// `CONNECTIONS_NATS_URL`, default nats://127.0.0.1:4222.
    pub nats_url: String,
    /// `CONNECTIONS_DATABASE_POOL`, default 8 per core (see [`connections_store::default_pool_size`]).
    pub pool_size: usize,
    /// `CONNECTIONS_NATS_PREFIX`, default `connections`: the start of every
    /// subject, stream and consumer name.
    pub names: Names,
    /// `CONNECTIONS_AUDIT_CHECKPOINT_SECS`, default 86400: how often the
    /// server stores an audit checkpoint; 0 turns it off.
    pub audit_checkpoint_every: Option<std::time::Duration>,
    /// `CONNECTIONS_NATS_PUBLIC_URL`, default the `CONNECTIONS_NATS_URL`:
    /// the NATS URL(s) handed to agent runtimes (comma-separated).
    pub nats_public_urls: Vec<String>,
    /// `CONNECTIONS_NATS_RUNTIME_TTL_SECS`, default 300: how long runtime
    /// NATS credentials live.
    pub runtime_ttl: std::time::Duration,
    /// `CONNECTIONS_DATABASE_READ_POOL`, default 16: the pool of reads (read
    /// API, history, SSE), apart from commands and resolves.
    pub read_pool_size: usize,
    /// `CONNECTIONS_STREAMS_PER_USER`, default 16: open change streams per user.
    pub streams_per_user: usize,
    /// `CONNECTIONS_COMMIT_GROUP`, default 16: the most commands that share
    /// a transaction (1: each in its own; see `connections_api::groups`).
    pub commit_group: usize,
    /// `CONNECTIONS_PROJECTOR_PACE_MS`, default 25: how long after its recording
    /// (`recorded_at`) the first event of a projector batch waits for others (0: none;
    /// see `connections_projections::projector::pace_wait`).
    pub projector_pace: std::time::Duration,
    /// `CONNECTIONS_REPORTS_PER_MINUTE`, default 6: problem reports per
    /// connection and agent per minute (per instance).
    pub reports_per_minute: u32,
    /// `CONNECTIONS_PROVIDERS_FILE`: the OAuth 2.0 providers (none when unset).
    pub providers_file: Option<std::path::PathBuf>,
    /// The background token upkeep: `CONNECTIONS_REFRESH_MARGIN_SECS` (300),
    /// `CONNECTIONS_REFRESH_CONCURRENCY` (16), `CONNECTIONS_UPKEEP_RETRY_BASE_MS`
    /// (1000), `CONNECTIONS_UPSTREAM_REVOKE_ATTEMPTS` (10).
    pub upkeep: connections_api::UpkeepSettings,
    /// `CONNECTIONS_IDEMPOTENCY_TTL_SECS`, default 86400: how long an
    /// `Idempotency-Key`'s answer is replayed (records are deleted after).
    pub idempotency_ttl: std::time::Duration,
    /// `CONNECTIONS_INSTANCE`, default the listen address: this instance's
    /// name in `/health`, `/ready` and logs.
    pub instance: Option<String>,
    /// `CONNECTIONS_NATS_REPLICAS`, default 1 (3 in a JetStream cluster):
    /// the replicas of the streams the server creates.
    pub nats_replicas: usize,
    /// `CONNECTIONS_SHUTDOWN_GRACE_SECS`, default 20: how long a stopping
    /// instance waits for requests in flight before closing them.
    pub shutdown_grace: std::time::Duration,
}

/// NATS authentication.
pub enum NatsAuth {
    /// `CONNECTIONS_NATS_ISSUER_FILE` (written by `connections nats init`):
    /// the service issues user JWTs to itself and to runtimes.
    Issued(Arc<Issuer>),
    /// `CONNECTIONS_NATS_INSECURE=1`: no NATS authentication (development).
    Insecure,
}

/// The upkeep settings from the environment (defaults where unset).
fn upkeep() -> anyhow::Result<connections_api::UpkeepSettings> {
    let defaults = connections_api::UpkeepSettings::default();
    let positive = |name: &str, default: u64| -> anyhow::Result<u64> {
        env_or(name, &default.to_string())
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=86_400_000).contains(n))
            .with_context(|| format!("{name} must be a positive number"))
    };
    Ok(connections_api::UpkeepSettings {
        margin: std::time::Duration::from_secs(positive("CONNECTIONS_REFRESH_MARGIN_SECS", 300)?),
        concurrency: positive("CONNECTIONS_REFRESH_CONCURRENCY", 16)?.min(1024) as usize,
        retry_base: std::time::Duration::from_millis(positive("CONNECTIONS_UPKEEP_RETRY_BASE_MS", 1000)?),
        revoke_attempts: positive("CONNECTIONS_UPSTREAM_REVOKE_ATTEMPTS", 10)?.min(1000) as u32,
        ..defaults
    })
}

impl Config {
    /// Reads the configuration; keys and secrets are read separately.
    pub fn from_env() -> anyhow::Result<Self> {
        let listen =
            env_or("CONNECTIONS_LISTEN", "127.0.0.1:8080").parse().context("CONNECTIONS_LISTEN must be host:port")?;
        let pool_size = env_or("CONNECTIONS_DATABASE_POOL", &connections_store::default_pool_size().to_string())
            .parse()
            .context("CONNECTIONS_DATABASE_POOL must be a number")?;
        let nats_url = env_or("CONNECTIONS_NATS_URL", "nats://127.0.0.1:4222");
        let runtime_ttl = env_or("CONNECTIONS_NATS_RUNTIME_TTL_SECS", "300")
            .parse::<u64>()
            .ok()
            .filter(|seconds| (10..=86_400).contains(seconds))
            .context("CONNECTIONS_NATS_RUNTIME_TTL_SECS must be a number of seconds from 10 to 86400")?;
        Ok(Self {
            nats_public_urls: env_or("CONNECTIONS_NATS_PUBLIC_URL", &nats_url)
                .split(',')
                .map(|url| url.trim().to_owned())
                .filter(|url| !url.is_empty())
                .collect(),
            runtime_ttl: std::time::Duration::from_secs(runtime_ttl),
            read_pool_size: env_or("CONNECTIONS_DATABASE_READ_POOL", "16")
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .context("CONNECTIONS_DATABASE_READ_POOL must be a positive number")?,
            streams_per_user: env_or("CONNECTIONS_STREAMS_PER_USER", "16")
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .context("CONNECTIONS_STREAMS_PER_USER must be a positive number")?,
            commit_group: env_or("CONNECTIONS_COMMIT_GROUP", &connections_api::groups::DEFAULT_GROUP_SIZE.to_string())
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .context("CONNECTIONS_COMMIT_GROUP must be a number from 1 to 64")?,
            projector_pace: std::time::Duration::from_millis(
                env_or(
                    "CONNECTIONS_PROJECTOR_PACE_MS",
                    &connections_projections::projector::PACE.as_millis().to_string(),
                )
                .parse::<u64>()
                .ok()
                .filter(|millis| *millis <= 1000)
                .context("CONNECTIONS_PROJECTOR_PACE_MS must be a number of milliseconds from 0 to 1000")?,
            ),
            reports_per_minute: env_or("CONNECTIONS_REPORTS_PER_MINUTE", "6")
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .context("CONNECTIONS_REPORTS_PER_MINUTE must be a positive number")?,
            providers_file: std::env::var_os("CONNECTIONS_PROVIDERS_FILE").map(std::path::PathBuf::from),
            upkeep: upkeep()?,
            idempotency_ttl: std::time::Duration::from_secs(
                env_or("CONNECTIONS_IDEMPOTENCY_TTL_SECS", "86400")
                    .parse::<u64>()
                    .ok()
                    .filter(|seconds| *seconds >= 60)
                    .context("CONNECTIONS_IDEMPOTENCY_TTL_SECS must be a number of seconds, at least 60")?,
            ),
            instance: std::env::var("CONNECTIONS_INSTANCE").ok().filter(|name| !name.is_empty()),
            nats_replicas: env_or("CONNECTIONS_NATS_REPLICAS", "1")
                .parse()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .context("CONNECTIONS_NATS_REPLICAS must be a number from 1 to 5")?,
            shutdown_grace: std::time::Duration::from_secs(
                env_or("CONNECTIONS_SHUTDOWN_GRACE_SECS", "20")
                    .parse::<u64>()
                    .ok()
                    .filter(|seconds| *seconds <= 3600)
                    .context("CONNECTIONS_SHUTDOWN_GRACE_SECS must be a number of seconds, at most 3600")?,
            ),
            listen,
            database_url: database_url(),
            nats_url,
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

/// NATS authentication from `CONNECTIONS_NATS_ISSUER_FILE`, or none with
/// `CONNECTIONS_NATS_INSECURE=1`; one of them is required.
pub fn nats_auth() -> anyhow::Result<NatsAuth> {
    let insecure = std::env::var("CONNECTIONS_NATS_INSECURE").is_ok_and(|v| v == "1" || v == "true");
    match (std::env::var("CONNECTIONS_NATS_ISSUER_FILE"), insecure) {
        (Ok(path), _) => Ok(NatsAuth::Issued(Arc::new(issuer(&path)?))),
        (Err(_), true) => Ok(NatsAuth::Insecure),
        (Err(_), false) => anyhow::bail!(
            "set CONNECTIONS_NATS_ISSUER_FILE (written by `connections nats init`; ops/run makes one), \
             or CONNECTIONS_NATS_INSECURE=1 to run without NATS authentication (development only)"
        ),
    }
}

/// The issuer in an issuer file.
pub fn issuer(path: &str) -> anyhow::Result<Issuer> {
    let json = std::fs::read_to_string(path).with_context(|| format!("reading CONNECTIONS_NATS_ISSUER_FILE {path}"))?;
    Issuer::from_json(&json).with_context(|| format!("CONNECTIONS_NATS_ISSUER_FILE {path}"))
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
    if let Ok(path) = std::env::var("CONNECTIONS_MASTER_KEYS_FILE") {
        return Ok(Arc::new(keyring(&path).with_context(|| format!("CONNECTIONS_MASTER_KEYS_FILE {path}"))?));
    }
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

/// A keyring file (`CONNECTIONS_MASTER_KEYS_FILE`, JSON):
/// `{"current": "k2", "keys": [{"id": "k2", "key_file": "…"}, {"id": "k1", "key_env": "…"}],
///   "derivation_key_file": "…"}`. New data keys are wrapped under `current`;
/// the others still unwrap. Purpose keys (fingerprints, idempotency, OAuth
/// state) are derived from `derivation_key_file` (or `derivation_key_env`)
/// when given, else from the current key: when rotating away from a single
/// key, point it at that first key so those keys do not change.
fn keyring(path: &str) -> anyhow::Result<MasterKey> {
    let text = std::fs::read_to_string(path).context("reading it")?;
    let file: serde_json::Value = serde_json::from_str(&text).context("it is not JSON")?;
    let material = |entry: &serde_json::Value, what: &str| -> anyhow::Result<String> {
        match (entry[format!("{what}_file")].as_str(), entry[format!("{what}_env")].as_str()) {
            (Some(file), None) => std::fs::read_to_string(file).with_context(|| format!("reading {file}")),
            (None, Some(var)) => std::env::var(var).with_context(|| format!("{var} is not set")),
            _ => anyhow::bail!("each key needs exactly one of {what}_file and {what}_env"),
        }
    };
    let current = file["current"].as_str().context("\"current\" (a key id) is required")?;
    let mut keys = Vec::new();
    for entry in file["keys"].as_array().context("\"keys\" (an array) is required")? {
        let id = entry["id"].as_str().context("every key needs an \"id\"")?;
        keys.push(MasterKey::from_base64(id, &material(entry, "key")?).with_context(|| format!("key {id}"))?);
    }
    let position =
        keys.iter().position(|k| k.key_id() == current).with_context(|| format!("no key has id {current}"))?;
    let mut ring = keys.remove(position).with_previous(keys)?;
    let derivation = match (file.get("derivation_key_file"), file.get("derivation_key_env")) {
        (None, None) => None,
        _ => Some(material(&file, "derivation_key")?),
    };
    if let Some(encoded) = derivation {
        ring = ring.deriving_from(&MasterKey::from_base64("derivation", &encoded).context("derivation key")?);
    }
    Ok(ring)
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
    let mut authenticator = if let Ok(path) = std::env::var("CONNECTIONS_JWT_ED25519_PUBLIC_KEY_FILE") {
        let pem = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
        Authenticator::ed25519_pem(&pem)?
    } else if let Ok(path) = std::env::var("CONNECTIONS_JWT_RS256_PUBLIC_KEY_FILE") {
        let pem = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
        Authenticator::rs256_pem(&pem)?
    } else {
        Authenticator::hs256(&jwt_secret()?)?
    };
    if let Some(audience) = jwt_audience() {
        authenticator = authenticator.with_audience(&audience);
    }
    if let Some(issuer) = jwt_issuer() {
        authenticator = authenticator.with_issuer(&issuer);
    }
    Ok(Arc::new(authenticator))
}

/// `CONNECTIONS_JWT_AUDIENCE`: when set, every token must carry this `aud`.
pub fn jwt_audience() -> Option<String> {
    std::env::var("CONNECTIONS_JWT_AUDIENCE").ok().filter(|v| !v.is_empty())
}

/// `CONNECTIONS_JWT_ISSUER`: when set, every token must carry this `iss`.
pub fn jwt_issuer() -> Option<String> {
    std::env::var("CONNECTIONS_JWT_ISSUER").ok().filter(|v| !v.is_empty())
}
