//! What every handler shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connections_fanout::Signals;
use connections_sealing::MasterKey;
use connections_store::Database;

use crate::auth::{AuthConfigError, Authenticator};
use crate::problem::ApiError;
use crate::providers::Providers;
use crate::runtime_nats::RuntimeNats;

/// The application state: the database pools, the master key, the token
/// verifier, limits.
#[derive(Clone)]
pub struct AppState {
    /// The pool of commands and resolves: nothing else takes from it, so
    /// reads cannot hold back a revoke or a resolve.
    pub database: Database,
    /// The pool of reads: the read API, history, SSE, `min_position` waits.
    pub reads: Database,
    /// The key that wraps every data key.
    pub master_key: Arc<MasterKey>,
    /// Verifies bearer tokens.
    pub authenticator: Arc<Authenticator>,
    /// Log activity: appends and projection progress (for `min_position` and SSE).
    pub signals: Signals,
    /// How agent runtimes reach NATS, and the issuer of their credentials.
    pub runtime_nats: Arc<RuntimeNats>,
    /// Limits and lifetimes.
    pub settings: Arc<Settings>,
    /// This instance: its name, whether it is stopping, its NATS link.
    pub lifecycle: Lifecycle,
}

impl AppState {
    /// A state that reaches no NATS (runtimes never ask it for NATS
    /// credentials): for the benchmarks' in-process servers and the key
    /// commands. Tokens are HS256 with `secret`.
    pub fn local(
        database: Database,
        reads: Database,
        master_key: Arc<MasterKey>,
        secret: &[u8],
        settings: Settings,
    ) -> Result<Self, AuthConfigError> {
        Ok(Self {
            database,
            reads,
            master_key,
            authenticator: Arc::new(Authenticator::hs256(secret)?),
            signals: Signals::new(),
            lifecycle: Lifecycle::default(),
            runtime_nats: Arc::new(RuntimeNats {
                names: connections_fanout::Names::new("local").expect("a valid prefix"),
                urls: Vec::new(),
                issuer: None,
                ttl: Duration::from_secs(300),
            }),
            settings: Arc::new(settings),
        })
    }
}

/// What `/health`, `/ready` and `/metrics` report about this instance, and
/// the shutdown every long-lived answer (change streams) ends with.
#[derive(Clone)]
pub struct Lifecycle {
    /// The instance's name (`CONNECTIONS_INSTANCE`, by default its listen address).
    pub instance: Arc<str>,
    /// Turns true when the instance begins to shut down.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Whether the instance's own NATS connection is up; `None` where the
    /// instance has none (in-process tests).
    pub nats_connected: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// Publishes a command's urgent notices (revocations, rotations) right
    /// after its commit, ahead of the relay's copies; `None` where the
    /// instance has no NATS connection (the relay's copies then come alone).
    pub urgent_notices: Option<connections_fanout::UrgentNotices>,
}

impl Lifecycle {
    /// An instance named `instance`, not stopping, without a NATS probe.
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.into(),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            nats_connected: None,
            urgent_notices: None,
        }
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once shutdown has begun.
    pub async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new("local")
    }
}

/// Limits, lifetimes and configured providers, with their defaults.
#[derive(Debug)]
pub struct Settings {
    /// How long idempotency records are replayed (`CONNECTIONS_IDEMPOTENCY_TTL_SECS`, 24 h).
    pub idempotency_ttl: Duration,
    /// Open change streams per user (`CONNECTIONS_STREAMS_PER_USER`, 16).
    pub streams: StreamLimit,
    /// Problem reports per connection and agent per minute
    /// (`CONNECTIONS_REPORTS_PER_MINUTE`, 6).
    pub reports: ReportLimit,
    /// The OAuth 2.0 providers (`CONNECTIONS_PROVIDERS_FILE`; none by default).
    pub providers: Providers,
    /// OAuth refreshes in flight, one per connection.
    pub refreshes: crate::refresh::RefreshFlights,
    /// The background refresher and upstream revoker.
    pub upkeep: UpkeepSettings,
    /// Commands that arrive together share a transaction
    /// (`CONNECTIONS_COMMIT_GROUP`, at most 16 in one; 1: each alone).
    pub commit_groups: Arc<crate::groups::CommitGroups>,
}

