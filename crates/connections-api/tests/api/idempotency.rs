//! `Idempotency-Key`: a retried command returns its first answer and appends nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::TestApp;

fn keyed(app: &TestApp, method: Method, path: &str, key: &str, body: Option<Value>) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", app.token("alice")))
        .header("idempotency-key", key);
    match body {
        Some(body) => builder.header("content-type", "application/json").body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("request")
}

#[tokio::test]
async fn a_retried_create_returns_the_first_answer_and_appends_nothing() {
    let app = TestApp::new().await;
    let body = json!({"service": "github", "name": "Work", "credential": {"kind": "api_key", "key": "k"}});
    let first = app.raw(keyed(&app, Method::POST, "/v1/connections", "key-1", Some(body.clone()))).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let after_first = app.fingerprint().await;
    let retry = app.raw(keyed(&app, Method::POST, "/v1/connections", "key-1", Some(body))).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body, "the retry must return the first answer, same connection id");
    assert_eq!(app.fingerprint().await, after_first, "the retry must append nothing");
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_refused() {
    let app = TestApp::new().await;
    let body = json!({"service": "github", "name": "Work", "credential": {"kind": "api_key", "key": "k"}});
    app.raw(keyed(&app, Method::POST, "/v1/connections", "key-1", Some(body))).await;
    let before = app.fingerprint().await;
    let other = json!({"service": "github", "name": "Other", "credential": {"kind": "api_key", "key": "k"}});
    let answer = app.raw(keyed(&app, Method::POST, "/v1/connections", "key-1", Some(other))).await;
    answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    assert_eq!(app.fingerprint().await, before);
}

#[tokio::test]
async fn a_refusal_is_also_the_first_answer() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", None).await;
    app.send(Method::DELETE, &format!("/v1/connections/{id}"), Some("alice"), None).await;
    let path = format!("/v1/connections/{id}/agents");
    let first = app.raw(keyed(&app, Method::POST, &path, "k-assign", Some(json!({"agent_id": "a"})))).await;
    first.assert_problem(StatusCode::CONFLICT, "connection-revoked");
    let retry = app.raw(keyed(&app, Method::POST, &path, "k-assign", Some(json!({"agent_id": "a"})))).await;
    assert_eq!((retry.status, retry.body), (first.status, first.body));
}

#[tokio::test]
async fn concurrent_retries_with_one_key_create_one_connection() {
    let app = TestApp::new().await;
    let body = json!({"service": "github", "name": "Work", "credential": {"kind": "api_key", "key": "k"}});
    let mut answers = Vec::new();
    let futures: Vec<_> =
        (0..8).map(|_| app.raw(keyed(&app, Method::POST, "/v1/connections", "same", Some(body.clone())))).collect();
    for answer in futures::future::join_all(futures).await {
        answers.push(answer);
    }
    let ids: std::collections::HashSet<_> = answers.iter().map(|a| a.body["connection_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "every retry answers the same connection");
    let created: i64 = app
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM events WHERE event_type = 'connection_created'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(created, 1);
}

/// The stored fingerprint is keyed: someone with a database dump who knows
/// (or guesses) the credential and the request's shape cannot confirm it.
#[tokio::test]
async fn a_known_credential_cannot_be_confirmed_from_the_idempotency_table() {
    use sha2::{Digest, Sha256};
    let app = TestApp::new().await;
    let body = json!({"service": "github", "name": "Work", "credential": {"kind": "basic", "username": "u", "password": "hunter2"}});
    let answer = app.raw(keyed(&app, Method::POST, "/v1/connections", "key-1", Some(body.clone()))).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let client = app.db.client().await;
    let row =
        client.query_one("SELECT request_hash, response_body::text FROM idempotency_keys", &[]).await.expect("row");
    let stored: Vec<u8> = row.get(0);
    let answer_text: String = row.get(1);
    assert!(!answer_text.contains("hunter2"), "the stored answer holds the credential");
    // Every unkeyed digest the attacker could compute from the guess.
    let raw = body.to_string();
    let mut prefixed = Sha256::new();
    for part in [b"POST".as_slice(), b"/v1/connections", raw.as_bytes()] {
        prefixed.update((part.len() as u64).to_be_bytes());
        prefixed.update(part);
    }
    let candidates: Vec<Vec<u8>> = vec![
        prefixed.finalize().to_vec(),
        Sha256::digest(raw.as_bytes()).to_vec(),
        Sha256::digest(format!("POST/v1/connections{raw}").as_bytes()).to_vec(),
        Sha256::digest(b"hunter2").to_vec(),
    ];
    assert_eq!(stored.len(), 32);
    for candidate in candidates {
        assert_ne!(stored, candidate, "the stored fingerprint is an unkeyed digest");
    }
    // It is the keyed fingerprint: only the master key reproduces it.
    let key = app.master_key.fingerprint_key(connections_api::routes::IDEMPOTENCY_PURPOSE);
    assert_eq!(stored, key.fingerprint(&[b"POST", b"/v1/connections", raw.as_bytes()]).to_vec());
    let other = connections_sealing::MasterKey::from_base64(
        "test",
        &connections_sealing::MasterKey::generate_base64().expect("key"),
    )
    .expect("key");
    let guessed = other.fingerprint_key(connections_api::routes::IDEMPOTENCY_PURPOSE);
    assert_ne!(stored, guessed.fingerprint(&[b"POST", b"/v1/connections", raw.as_bytes()]).to_vec());
}

#[tokio::test]
async fn an_expired_record_is_neither_replayed_nor_kept() {
    let app = TestApp::new().await;
    let body = json!({"service": "github", "name": "Work", "credential": {"kind": "api_key", "key": "k"}});
    let first = app.raw(keyed(&app, Method::POST, "/v1/connections", "key-1", Some(body.clone()))).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let client = app.db.client().await;
    client
        .execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'", &[])
        .await
        .expect("age the record");
    // Past its lifetime the key is new again: the request runs (a second
    // connection), and a different request with the key is not refused.
    let again = app.raw(keyed(&app, Method::POST, "/v1/connections", "key-1", Some(body))).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_ne!(again.body["connection_id"], first.body["connection_id"]);
    client
        .execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'", &[])
        .await
        .expect("age the record");
    let pooled = app.db.database.pool().get().await.expect("pooled connection");
    let expired = connections_store::IdempotencyClaim::expire(&pooled, std::time::Duration::from_secs(86_400))
        .await
        .expect("expire");
    assert_eq!(expired, 1);
    let left: i64 = client.query_one("SELECT count(*) FROM idempotency_keys", &[]).await.expect("count").get(0);
    assert_eq!(left, 0);
}
