//! Integration tests of the HTTP API, in process, against a fresh database
//! on the real Postgres server per test.

mod auth;
mod bad_input;
mod commands;
mod concurrency;
mod connect;
mod groups;
mod idempotency;
mod isolation;
mod openapi;
mod operability;
mod problems;
mod providers;
mod read_api;
mod refresh;
mod rekey;
mod replace;
mod resolve;
mod review;
mod runtime_nats;
mod secrets;
mod session;
mod unavailable;
mod upkeep;
mod urgent;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use connections_api::auth::{mint_user_token, Authenticator};
use connections_api::{router, AppState};
use connections_domain::OwnerId;
use connections_sealing::MasterKey;
use connections_testkit::TestDatabase;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A router on a fresh database, with tokens for any user.
pub(crate) struct TestApp {
    /// Relay and projector, when started with [`TestApp::with_fanout`].
    fanout: Option<Fanout>,
    pub(crate) db: TestDatabase,
    pub(crate) router: Router,
    /// What the router serves with (for driving background work directly).
    pub(crate) state: AppState,
    pub(crate) master_key: Arc<MasterKey>,
    secret: Vec<u8>,
}

/// The relay and projector of a [`TestApp::with_fanout`], stopped and
/// their JetStream stream deleted on drop.
struct Fanout {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    names: connections_fanout::Names,
    nats_url: String,
    signals: connections_fanout::Signals,
}

impl Drop for Fanout {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
        let url = self.nats_url.clone();
        let streams = [self.names.events_stream(), self.names.notices_stream()];
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let context = async_nats::jetstream::new(async_nats::connect(url).await.ok()?);
                for stream in streams {
                    let _ = context.delete_stream(stream).await;
                }
                Some(())
            })
        })
        .join();
    }
}

/// An answer: status, headers, JSON body (Null when empty or not JSON).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    /// Asserts a problem+json answer with this status and type slug.
    #[track_caller]
    pub(crate) fn assert_problem(&self, status: StatusCode, slug: &str) {
        assert_eq!(self.status, status, "unexpected status; body {}", self.body);
        assert_eq!(
            self.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "errors must be problem+json"
        );
        assert_eq!(self.body["type"], format!("urn:connections:problem:{slug}"), "body {}", self.body);
    }
}

/// Server-side warnings and errors (the cause behind a 500 or 503) go to
/// the test's captured output, so a failing test shows them.
fn log_to_test_output() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    });
}

/// The shared test NATS server carries no authentication: these tests are
/// about the HTTP API (`tests/e2e/nats_security.rs` tests NATS permissions).
fn open_nats(url: &str) -> connections_fanout::nats::NatsAccess {
    connections_fanout::nats::NatsAccess::insecure(url)
}

/// Runtime NATS credentials issued with a freshly generated account (no
/// nats-server needed to issue them) and a 5-minute lifetime.
pub(crate) fn runtime_nats() -> Arc<connections_api::runtime_nats::RuntimeNats> {
    static ISSUER: std::sync::OnceLock<Arc<connections_natsauth::Issuer>> = std::sync::OnceLock::new();
    let issuer = ISSUER
        .get_or_init(|| {
            let setup = connections_natsauth::Setup::generate(chrono::Utc::now().timestamp()).expect("generate");
            Arc::new(
                connections_natsauth::Issuer::new(&setup.issuer.account, &setup.issuer.signing_key_seed)
                    .expect("issuer"),
            )
        })
        .clone();
    Arc::new(connections_api::runtime_nats::RuntimeNats {
        names: connections_fanout::Names::new("connections").expect("prefix"),
        urls: vec!["nats://127.0.0.1:4222".into()],
        issuer: Some(issuer),
        ttl: std::time::Duration::from_secs(300),
    })
}

impl TestApp {
    /// The type of every event in the log, in log order.
    pub(crate) async fn event_types(&self) -> Vec<String> {
        let rows =
            self.db.client().await.query("SELECT event_type FROM events ORDER BY position", &[]).await.expect("events");
        rows.iter().map(|row| row.get(0)).collect()
    }

    pub(crate) async fn new() -> Self {
        log_to_test_output();
        let db = TestDatabase::new().await;
        let secret = b"test-secret-that-is-at-least-32-bytes-long".to_vec();
        let master_key = Arc::new(
            MasterKey::from_base64("test", &MasterKey::generate_base64().expect("random key")).expect("valid key"),
        );
        let state = AppState {
            database: db.database.clone(),
            reads: db.database.clone(),
            master_key: master_key.clone(),
            authenticator: Arc::new(Authenticator::hs256(&secret).expect("valid secret")),
            signals: connections_fanout::Signals::new(),
            runtime_nats: runtime_nats(),
            settings: Default::default(),
            lifecycle: Default::default(),
        };
        Self { fanout: None, router: router(state.clone()), state, db, master_key, secret }
    }

