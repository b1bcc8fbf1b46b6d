//! The agent client: resolution over HTTP, a fail-closed cache kept honest
//! by notices over NATS.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connections_fanout::{Names, Notice, NoticeKind};
use futures_util::StreamExt;

use crate::credential::ResolvedCredential;

/// How to reach Connections.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The HTTP API, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// An agent token (`connections token --agent A --owner U`).
    pub token: String,
    /// The NATS server carrying notices.
    pub nats_url: String,
    /// The deployment's `CONNECTIONS_NATS_PREFIX`.
    pub prefix: String,
    /// The user this runtime acts for.
    pub owner: String,
    /// This agent.
    pub agent: String,
    /// How often the NATS connection is confirmed alive (at most 1 s).
    pub heartbeat: Duration,
}

impl AgentConfig {
    /// A configuration with a 1-second heartbeat.
    pub fn new(
        base_url: impl Into<String>,
        token: impl Into<String>,
        nats_url: impl Into<String>,
        prefix: impl Into<String>,
        owner: impl Into<String>,
        agent: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            token: token.into(),
            nats_url: nats_url.into(),
            prefix: prefix.into(),
            owner: owner.into(),
            agent: agent.into(),
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// A cached credential dropped because of a notice.
#[derive(Debug, Clone)]
pub struct Invalidation {
    /// The connection.
    pub connection_id: String,
    /// The service it was cached for.
    pub service: String,
    /// Why.
    pub kind: NoticeKind,
    /// When the client dropped it.
    pub at: Instant,
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The prefix is not a valid NATS prefix.
    #[error("invalid prefix")]
    Prefix(#[from] connections_fanout::NamesError),
    /// NATS could not be reached.
    #[error("NATS: {0}")]
    Nats(String),
}

/// Why no credential was handed out.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The owner must create or pick a connection for this service.
    #[error("authorization required for {0}")]
    AuthorizationRequired(String),
    /// The connection was revoked.
    #[error("the connection was revoked")]
    Revoked,
    /// The token was refused.
    #[error("unauthorized")]
    Unauthorized,
    /// Any other answer or transport failure (never containing a secret).
    #[error("resolution failed: {0}")]
    Failed(String),
}

struct Inner {
    config: AgentConfig,
    names: Names,
    http: reqwest::Client,
    nats: async_nats::Client,
    /// service → credential
    cache: Mutex<HashMap<String, Arc<ResolvedCredential>>>,
    subscribed: Mutex<HashSet<String>>,
    /// False from a disconnect until the connection is back: nothing is
    /// served from or put into the cache meanwhile.
    fresh: AtomicBool,
    /// Tells subscribers which cached credentials were dropped and why.
    invalidations: tokio::sync::broadcast::Sender<Invalidation>,
    /// Bumped by every notice and every connection change. An answer is
    /// cached only if no bump happened while it was being fetched, so a
    /// notice that overtakes an answer cannot be undone by caching it.
    generation: AtomicU64,
}

/// The client; cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

impl AgentClient {
    /// Connects to NATS and subscribes to this agent's binding notices.
    pub async fn connect(config: AgentConfig) -> Result<Self, ConnectError> {
        let names = Names::new(&config.prefix)?;
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let nats = async_nats::ConnectOptions::new()
            .ping_interval(config.heartbeat.min(Duration::from_secs(1)))
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.send(event);
                }
            })
            .connect(&config.nats_url)
            .await
            .map_err(|e| ConnectError::Nats(e.to_string()))?;
        let inner = Arc::new(Inner {
            names,
            http: reqwest::Client::new(),
            nats,
            cache: Mutex::default(),
            subscribed: Mutex::default(),
            fresh: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            invalidations: tokio::sync::broadcast::channel(1024).0,
            config,
        });
        // Connection state: fail closed on any disconnect.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                inner.generation.fetch_add(1, Ordering::SeqCst);
                match event {
                    async_nats::Event::Disconnected => {
                        inner.fresh.store(false, Ordering::SeqCst);
                        inner.cache.lock().expect("cache").clear();
                    }
                    async_nats::Event::Connected => {
                        // Notices sent while away were missed: start empty.
                        inner.cache.lock().expect("cache").clear();
                        inner.fresh.store(true, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        });
        let client = Self { inner };
        let subject = client.inner.names.agent_notices(&client.inner.config.owner, &client.inner.config.agent);
        client.follow(subject).await.map_err(|e| ConnectError::Nats(e.to_string()))?;
        Ok(client)
    }

    /// The credential to use for `service`: from the cache while it is
    /// fresh, otherwise from the server.
    pub async fn resolve(&self, service: &str) -> Result<Arc<ResolvedCredential>, ResolveError> {
        if let Some(cached) = self.cached(service) {
            return Ok(cached);
        }
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let first = self.fetch(service).await?;
        if !self.inner.subscribed.lock().expect("subscribed").contains(&first.connection_id) {
            // Subscribe before caching, then ask again: a revocation between
            // the first answer and the subscription cannot slip through.
            let subject = self.inner.names.connection_notices(&first.connection_id);
            self.follow(subject).await.map_err(|e| ResolveError::Failed(e.to_string()))?;
            let generation = self.inner.generation.load(Ordering::SeqCst);
            let second = Arc::new(self.fetch(service).await?);
            self.store(service, second.clone(), generation);
            return Ok(second);
        }
        let first = Arc::new(first);
        self.store(service, first.clone(), generation);
        Ok(first)
    }

