//! A command that revokes or rotates a connection publishes the notice
//! itself, right after its commit and before it answers, with the event's
//! id and cursor: runtimes hear it whatever the relay has queued (here no
//! relay runs at all).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::TestApp;

#[tokio::test]
async fn revoke_and_rotate_publish_their_notice_before_answering() {
    let mut app = TestApp::new().await;
    let prefix = format!("u{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
    let names = connections_fanout::Names::new(&prefix).expect("valid prefix");
    let url = std::env::var("CONNECTIONS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let access = connections_fanout::nats::NatsAccess::insecure(url);
    let client = connections_fanout::nats::connect(&access, &names, "urgent test").await.expect("NATS");
    let stored = app.state.signals.stored_notices.clone();
    app.state.lifecycle.urgent_notices =
        Some(connections_fanout::UrgentNotices::new(client.clone(), names.clone(), stored.clone()));
    app.router = connections_api::router(app.state.clone());
    // The notices stream the relay would have made: it acknowledges each
    // copy, and the acknowledged ones are recorded for the relay to skip.
    let context = async_nats::jetstream::new(client.clone());
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: names.notices_stream(),
            subjects: vec![names.notices_wildcard()],
            ..Default::default()
        })
        .await
        .expect("notices stream");
    let mut notices = client.subscribe(names.notices_wildcard()).await.expect("subscribe");
    client.flush().await.expect("flush");

    let id = app.create("alice", "github", Some("agent-1")).await;
    let assigned =
        app.send(Method::POST, format!("/v1/connections/{id}/agents"), Some("alice"), Some(json!({"agent_id": "a2"})));
    assert_eq!(assigned.await.status, StatusCode::OK);
    let rotated = app
        .send(
            Method::PUT,
            format!("/v1/connections/{id}/credential"),
            Some("alice"),
            Some(json!({"credential": {"kind": "api_key", "key": "k2"}})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let revoked = app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);

    // Exactly the two urgent notices, in commit order (creations and
    // assignments are the relay's to announce, and it is not running).
    let mut next = async || -> Value {
        let message =
            tokio::time::timeout(Duration::from_secs(5), notices.next()).await.expect("in time").expect("open");
        serde_json::from_slice(&message.payload).expect("notice JSON")
    };
    let (first, second) = (next().await, next().await);
    assert_eq!((first["kind"].as_str(), first["credential_version"].as_u64()), (Some("rotated"), Some(2)));
    assert_eq!(second["kind"], "revoked");
    for notice in [&first, &second] {
        assert_eq!(notice["connection_id"], json!(id));
        assert_eq!((notice["owner"].as_str(), notice["service"].as_str()), (Some("alice"), Some("github")));
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), notices.next()).await;
    assert!(extra.is_err(), "only urgent notices come from commands: {extra:?}");

    // Each names its event and that event's cursor in the log.
    let rows = app
        .db
        .client()
        .await
        .query(
            "SELECT event_id, transaction_id::text, position FROM events \
             WHERE event_type IN ('credential_rotated', 'connection_revoked') ORDER BY position",
            &[],
        )
        .await
        .expect("events");
    assert_eq!(rows.len(), 2);
    for (row, notice) in rows.iter().zip([&first, &second]) {
        let (event_id, transaction_id, position): (uuid::Uuid, String, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(notice["event_id"], json!(event_id));
        assert!(stored.take(&format!("notice-{event_id}")), "the stream's acknowledgement is recorded");
        assert_eq!(
            notice["cursor"],
            json!({"transaction_id": transaction_id.parse::<u64>().expect("id"), "position": position})
        );
    }
    context.delete_stream(names.notices_stream()).await.expect("remove the stream");
}
