//! The agent client: resolution over HTTP, a fail-closed cache kept honest
//! by notices over NATS, with NATS credentials obtained from (and renewed
//! with) the agent token.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use connections_wire::{problem, Names, Notice, NoticeKind, RuntimeCredentials};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::credential::ResolvedCredential;

/// A cached credential dropped: a runtime holding it elsewhere must drop it too.
#[derive(Debug, Clone)]
pub struct Invalidation {
    /// The connection.
    pub connection_id: String,
    /// The service it was cached for.
    pub service: String,
    /// Why.
    pub reason: InvalidationReason,
    /// When the client dropped it.
    pub at: Instant,
}

/// Why a cached credential was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationReason {
    /// A notice: revoked, rotated, or the binding changed.
    Notice(NoticeKind),
    /// The client cannot know (NATS disconnected, or dropped notices): it
    /// failed closed, and resolves afresh once back in sync.
    FailedClosed,
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The agent token was refused (expired, malformed, wrongly signed, or
    /// not an agent token).
    #[error("the agent token was refused: {0}")]
    Unauthorized(String),
    /// The server did not hand out NATS credentials.
    #[error("obtaining NATS credentials: {0}")]
    Credentials(String),
    /// The prefix the server named is not a valid NATS prefix.
    #[error("invalid prefix")]
    Prefix(#[from] connections_wire::NamesError),
    /// NATS could not be reached, or refused the credentials.
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

/// What the server did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOutcome {
    /// Whether this report was the one recorded (the first for that
    /// version); a repeat is accepted and changes nothing.
    pub recorded: bool,
    /// Whether the connection now needs the owner's attention (false when
    /// the report was about a version the owner has already rotated away).
    pub needs_attention: bool,
}

/// Why a report was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// This agent was never handed that connection (or it does not exist).
    #[error("not a connection this agent was handed")]
    NotFound,
    /// The connection was revoked meanwhile.
    #[error("the connection was revoked")]
    Revoked,
    /// Reported too often; retry after this long.
    #[error("too many reports; retry in {0:?}")]
    TooMany(Duration),
    /// The token was refused.
    #[error("unauthorized")]
    Unauthorized,
    /// Refused as invalid (the field named), e.g. a detail containing the
    /// credential.
    #[error("invalid report: {0}")]
    Invalid(String),
    /// Any other answer or transport failure.
    #[error("report failed: {0}")]
    Failed(String),
}

/// One NATS connection with one set of credentials, and the tasks reading
/// its subscriptions. Renewing the credentials opens a new session with the
/// same subscriptions before the old one is closed.
struct Session {
    id: u64,
    client: async_nats::Client,
    /// When its credentials expire (`None`: NATS without authentication).
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When they were obtained.
    obtained: Instant,
    /// subject → the task reading its subscription (aborting it drops the
    /// subscription, which unsubscribes).
    readers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Round trips through nats-server (see [`Session::confirm`]).
    echo: Arc<Echo>,
}

/// The runtime's echo subject on one session: a token published there comes
/// back once nats-server has handled everything sent before it.
struct Echo {
    subject: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
}

/// How long a round trip through nats-server may take before the client
/// gives up on it (and on the subscription it was confirming).
const CONFIRM_WITHIN: Duration = Duration::from_secs(5);

impl Session {
    /// Returns once nats-server has handled everything this session sent
    /// before (a subscription is in force from then on). async-nats's
    /// `flush` only writes to the socket, which proves nothing of the sort;
    /// this publishes a token to the runtime's echo subject and waits for
    /// it to come back.
    async fn confirm(&self) -> Result<(), async_nats::Error> {
        let token = self.echo.next.fetch_add(1, Ordering::SeqCst);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.echo.waiting.lock().expect("echo").insert(token, sender);
        // Bounded as a whole: on a connection that is down, even the flush
        // waits (for a reconnect that may never come, e.g. with expired
        // credentials), and the caller may hold the lock a renewal needs.
        let round_trip = tokio::time::timeout(CONFIRM_WITHIN, async {
            self.client.publish(self.echo.subject.clone(), token.to_string().into()).await?;
            self.client.flush().await?;
            receiver.await?;
            Ok::<_, async_nats::Error>(())
        });
        let outcome = round_trip.await;
        self.echo.waiting.lock().expect("echo").remove(&token);
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("no round trip through NATS: {error}").into()),
            Err(_) => Err(format!("no round trip through NATS within {CONFIRM_WITHIN:?}").into()),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, reader) in self.readers.lock().expect("readers").drain() {
            reader.abort();
        }
    }
}

