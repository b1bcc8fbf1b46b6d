//! Resolving an OAuth connection whose access token expires within a minute
//! refreshes it first, once for many resolves, against a real authorization
//! server; a token known to have expired is never handed out.

use axum::http::{Method, StatusCode};
use connections_testkit::OauthProvider;
use serde_json::{json, Value};

use crate::connect::{app_with, authorize, callback, start};
use crate::TestApp;

/// Alice's google-calendar connection through the provider, bound to agent-0,
/// with access tokens that live `lifetime` seconds; later tokens live an hour.
async fn connected(provider: &OauthProvider, lifetime: u64) -> (TestApp, String) {
    provider.command(&format!("expires {lifetime}"));
    let app = app_with(provider, None).await;
    let (url, cookie) = start(&app, json!({"agent_id": "agent-0"})).await;
    let (status, page, _) = callback(&app, &authorize(&url).await, Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    provider.command("expires 3600");
    let id: String = app
        .db
        .client()
        .await
        .query_one("SELECT data->>'connection_id' FROM events WHERE event_type = 'connection_created'", &[])
        .await
        .expect("created")
        .get(0);
    (app, id)
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.db.client().await.query_one(sql, &[]).await.expect("count").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_refreshed_once_for_twenty_concurrent_resolves() {
    let provider = OauthProvider::start();
    let (app, id) = connected(&provider, 30).await;
    let answers = futures::future::join_all((0..20).map(|_| app.resolve("agent-0", "alice", "google-calendar"))).await;
    let mut tokens = std::collections::BTreeSet::new();
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["credential_version"], 2, "never the expiring version");
        tokens.insert(answer.body["credential"]["access_token"].as_str().expect("token").to_owned());
    }
    assert_eq!(tokens.len(), 1, "one refresh, one new token");
    assert_eq!(provider.refreshes(), 1, "single-flight: the provider saw one refresh");
    assert_eq!(count(&app, "SELECT count(*) FROM events WHERE event_type = 'credential_refreshed'").await, 1);
    let refreshed: Value = app
        .db
        .client()
        .await
        .query_one("SELECT data FROM events WHERE event_type = 'credential_refreshed'", &[])
        .await
        .expect("event")
        .get(0);
    assert_eq!(refreshed, json!({"connection_id": id, "credential_version": 2}), "no token in the event");
    // An hour-long token is not refreshed again.
    assert_eq!(app.resolve("agent-0", "alice", "google-calendar").await.body["credential_version"], 2);
    assert_eq!(provider.refreshes(), 1);
    let view = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(view.body["credential_version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_fails_gets_the_current_token_handed_out_only_while_it_is_valid() {
    let provider = OauthProvider::start();
    let (app, _) = connected(&provider, 30).await;
    provider.command("status 500");
    let answer = app.resolve("agent-0", "alice", "google-calendar").await;
    assert_eq!(answer.status, StatusCode::OK, "still valid for half a minute: {}", answer.body);
    assert_eq!(answer.body["credential_version"], 1);

    let provider = OauthProvider::start();
    let (app, _) = connected(&provider, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let handed = count(&app, "SELECT count(*) FROM access_log").await;
    provider.command("status 500");
    let answer = app.resolve("agent-0", "alice", "google-calendar").await;
    answer.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "refresh-unavailable");
    assert!(answer.body.get("credential").is_none());
    assert_eq!(count(&app, "SELECT count(*) FROM access_log").await, handed, "nothing handed out");
    // Once the provider is back, the next resolve refreshes.
    let answer = app.resolve("agent-0", "alice", "google-calendar").await;
    assert_eq!((answer.status, answer.body["credential_version"].clone()), (StatusCode::OK, json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_marks_the_connection_and_an_expired_token_is_not_handed_out() {
    let provider = OauthProvider::start();
    let (app, id) = connected(&provider, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    provider.command("error invalid_grant");
    let answer = app.resolve("agent-0", "alice", "google-calendar").await;
    answer.assert_problem(StatusCode::CONFLICT, "credential-expired");
    assert!(answer.body.get("credential").is_none());
    let view = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(view.body["needs_attention"], true, "the owner sees it needs a reconnect");
    let rejected: Value = app
        .db
        .client()
        .await
        .query_one("SELECT data FROM events WHERE event_type = 'credential_rejected'", &[])
        .await
        .expect("event")
        .get(0);
    assert_eq!(rejected["agent_id"], "agent-0");
    assert!(rejected["detail"].as_str().expect("detail").contains("invalid_grant"));
}