    /// An app whose relay and projector run against the real NATS server
    /// under a prefix of its own, so the read API has read models.
    pub(crate) async fn with_fanout() -> Self {
        let mut app = Self::new().await;
        let prefix = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
        let names = connections_fanout::Names::new(&prefix).expect("valid prefix");
        let nats_url = std::env::var("CONNECTIONS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let signals = connections_fanout::Signals::new();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let relay = tokio::spawn(connections_fanout::relay::run(
            app.db.database.clone(),
            connections_fanout::relay::RelayConfig::new(names.clone(), app.db.url.clone(), open_nats(&nats_url)),
            signals.clone(),
            stopping.clone(),
        ));
        let projector = tokio::spawn(connections_projections::projector::run(
            app.db.database.clone(),
            connections_projections::projector::ProjectorConfig::new(
                names.clone(),
                app.db.url.clone(),
                open_nats(&nats_url),
            ),
            signals.clone(),
            stopping,
        ));
        let state_signals = signals.clone();
        let state = AppState {
            database: app.db.database.clone(),
            reads: app.db.database.clone(),
            master_key: app.master_key.clone(),
            authenticator: Arc::new(Authenticator::hs256(&app.secret).expect("valid secret")),
            signals,
            runtime_nats: runtime_nats(),
            settings: Default::default(),
            lifecycle: Default::default(),
        };
        app.router = router(state.clone());
        app.state = state;
        app.fanout = Some(Fanout { stop, tasks: vec![relay, projector], names, nats_url, signals: state_signals });
        app
    }

    /// Kills the projector task wherever it is (mid-batch included) and
    /// starts a new one, as a crash and restart would.
    pub(crate) async fn crash_and_restart_projector(&mut self) {
        let fanout = self.fanout.as_mut().expect("started with_fanout");
        let crashed = fanout.tasks.pop().expect("projector task");
        crashed.abort();
        let _ = crashed.await;
        fanout.tasks.push(tokio::spawn(connections_projections::projector::run(
            self.db.database.clone(),
            connections_projections::projector::ProjectorConfig::new(
                fanout.names.clone(),
                self.db.url.clone(),
                open_nats(&fanout.nats_url),
            ),
            fanout.signals.clone(),
            fanout.stop.subscribe(),
        )));
    }

    /// Deletes the projector's durable consumer behind its back: its
    /// waiting pull request is gone, as when a NATS node takes a consumer's
    /// leader down with it.
    pub(crate) async fn delete_projector_consumer(&self) {
        let fanout = self.fanout.as_ref().expect("started with_fanout");
        let context = async_nats::jetstream::new(async_nats::connect(&fanout.nats_url).await.expect("NATS"));
        let stream = context.get_stream(fanout.names.events_stream()).await.expect("events stream");
        // Between two of its sessions (a restart under load) the projector
        // has no consumer for a moment: delete the next one it makes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match stream.delete_consumer(&fanout.names.projector_consumer("dashboard")).await {
                Ok(_) => return,
                Err(error) => assert!(std::time::Instant::now() < deadline, "delete the consumer: {error:?}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Serves the same database with other settings (e.g. providers).
    pub(crate) fn use_settings(&mut self, settings: connections_api::Settings) {
        self.state = AppState {
            database: self.db.database.clone(),
            reads: self.db.database.clone(),
            master_key: self.master_key.clone(),
            authenticator: Arc::new(Authenticator::hs256(&self.secret).expect("valid secret")),
            signals: connections_fanout::Signals::new(),
            runtime_nats: runtime_nats(),
            settings: Arc::new(settings),
            lifecycle: Default::default(),
        };
        self.router = router(self.state.clone());
    }

    /// Serves the same database with another master keyring (default settings).
    pub(crate) fn use_master_key(&mut self, master_key: Arc<MasterKey>) {
        self.master_key = master_key;
        self.use_settings(Default::default());
    }

    pub(crate) fn token(&self, user: &str) -> String {
        let user = OwnerId::parse(user).expect("valid user id");
        mint_user_token(&self.secret, &user, chrono::Utc::now().timestamp() + 600).expect("mint token")
    }

    /// An agent token for `agent` acting for `owner`.
    pub(crate) fn agent_token(&self, agent: &str, owner: &str) -> String {
        connections_api::auth::mint_agent_token(
            &self.secret,
            &connections_domain::AgentId::parse(agent).expect("valid agent id"),
            &OwnerId::parse(owner).expect("valid owner id"),
            chrono::Utc::now().timestamp() + 600,
        )
        .expect("mint agent token")
    }

    /// `POST /v1/resolve` {service} as `agent` acting for `owner`.
    pub(crate) async fn resolve(&self, agent: &str, owner: &str, service: &str) -> Answer {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/resolve")
            .header("authorization", format!("Bearer {}", self.agent_token(agent, owner)))
            .header("content-type", "application/json")
            .body(Body::from(json!({ "service": service }).to_string()))
            .expect("request");
        self.raw(request).await
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Sends a request as `user` (None: no Authorization header).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: impl Into<String>,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path.into());
        if let Some(user) = user {
            request = request.header("authorization", format!("Bearer {}", self.token(user)));
        }
        let request = match body {
            Some(body) => {
                request.header("content-type", "application/json").body(Body::from(body.to_string())).expect("request")
            }
            None => request.body(Body::empty()).expect("request"),
        };
        self.raw(request).await
    }

    /// Sends a prepared request.
    pub(crate) async fn raw(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.expect("router answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, headers, body }
    }

    /// Creates a connection for `user` and returns its id.
    pub(crate) async fn create(&self, user: &str, service: &str, agent: Option<&str>) -> String {
        let mut body = json!({"service": service, "name": "Work", "credential": {"kind": "api_key", "key": "k-123"}});
        if let Some(agent) = agent {
            body["agent_id"] = json!(agent);
        }
        let answer = self.send(Method::POST, "/v1/connections", Some(user), Some(body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "create failed: {}", answer.body);
        answer.body["connection_id"].as_str().expect("connection_id").to_owned()
    }

    /// How many events the log holds.
    pub(crate) async fn event_count(&self) -> i64 {
        self.db.client().await.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0)
    }

    /// A fingerprint of every table the API writes, to prove nothing changed.
    pub(crate) async fn fingerprint(&self) -> Vec<i64> {
        let client = self.db.client().await;
        let mut counts = Vec::new();
        for table in ["events", "connection_locator", "data_keys", "sealed_credentials", "idempotency_keys"] {
            counts.push(client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0));
        }
        counts
    }
}