struct Inner {
    config: AgentConfig,
    /// The agent token in use (starts as `config.token`; see [`AgentClient::set_token`]).
    token: Mutex<String>,
    names: Names,
    owner: String,
    agent: String,
    http: reqwest::Client,
    /// This runtime's NATS user key; its seed never leaves the process.
    key: Arc<nkeys::KeyPair>,
    session: Mutex<Arc<Session>>,
    /// Held while subscribing or replacing the session, so a subscription
    /// cannot fall between the old session and the new.
    changing: tokio::sync::Mutex<()>,
    /// Every notice subject followed (carried over to each new session).
    subjects: Mutex<BTreeSet<String>>,
    /// Subjects of revoked connections, still subscribed on the current
    /// session until the next `follow` ends them.
    retired: Mutex<Vec<String>>,
    next_session: AtomicU64,
    events: mpsc::UnboundedSender<(u64, async_nats::Event)>,
    /// service → credential
    cache: Mutex<HashMap<String, Arc<ResolvedCredential>>>,
    subscribed: Mutex<HashSet<String>>,
    /// False from a disconnect (or dropped notices) until the client is back
    /// in sync: nothing is served from or put into the cache meanwhile.
    fresh: AtomicBool,
    /// Set for good once NATS refuses a notice subscription: the client then
    /// caches nothing (every resolve asks the server).
    deaf: AtomicBool,
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
    /// Obtains NATS credentials with the agent token, connects to NATS and
    /// subscribes to this agent's binding notices. The credentials are
    /// renewed before they expire, on a new connection that takes over the
    /// subscriptions before the old one closes.
    pub async fn connect(config: AgentConfig) -> Result<Self, ConnectError> {
        let http = reqwest::Client::new();
        let key = Arc::new(nkeys::KeyPair::new_user());
        let credentials = obtain(&http, &config.base_url, &config.token, &key).await?;
        let names = Names::new(&credentials.prefix)?;
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let session = open_session(&config, &key, &credentials, &names, 0, &events_tx).await?;
        let inner = Arc::new(Inner {
            names,
            owner: credentials.owner.clone(),
            agent: credentials.agent.clone(),
            http,
            key,
            session: Mutex::new(Arc::new(session)),
            changing: tokio::sync::Mutex::new(()),
            subjects: Mutex::default(),
            retired: Mutex::default(),
            next_session: AtomicU64::new(1),
            events: events_tx,
            cache: Mutex::default(),
            subscribed: Mutex::default(),
            fresh: AtomicBool::new(true),
            deaf: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            invalidations: tokio::sync::broadcast::channel(1024).0,
            token: Mutex::new(config.token.clone()),
            config,
        });
        // Connection state: fail closed on any disconnect or dropped notice.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some((session, event)) = events.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                // From any session, a renewal's new one included: a
                // subscription NATS refused (the credentials' subscription
                // limit, or a subject outside them) never delivers its
                // notices, so nothing may be cached from here on.
                if let async_nats::Event::ServerError(error) = &event {
                    if refuses_subscription(error) {
                        tracing::error!(%error, "NATS refused a notice subscription; the cache stays off");
                        inner.deaf.store(true, Ordering::SeqCst);
                        inner.fail_closed();
                    }
                }
                if session != inner.current().id {
                    continue; // a replaced session's goodbye
                }
                on_event(&inner, event).await;
            }
        });
        tokio::spawn(renew_forever(Arc::downgrade(&inner)));
        let client = Self { inner };
        let subject = client.inner.names.agent_notices(&client.inner.owner, &client.inner.agent);
        client.follow(subject).await.map_err(|e| ConnectError::Nats(e.to_string()))?;
        Ok(client)
    }

    /// The user this runtime acts for (from its token).
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// This agent (from its token).
    pub fn agent(&self) -> &str {
        &self.inner.agent
    }

    /// The credential to use for `service`: from the cache while it is
    /// fresh, otherwise from the server.
    pub async fn resolve(&self, service: &str) -> Result<Arc<ResolvedCredential>, ResolveError> {
        if let Some(cached) = self.cached(service) {
            return Ok(cached);
        }
        let mut generation = self.inner.generation.load(Ordering::SeqCst);
        let mut answer = self.fetch(service).await?;
        // Subscribe before caching, then ask again: a revocation between an
        // answer and the subscription cannot slip through. If the next
        // answer names yet another connection, that one is subscribed to
        // first as well.
        for _ in 0..4 {
            if self.inner.subscribed.lock().expect("subscribed").contains(&answer.connection_id) {
                let answer = Arc::new(answer);
                self.store(service, answer.clone(), generation);
                return Ok(answer);
            }
            let subject = self.inner.names.connection_notices(&self.inner.owner, &answer.connection_id);
            self.follow(subject).await.map_err(|e| ResolveError::Failed(e.to_string()))?;
            generation = self.inner.generation.load(Ordering::SeqCst);
            answer = self.fetch(service).await?;
        }
        // The binding keeps moving: hand the latest answer out, uncached.
        Ok(Arc::new(answer))
    }

    /// The cached credential for `service`, if it may be used now.
    pub fn cached(&self, service: &str) -> Option<Arc<ResolvedCredential>> {
        if !self.is_fresh() {
            return None;
        }
        let cache = self.inner.cache.lock().expect("cache");
        cache.get(service).filter(|c| c.expires > Instant::now()).cloned()
    }

    /// Every cached credential this client drops, because of a notice or
    /// because it failed closed, as it happens (for runtimes that hold
    /// credentials outside this cache).
    pub fn invalidations(&self) -> tokio::sync::broadcast::Receiver<Invalidation> {
        self.inner.invalidations.subscribe()
    }

    /// Whether the notice channel is known to be up and in sync.
    pub fn is_fresh(&self) -> bool {
        self.inner.is_fresh()
    }

    /// What the client knows of `connection_id`'s notices, for a report
    /// when a notice seems not to have arrived (never contains a secret).
    pub fn diagnose(&self, connection_id: &str) -> String {
        let inner = &self.inner;
        let subject = inner.names.connection_notices(&inner.owner, connection_id);
        let session = inner.current();
        let reader = session.readers.lock().expect("readers").get(&subject).map(|r| r.is_finished());
        let stats = session.client.statistics();
        format!(
            "session {} (opened {:?} ago, {:?}), fresh: {}, deaf: {}, a subscription or renewal under way: {}, \
             subject followed: {}, subscribed: {}, retired: {}, \
             reader on this session: {}, subjects followed: {}, messages in on this session: {}",
            session.id,
            session.obtained.elapsed(),
            session.client.connection_state(),
            inner.fresh.load(Ordering::SeqCst),
            inner.deaf.load(Ordering::SeqCst),
            inner.changing.try_lock().is_err(),
            inner.subjects.lock().expect("subjects").contains(&subject),
            inner.subscribed.lock().expect("subscribed").contains(connection_id),
            inner.retired.lock().expect("retired").contains(&subject),
            match reader {
                None => "none",
                Some(true) => "finished",
                Some(false) => "running",
            },
            inner.subjects.lock().expect("subjects").len(),
            stats.in_messages.load(Ordering::Relaxed),
        )
    }

    /// Replaces the agent token (for the same agent and owner), e.g. before
    /// the current one expires: resolves and NATS credential renewals use
    /// it from now on. NATS credentials never outlive the token they were
    /// obtained with, so a runtime keeps its notices only by renewing its token.
    pub fn set_token(&self, token: impl Into<String>) {
        *self.inner.token.lock().expect("token") = token.into();
    }

    /// When the current NATS credentials expire (`None` without NATS
    /// authentication); they are renewed at two thirds of their life.
    pub fn credentials_expire_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.inner.current().expires_at
    }

    /// Reports that the provider rejected `credential` (HTTP 401/403), with
    /// the provider's status and a short detail that must not contain the
    /// credential. This client stops serving it from its cache at once; the
    /// server records the first report, marks the connection as needing the
    /// owner's attention, and tells the other runtimes holding it.
    pub async fn report_rejected(
        &self,
        credential: &ResolvedCredential,
        status: Option<u16>,
        detail: Option<&str>,
    ) -> Result<ReportOutcome, ReportError> {
        {
            let mut cache = self.inner.cache.lock().expect("cache");
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
            cache.retain(|_, cached| cached.connection_id != credential.connection_id);
        }
        let token = self.inner.token.lock().expect("token").clone();
        let url = format!(
            "{}/v1/connections/{}/problems",
            self.inner.config.base_url.trim_end_matches('/'),
            credential.connection_id
        );
        let mut body = serde_json::json!({ "kind": "rejected", "credential_version": credential.credential_version });
        if let Some(status) = status {
            body["status"] = status.into();
        }
        if let Some(detail) = detail {
            body["detail"] = detail.into();
        }
        let response = self
            .inner
            .http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| ReportError::Failed(e.without_url().to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let body: serde_json::Value =
            response.json().await.map_err(|_| ReportError::Failed(format!("HTTP {status}")))?;
        let slug = body["type"].as_str().and_then(problem::slug_of);
        match (status.as_u16(), slug) {
            (200, _) => Ok(ReportOutcome {
                recorded: body["recorded"].as_bool().unwrap_or(false),
                needs_attention: body["needs_attention"].as_bool().unwrap_or(false),
            }),
            (401, _) => Err(ReportError::Unauthorized),
            (404, _) => Err(ReportError::NotFound),
            (409, Some(problem::CONNECTION_REVOKED)) => Err(ReportError::Revoked),
            (429, _) => Err(ReportError::TooMany(retry_after.unwrap_or(Duration::from_secs(60)))),
            (400, _) => Err(ReportError::Invalid(body["field"].as_str().unwrap_or("body").to_owned())),
            _ => Err(ReportError::Failed(format!("HTTP {status}: {}", body["type"]))),
        }
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
        let token = self.inner.token.lock().expect("token").clone();
        let response = self
            .inner
            .http
            .post(format!("{}/v1/resolve", self.inner.config.base_url.trim_end_matches('/')))
            .bearer_auth(token)
            .json(&serde_json::json!({ "service": service }))
            .send()
            .await
            .map_err(|e| ResolveError::Failed(e.without_url().to_string()))?;
        let status = response.status();
        let body: serde_json::Value =
            response.json().await.map_err(|_| ResolveError::Failed(format!("HTTP {status}")))?;
        let slug = body["type"].as_str().and_then(problem::slug_of);
        match (status.as_u16(), slug) {
            (200, _) => {}
            (401, _) => return Err(ResolveError::Unauthorized),
            (409, Some(problem::AUTHORIZATION_REQUIRED)) => {
                return Err(ResolveError::AuthorizationRequired(service.to_owned()))
            }
            (409, Some(problem::CONNECTION_REVOKED)) => return Err(ResolveError::Revoked),
            _ => return Err(ResolveError::Failed(format!("HTTP {status}: {}", body["type"]))),
        }
        let lease = Duration::from_secs(body["lease_seconds"].as_u64().unwrap_or(0));
        Ok(ResolvedCredential {
            connection_id: body["connection_id"].as_str().unwrap_or_default().to_owned(),
            credential_version: body["credential_version"].as_u64().unwrap_or_default(),
            via: body["via"].as_str().unwrap_or_default().to_owned(),
            needs_attention: body["needs_attention"].as_bool().unwrap_or(false),
            service: service.to_owned(),
            credential: body["credential"].clone(),
            expires: Instant::now() + lease,
        })
    }

    /// Follows a notice subject: subscribes on the current session (and on
    /// every later one) and applies its notices to the cache.
    async fn follow(&self, subject: String) -> Result<(), async_nats::Error> {
        let _changing = self.inner.changing.lock().await;
        let session = self.inner.current();
        // Make room first: end the subscriptions of revoked connections.
        let retired = std::mem::take(&mut *self.inner.retired.lock().expect("retired"));
        for subject in retired {
            if let Some(reader) = session.readers.lock().expect("readers").remove(&subject) {
                reader.abort();
            }
        }
        subscribe(&self.inner, &session, subject.clone()).await?;
        // Make sure the server has the subscription before we rely on it.
        session.confirm().await?;
        self.inner.subjects.lock().expect("subjects").insert(subject.clone());
        if let Some(connection_id) = subject.rsplit('.').next().filter(|_| subject.contains(".connection.")) {
            self.inner.subscribed.lock().expect("subscribed").insert(connection_id.to_owned());
        }
        Ok(())
    }
}