    /// The cached credential for `service`, if it may be used now.
    pub fn cached(&self, service: &str) -> Option<Arc<ResolvedCredential>> {
        if !self.is_fresh() {
            return None;
        }
        let cache = self.inner.cache.lock().expect("cache");
        cache.get(service).filter(|c| c.expires > Instant::now()).cloned()
    }

    /// Every cached credential this client drops because of a notice, as it
    /// happens (for runtimes that hold credentials outside this cache).
    pub fn invalidations(&self) -> tokio::sync::broadcast::Receiver<Invalidation> {
        self.inner.invalidations.subscribe()
    }

    /// Whether the notice channel is known to be up.
    pub fn is_fresh(&self) -> bool {
        self.inner.fresh.load(Ordering::SeqCst)
            && self.inner.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Caches an answer fetched when the generation was `generation`, unless
    /// a notice or a connection change came in since (or the channel is down).
    fn store(&self, service: &str, credential: Arc<ResolvedCredential>, generation: u64) {
        let mut cache = self.inner.cache.lock().expect("cache");
        // Checked under the cache lock, which notices also take.
        if self.is_fresh() && self.inner.generation.load(Ordering::SeqCst) == generation {
            cache.insert(service.to_owned(), credential);
        }
    }

    async fn fetch(&self, service: &str) -> Result<ResolvedCredential, ResolveError> {
        let config = &self.inner.config;
        let response = self
            .inner
            .http
            .post(format!("{}/v1/resolve", config.base_url.trim_end_matches('/')))
            .bearer_auth(&config.token)
            .json(&serde_json::json!({ "service": service }))
            .send()
            .await
            .map_err(|e| ResolveError::Failed(e.without_url().to_string()))?;
        let status = response.status();
        let body: serde_json::Value =
            response.json().await.map_err(|_| ResolveError::Failed(format!("HTTP {status}")))?;
        match status.as_u16() {
            200 => {}
            401 => return Err(ResolveError::Unauthorized),
            409 if body["type"] == "urn:connections:problem:authorization-required" => {
                return Err(ResolveError::AuthorizationRequired(service.to_owned()))
            }
            409 if body["type"] == "urn:connections:problem:connection-revoked" => return Err(ResolveError::Revoked),
            _ => return Err(ResolveError::Failed(format!("HTTP {status}: {}", body["type"]))),
        }
        let lease = Duration::from_secs(body["lease_seconds"].as_u64().unwrap_or(0));
        Ok(ResolvedCredential {
            connection_id: body["connection_id"].as_str().unwrap_or_default().to_owned(),
            credential_version: body["credential_version"].as_u64().unwrap_or_default(),
            via: body["via"].as_str().unwrap_or_default().to_owned(),
            service: service.to_owned(),
            credential: body["credential"].clone(),
            expires: Instant::now() + lease,
        })
    }

    /// Subscribes to a notice subject and applies its notices to the cache.
    async fn follow(&self, subject: String) -> Result<(), async_nats::Error> {
        let mut subscription = self.inner.nats.subscribe(subject.clone()).await?;
        // Make sure the server has the subscription before we rely on it.
        self.inner.nats.flush().await?;
        if let Some(connection_id) = subject.rsplit('.').next().filter(|_| subject.contains(".notices.connection.")) {
            self.inner.subscribed.lock().expect("subscribed").insert(connection_id.to_owned());
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let Some(inner) = weak.upgrade() else { return };
                let Ok(notice) = serde_json::from_slice::<Notice>(&message.payload) else {
                    tracing::warn!("ignoring a malformed notice");
                    continue;
                };
                let mut cache = inner.cache.lock().expect("cache");
                let before = cache.len();
                match (notice.kind, notice.bound) {
                    // Being bound to a connection never makes an earlier
                    // answer wrong by itself: moving away from another
                    // connection always comes with its own `bound: false`.
                    (NoticeKind::BindingChanged, Some(true)) => {
                        if cache.get(&notice.service).is_some_and(|c| c.connection_id != notice.connection_id) {
                            cache.remove(&notice.service);
                        }
                    }
                    (NoticeKind::BindingChanged, _) => {
                        inner.generation.fetch_add(1, Ordering::SeqCst);
                        cache.remove(&notice.service);
                    }
                    (NoticeKind::Revoked | NoticeKind::Rotated, _) => {
                        inner.generation.fetch_add(1, Ordering::SeqCst);
                        cache.retain(|_, credential| credential.connection_id != notice.connection_id);
                    }
                }
                if cache.len() < before {
                    let _ = inner.invalidations.send(Invalidation {
                        connection_id: notice.connection_id.clone(),
                        service: notice.service.clone(),
                        kind: notice.kind,
                        at: Instant::now(),
                    });
                }
            }
        });
        Ok(())
    }
}
