//! Integration tests of the HTTP API, in process, against a fresh database
//! on the real Postgres server per test.

mod auth;
mod bad_input;
mod commands;
mod concurrency;
mod idempotency;
mod isolation;
mod openapi;
mod secrets;

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
    pub(crate) db: TestDatabase,
    pub(crate) router: Router,
    pub(crate) master_key: Arc<MasterKey>,
    secret: Vec<u8>,
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

impl TestApp {
    pub(crate) async fn new() -> Self {
        let db = TestDatabase::new().await;
        let secret = b"test-secret-that-is-at-least-32-bytes-long".to_vec();
        let master_key = Arc::new(
            MasterKey::from_base64("test", &MasterKey::generate_base64().expect("random key")).expect("valid key"),
        );
        let state = AppState {
            database: db.database.clone(),
            master_key: master_key.clone(),
            authenticator: Arc::new(Authenticator::hs256(&secret).expect("valid secret")),
            signals: connections_fanout::Signals::new(),
        };
        Self { router: router(state), db, master_key, secret }
    }

    pub(crate) fn token(&self, user: &str) -> String {
        let user = OwnerId::parse(user).expect("valid user id");
        mint_user_token(&self.secret, &user, chrono::Utc::now().timestamp() + 600).expect("mint token")
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