impl Inner {
    fn current(&self) -> Arc<Session> {
        self.session.lock().expect("session").clone()
    }

    fn is_fresh(&self) -> bool {
        self.fresh.load(Ordering::SeqCst)
            && !self.deaf.load(Ordering::SeqCst)
            && self.current().client.connection_state() == async_nats::connection::State::Connected
    }

    /// Stops trusting the cache: empties it and refuses to fill it until
    /// [`Inner::back_in_sync`].
    fn fail_closed(&self) {
        let mut cache = self.cache.lock().expect("cache");
        self.fresh.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        let at = Instant::now();
        for (service, credential) in cache.drain() {
            let _ = self.invalidations.send(Invalidation {
                connection_id: credential.connection_id.clone(),
                service,
                reason: InvalidationReason::FailedClosed,
                at,
            });
        }
    }

    /// Stops following a revoked connection's notices: forgets its subject
    /// (a new session does not subscribe to it), and leaves the unsubscribe
    /// to the next [`AgentClient::follow`]. Unsubscribing now would send
    /// NATS an `UNSUB` from every runtime while it is still fanning the
    /// revocation out to them (it slowed the fan-out's tail measurably).
    fn retire_connection(&self, connection_id: &str) {
        let subject = self.names.connection_notices(&self.owner, connection_id);
        self.subscribed.lock().expect("subscribed").remove(connection_id);
        if self.subjects.lock().expect("subjects").remove(&subject) {
            self.retired.lock().expect("retired").push(subject);
        }
    }

