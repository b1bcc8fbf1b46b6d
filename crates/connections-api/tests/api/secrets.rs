//! Sealing at rest and crypto-shredding on revoke.

use axum::http::{Method, StatusCode};
use connections_domain::{ConnectionId, OwnerId};
use connections_sealing::{open, Credential};
use connections_store::StoredCredential;
use serde_json::json;

use crate::TestApp;

#[tokio::test]
async fn the_stored_credential_opens_only_until_revoke_destroys_its_data_key() {
    let app = TestApp::new().await;
    let canary = format!("canary-{}", uuid::Uuid::now_v7());
    let body = json!({"service": "github", "name": "Work", "credential": {"kind": "api_key", "key": canary}});
    let created = app.send(Method::POST, "/v1/connections", Some("alice"), Some(body)).await;
    let id = ConnectionId::parse(created.body["connection_id"].as_str().expect("id")).expect("uuid");
    let alice = OwnerId::parse("alice").expect("valid");
    let client = app.db.database.pool().get().await.expect("connection");

    let wrapped = StoredCredential::data_key(&client, id).await.expect("load").expect("a data key exists");
    let sealed = StoredCredential::sealed(&client, id, 1).await.expect("load").expect("version 1 is stored");
    assert!(!sealed.0.windows(canary.len()).any(|w| w == canary.as_bytes()), "stored in plaintext");
    let data_key = app.master_key.unwrap(&wrapped, id).expect("unwrap");
    let opened = open(&data_key, &sealed, id, &alice, 1).expect("open");
    assert_eq!(opened, Credential::parse(&json!({"kind": "api_key", "key": canary})).expect("valid"));

    let revoked = app.send(Method::DELETE, &format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(StoredCredential::data_key(&client, id).await.expect("load"), None, "revoke must destroy the data key");
    // The ciphertext may remain, but nothing can open it any more: the key
    // that sealed it is gone, and the master key only ever wrapped that key.
    assert!(StoredCredential::sealed(&client, id, 1).await.expect("load").is_some());

    // The log still says who did what and when.
    let types = app.event_types().await;
    assert_eq!(types, vec!["connection_created", "connection_revoked"]);
}

#[tokio::test]
async fn no_event_carries_secret_material() {
    let app = TestApp::new().await;
    let canary = format!("canary-{}", uuid::Uuid::now_v7());
    let body = json!({"service": "github", "name": "Work", "agent_id": "a1",
        "credential": {"kind": "basic", "username": canary, "password": canary}});
    let created = app.send(Method::POST, "/v1/connections", Some("alice"), Some(body)).await;
    let id = created.body["connection_id"].as_str().expect("id").to_owned();
    app.send(
        Method::PUT,
        &format!("/v1/connections/{id}/credential"),
        Some("alice"),
        Some(json!({"credential": {"kind": "oauth2", "access_token": canary, "refresh_token": canary}})),
    )
    .await;
    let dump: String = app
        .db
        .client()
        .await
        .query_one("SELECT string_agg(data::text || metadata::text, '') FROM events", &[])
        .await
        .expect("events")
        .get(0);
    assert!(!dump.contains(&canary), "an event carries the secret");
}