/// How the background token upkeep (`crate::upkeep`) paces itself.
#[derive(Debug, Clone)]
pub struct UpkeepSettings {
    /// How long before its access token expires a connection is refreshed
    /// in the background (`CONNECTIONS_REFRESH_MARGIN_SECS`, 300), or at half
    /// its lifetime when that is shorter. Resolves refresh within
    /// [`crate::refresh::MARGIN`] as a backstop.
    pub margin: Duration,
    /// A connection whose token does not expire sooner is refreshed this
    /// long after its last version (24 h: some providers revoke refresh
    /// tokens left unused).
    pub max_age: Duration,
    /// Refreshes and revocations in flight at once (`CONNECTIONS_REFRESH_CONCURRENCY`, 16).
    pub concurrency: usize,
    /// The first pause after a transient failure, doubled after each
    /// (`CONNECTIONS_UPKEEP_RETRY_BASE_MS`, 1000), at most [`Self::max_retry`].
    pub retry_base: Duration,
    /// The longest pause between two attempts (10 minutes).
    pub max_retry: Duration,
    /// Calls to a revocation endpoint before giving up
    /// (`CONNECTIONS_UPSTREAM_REVOKE_ATTEMPTS`, 10).
    pub revoke_attempts: u32,
}

impl Default for UpkeepSettings {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
            concurrency: 16,
            retry_base: Duration::from_secs(1),
            max_retry: Duration::from_secs(600),
            revoke_attempts: 10,
        }
    }
}

impl UpkeepSettings {
    /// When a version sealed at `now` whose access token expires at
    /// `expires_at` should be refreshed: `margin` before expiry (half the
    /// lifetime when that is shorter, so that short-lived tokens are not
    /// refreshed in a loop), and at most `max_age` after `now`; never
    /// sooner than a second from now.
    pub fn due_at(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> chrono::DateTime<chrono::Utc> {
        let latest = now + chrono::Duration::from_std(self.max_age).unwrap_or(chrono::Duration::days(1));
        let Some(expires_at) = expires_at else {
            return latest;
        };
        let lifetime = expires_at - now;
        let margin = chrono::Duration::from_std(self.margin).unwrap_or(chrono::Duration::minutes(5));
        let lead = margin.min(lifetime / 2);
        (expires_at - lead).min(latest).max(now + chrono::Duration::seconds(1))
    }

    /// The pause after the `failures`-th transient failure in a row
    /// (1-based), or what the provider asked for if longer.
    pub fn retry_after(&self, failures: u32, asked: Option<Duration>) -> Duration {
        let doubled = self.retry_base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.max_retry).max(asked.unwrap_or_default().min(Duration::from_secs(86_400)))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idempotency_ttl: Duration::from_secs(86_400),
            streams: StreamLimit::new(16),
            reports: ReportLimit::new(6),
            providers: Providers::none(),
            refreshes: Default::default(),
            upkeep: UpkeepSettings::default(),
            commit_groups: Arc::default(),
        }
    }
}

/// Counts problem reports per (connection, agent) in one-minute windows, so
/// that a runtime reporting in a loop costs the database at most this many
/// transactions a minute (per server instance).
#[derive(Debug)]
pub struct ReportLimit {
    per_minute: u32,
    windows: Mutex<HashMap<(uuid::Uuid, String), (std::time::Instant, u32)>>,
}

impl ReportLimit {
    /// How many entries the table may hold before expired windows are swept.
    const SWEEP_AT: usize = 10_000;

    /// At most `per_minute` reports per connection and agent.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, windows: Mutex::default() }
    }

    /// Counts one report; 429 with the seconds until the window ends when
    /// the window is full.
    pub fn admit(&self, connection_id: uuid::Uuid, agent: &str) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        let window = Duration::from_secs(60);
        let mut windows = self.windows.lock().expect("report windows");
        if windows.len() >= Self::SWEEP_AT {
            windows.retain(|_, (started, _)| now.duration_since(*started) < window);
        }
        let (started, count) = windows.entry((connection_id, agent.to_owned())).or_insert((now, 0));
        if now.duration_since(*started) >= window {
            (*started, *count) = (now, 0);
        }
        if *count >= self.per_minute {
            let wait = window.saturating_sub(now.duration_since(*started)).as_secs().max(1);
            return Err(ApiError::TooManyReports(wait));
        }
        *count += 1;
        Ok(())
    }
}

/// Counts each user's open change streams.
#[derive(Debug)]
pub struct StreamLimit {
    per_user: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl StreamLimit {
    /// At most `per_user` streams per user.
    pub fn new(per_user: usize) -> Self {
        Self { per_user, open: Arc::default() }
    }

    /// A permit for one more stream of `owner`, released on drop; 429 when
    /// the owner has `per_user` open.
    pub fn open(&self, owner: &str) -> Result<StreamPermit, ApiError> {
        let mut open = self.open.lock().expect("stream counts");
        let count = open.entry(owner.to_owned()).or_default();
        if *count >= self.per_user {
            return Err(ApiError::TooManyStreams(self.per_user));
        }
        *count += 1;
        Ok(StreamPermit { owner: owner.to_owned(), open: self.open.clone() })
    }
}

/// One open stream; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamPermit {
    owner: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("stream counts");
        if let Some(count) = open.get_mut(&self.owner) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.owner);
            }
        }
    }
}