    /// Notices sent while out of sync were missed: start empty, trust again.
    fn back_in_sync(&self) {
        let mut cache = self.cache.lock().expect("cache");
        self.generation.fetch_add(1, Ordering::SeqCst);
        cache.clear();
        self.fresh.store(true, Ordering::SeqCst);
    }
}

async fn on_event(inner: &Arc<Inner>, event: async_nats::Event) {
    match event {
        async_nats::Event::Disconnected => inner.fail_closed(),
        // async-nats says Connected before nats-server has the subscriptions
        // it sends again: back in sync only after a round trip behind them.
        async_nats::Event::Connected if !inner.fresh.load(Ordering::SeqCst) => {
            match inner.current().confirm().await {
                Ok(()) => inner.back_in_sync(),
                // Still failed closed: the next reconnect or renewal tries again.
                Err(error) => tracing::warn!(%error, "reconnected, but not back in sync; the cache stays off"),
            }
        }
        async_nats::Event::SlowConsumer(_) => {
            // NATS dropped notices for us: whatever they said is unknown.
            tracing::warn!("notices were dropped (slow consumer); failing closed until resynchronised");
            inner.fail_closed();
            // Back in sync once the server has answered a round trip after
            // the drop: everything dropped was before it.
            if inner.current().confirm().await.is_ok() {
                inner.back_in_sync();
            }
        }
        async_nats::Event::ServerError(error) => tracing::warn!(%error, "NATS server error"),
        _ => {}
    }
}

/// Whether NATS refused a subscription: nats-server answers `-ERR` and keeps
/// the connection (its wording, any case: "Maximum Subscriptions Exceeded",
/// "Permissions Violation for Subscription to ...").
fn refuses_subscription(error: &async_nats::ServerError) -> bool {
    let async_nats::ServerError::Other(text) = error else { return false };
    let text = text.to_lowercase();
    text.contains("maximum subscriptions") || text.contains("permissions violation for subscription")
}

/// Subscribes to `subject` on `session` and applies its notices to the cache.
async fn subscribe(inner: &Arc<Inner>, session: &Session, subject: String) -> Result<(), async_nats::Error> {
    let mut subscription = session.client.subscribe(subject.clone()).await?;
    let weak = Arc::downgrade(inner);
    let reader = tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let Some(inner) = weak.upgrade() else { return };
            let Ok(notice) = serde_json::from_slice::<Notice>(&message.payload) else {
                tracing::warn!("ignoring a malformed notice");
                continue;
            };
            apply(&inner, &notice);
            if notice.kind == NoticeKind::Revoked {
                // A revoked connection is revoked for good: stop following it,
                // so that a long-lived runtime's subscriptions stay within
                // its credentials' limit.
                inner.retire_connection(&notice.connection_id);
            }
        }
    });
    if let Some(replaced) = session.readers.lock().expect("readers").insert(subject, reader) {
        replaced.abort();
    }
    Ok(())
}

fn apply(inner: &Inner, notice: &Notice) {
    let mut cache = inner.cache.lock().expect("cache");
    let before = cache.len();
    match (notice.kind, notice.bound) {
        // Being bound to a connection never makes an earlier answer wrong by
        // itself: moving away from another connection always comes with its
        // own `bound: false`.
        (NoticeKind::BindingChanged, Some(true)) => {
            if cache.get(&notice.service).is_some_and(|c| c.connection_id != notice.connection_id) {
                cache.remove(&notice.service);
            }
        }
        (NoticeKind::BindingChanged, _) => {
            inner.generation.fetch_add(1, Ordering::SeqCst);
            cache.remove(&notice.service);
        }
        // Rejected: the provider refused this credential; the runtime stops
        // retrying it (a resolve fetches it again, until the owner acts).
        (NoticeKind::Revoked | NoticeKind::Rotated | NoticeKind::Rejected, _) => {
            inner.generation.fetch_add(1, Ordering::SeqCst);
            cache.retain(|_, credential| credential.connection_id != notice.connection_id);
        }
    }
    if cache.len() < before {
        let _ = inner.invalidations.send(Invalidation {
            connection_id: notice.connection_id.clone(),
            service: notice.service.clone(),
            reason: InvalidationReason::Notice(notice.kind),
            at: Instant::now(),
        });
    }
}

/// `POST /v1/runtime/nats-credentials` with this runtime's public key.
async fn obtain(
    http: &reqwest::Client,
    base_url: &str,
    token: &str,
    key: &nkeys::KeyPair,
) -> Result<RuntimeCredentials, ConnectError> {
    let response = http
        .post(format!("{}/v1/runtime/nats-credentials", base_url.trim_end_matches('/')))
        .bearer_auth(token)
        .json(&serde_json::json!({ "public_key": key.public_key() }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ConnectError::Credentials(e.without_url().to_string()))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        return Err(ConnectError::Unauthorized(body["detail"].as_str().unwrap_or("401").to_owned()));
    }
    if !status.is_success() {
        return Err(ConnectError::Credentials(format!("HTTP {status}")));
    }
    response.json().await.map_err(|e| ConnectError::Credentials(format!("unreadable answer: {e}")))
}

async fn open_session(
    config: &AgentConfig,
    key: &Arc<nkeys::KeyPair>,
    credentials: &RuntimeCredentials,
    names: &Names,
    id: u64,
    events: &mpsc::UnboundedSender<(u64, async_nats::Event)>,
) -> Result<Session, ConnectError> {
    let events = events.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("runtime {}/{}", credentials.owner, credentials.agent))
        .ping_interval(config.heartbeat.min(Duration::from_secs(1)))
        .connection_timeout(Duration::from_secs(2))
        .subscription_capacity(config.subscription_capacity)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send((id, event));
            }
        });
    if let Some(jwt) = &credentials.jwt {
        let key = key.clone();
        options = options.jwt(jwt.clone(), move |nonce| {
            let key = key.clone();
            async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
        });
    }
    // Every server of a cluster: the client tries them in turn (a single
    // comma-joined string would be taken for one malformed address).
    let urls: Vec<String> = match &config.nats_url {
        Some(url) => url.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect(),
        None => credentials.nats_urls.clone(),
    };
    let client = options.connect(urls).await.map_err(|e| ConnectError::Nats(e.to_string()))?;
    let echo = Arc::new(Echo {
        subject: names.runtime_sync(&credentials.owner, &credentials.agent),
        next: AtomicU64::new(0),
        waiting: Mutex::default(),
    });
    let mut echoes = client.subscribe(echo.subject.clone()).await.map_err(|e| ConnectError::Nats(e.to_string()))?;
    let reader = tokio::spawn({
        let echo = echo.clone();
        async move {
            while let Some(message) = echoes.next().await {
                let token = std::str::from_utf8(&message.payload).ok().and_then(|t| t.parse::<u64>().ok());
                if let Some(waiting) = token.and_then(|t| echo.waiting.lock().expect("echo").remove(&t)) {
                    let _ = waiting.send(());
                }
            }
        }
    });
    let readers = Mutex::new(HashMap::from([(echo.subject.clone(), reader)]));
    Ok(Session { id, client, expires_at: credentials.expires_at, obtained: Instant::now(), readers, echo })
}

/// Renews the NATS credentials at two thirds of their life, for as long as
/// the client lives; a failed renewal is retried every second (every 10 s
/// when the token is refused). When the old credentials expire first, the
/// server disconnects and the client fails closed until a renewal succeeds.
async fn renew_forever(weak: Weak<Inner>) {
    loop {
        let wait = {
            let Some(inner) = weak.upgrade() else { return };
            let session = inner.current();
            let Some(expires_at) = session.expires_at else { return };
            let left = (expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
            let lived = session.obtained.elapsed();
            // Two thirds into the life it had when obtained.
            ((lived + left) * 2 / 3).saturating_sub(lived)
        };
        tokio::time::sleep(wait).await;
        let Some(inner) = weak.upgrade() else { return };
        match renew(&inner).await {
            Ok(()) => {}
            // Only a new token helps (`set_token`); meanwhile, once the
            // current credentials expire, the client fails closed.
            Err(error @ ConnectError::Unauthorized(_)) => {
                tracing::error!(%error, "the agent token no longer obtains NATS credentials; retrying in 10 s");
                drop(inner);
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "renewing NATS credentials failed; retrying in 1 s");
                drop(inner);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn renew(inner: &Arc<Inner>) -> Result<(), ConnectError> {
    let token = inner.token.lock().expect("token").clone();
    let credentials = obtain(&inner.http, &inner.config.base_url, &token, &inner.key).await?;
    if (credentials.owner.as_str(), credentials.agent.as_str(), credentials.prefix.as_str())
        != (inner.owner.as_str(), inner.agent.as_str(), inner.names.prefix())
    {
        return Err(ConnectError::Credentials("the renewed credentials are for another identity".into()));
    }
    let _changing = inner.changing.lock().await;
    let id = inner.next_session.fetch_add(1, Ordering::SeqCst);
    let session =
        Arc::new(open_session(&inner.config, &inner.key, &credentials, &inner.names, id, &inner.events).await?);
    let subjects: Vec<String> = inner.subjects.lock().expect("subjects").iter().cloned().collect();
    for subject in subjects {
        subscribe(inner, &session, subject).await.map_err(|e| ConnectError::Nats(e.to_string()))?;
    }
    // Only once nats-server has them may the old session's go (its drain
    // unsubscribes at once, on another connection, in no set order).
    session.confirm().await.map_err(|e| ConnectError::Nats(e.to_string()))?;
    // The new session hears everything from here on; the old one (if it was
    // still up) heard everything until now.
    let old = std::mem::replace(&mut *inner.session.lock().expect("session"), session);
    if !inner.fresh.load(Ordering::SeqCst) {
        inner.back_in_sync();
    }
    // Drain the old session: its subscriptions end only after delivering
    // what they had buffered (a notice published just before the new
    // subscriptions existed is there and nowhere else), so its readers are
    // awaited, bounded, rather than aborted with the session.
    tokio::spawn(async move {
        let readers: Vec<_> = std::mem::take(&mut *old.readers.lock().expect("readers")).into_values().collect();
        let _ = old.client.drain().await;
        for reader in readers {
            let abort = reader.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), reader).await.is_err() {
                abort.abort();
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::refuses_subscription;
    use async_nats::ServerError;

    #[test]
    fn a_refused_subscription_is_told_from_other_server_errors() {
        // nats-server's wording (2.9.10's maximum checked end to end, tests/e2e/agents.rs).
        assert!(refuses_subscription(&ServerError::Other("Maximum Subscriptions Exceeded".into())));
        assert!(refuses_subscription(&ServerError::Other(
            "Permissions Violation for Subscription to \"x.notices.alice.connection.c1\"".into()
        )));
        assert!(!refuses_subscription(&ServerError::Other(
            "Permissions Violation for Publish to \"x.notices.alice.connection.c1\"".into()
        )));
        assert!(!refuses_subscription(&ServerError::AuthorizationViolation));
        assert!(!refuses_subscription(&ServerError::SlowConsumer(3)));
    }
}
