//! Background token upkeep against a real authorization server
//! (oauth2-mock-server on loopback): the refresher refreshes before expiry,
//! backs off on transient failures (429 `Retry-After` included), marks a
//! refused refresh token; a revoke revokes the tokens upstream after its
//! commit, retried until it succeeds or gives up; a revoke racing a refresh
//! wins; an owner reconnects a connection in place. Rounds are driven
//! directly (`upkeep::round`), so nothing here waits on a timer it does not
//! control; one test runs the leader loop itself.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use connections_api::providers::Providers;
use connections_api::upkeep;
use connections_testkit::OauthProvider;
use serde_json::{json, Value};

use crate::connect::{authorize, callback, start};
use crate::TestApp;

const REDIRECT: &str = "http://127.0.0.1:9/v1/oauth/callback";

/// An app whose upkeep retries after `retry_base` and gives up revoking
/// upstream after `revoke_attempts`.
async fn app_with(provider: &OauthProvider, retry_base: Duration, revoke_attempts: u32) -> TestApp {
    let mut app = TestApp::new().await;
    let text = provider.providers_json(REDIRECT, &["google-calendar"], &["calendar.read"], "SECRET");
    let providers = Providers::parse(&text, |_| Some("client-secret-canary".to_owned())).expect("providers");
    let upkeep = connections_api::UpkeepSettings { retry_base, revoke_attempts, ..Default::default() };
    app.use_settings(connections_api::Settings { providers, upkeep, ..Default::default() });
    app
}

/// Alice connects google-calendar for agent-0 with tokens living
/// `lifetime` seconds (later ones live an hour); returns the connection id.
async fn connect(app: &TestApp, provider: &OauthProvider, lifetime: u64) -> String {
    provider.command(&format!("expires {lifetime}"));
    let (url, cookie) = start(app, json!({"agent_id": "agent-0"})).await;
    let (status, page, _) = callback(app, &authorize(&url).await, Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    provider.command("expires 3600");
    let client = app.db.client().await;
    let row = client
        .query_one("SELECT data->>'connection_id' FROM events WHERE event_type = 'connection_created' ORDER BY position DESC LIMIT 1", &[])
        .await
        .expect("created");
    row.get(0)
}

async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(app: &TestApp, sql: &str) -> T {
    app.db.client().await.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn events_of(app: &TestApp, event_type: &str) -> Vec<Value> {
    let rows = app
        .db
        .client()
        .await
        .query("SELECT data FROM events WHERE event_type = $1 ORDER BY position", &[&event_type])
        .await
        .expect("events");
    rows.iter().map(|row| row.get(0)).collect()
}

/// The schedule's (failures, seconds until the next attempt) of the only row.
async fn backoff(app: &TestApp) -> (i32, f64) {
    let sql = "SELECT failures, extract(epoch FROM not_before - now())::float8 FROM refresh_schedule";
    let row = app.db.client().await.query_one(sql, &[]).await.expect("scheduled");
    (row.get(0), row.get(1))
}

/// Runs rounds until one has worked, for at most `within`.
async fn round_until_worked(app: &TestApp, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if upkeep::round(&app.state).await.expect("round") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing came due within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresher_refreshes_before_expiry_and_schedules_the_next_version() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_secs(1), 10).await;
    let id = connect(&app, &provider, 4).await;
    // Due at half of a 4-second lifetime (shorter than the 5-minute margin).
    let due: f64 = scalar(&app, "SELECT extract(epoch FROM due_at - now())::float8 FROM refresh_schedule").await;
    assert!((0.5..=2.5).contains(&due), "due in {due} s");
    assert!(!upkeep::round(&app.state).await.expect("round"), "nothing is due yet");
    assert_eq!(provider.refreshes(), 0);

    round_until_worked(&app, Duration::from_secs(5)).await;
    assert_eq!(provider.refreshes(), 1);
    assert_eq!(
        events_of(&app, "credential_refreshed").await,
        vec![json!({"connection_id": id, "credential_version": 2})]
    );
    // The hour-long version is due 5 minutes before it expires.
    let (version, due): (i32, f64) = {
        let row = app
            .db
            .client()
            .await
            .query_one(
                "SELECT credential_version, extract(epoch FROM due_at - now())::float8 FROM refresh_schedule",
                &[],
            )
            .await
            .expect("scheduled");
        (row.get(0), row.get(1))
    };
    assert_eq!(version, 2);
    assert!((3200.0..=3300.0).contains(&due), "due in {due} s");
    let answer = app.resolve("agent-0", "alice", "google-calendar").await;
    assert_eq!(answer.body["credential_version"], 2, "{}", answer.body);
    assert_eq!(provider.refreshes(), 1, "the resolve did not need a refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_expiry_is_refreshed_daily_and_an_api_key_never() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_secs(1), 10).await;
    let oauth = json!({"service": "google-calendar", "name": "pasted",
        "credential": {"kind": "oauth2", "access_token": "at-canary", "refresh_token": "rt-canary"}});
    let created = app.send(Method::POST, "/v1/connections", Some("alice"), Some(oauth)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    app.create("alice", "google-calendar", None).await;
    let rows: i64 = scalar(&app, "SELECT count(*) FROM refresh_schedule").await;
    assert_eq!(rows, 1, "only the credential with a refresh token is scheduled");
    let due: f64 = scalar(&app, "SELECT extract(epoch FROM due_at - now())::float8 FROM refresh_schedule").await;
    assert!((86_000.0..=86_400.0).contains(&due), "due in {due} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_back_off_honour_retry_after_and_change_nothing() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_millis(200), 10).await;
    connect(&app, &provider, 2).await;
    let before: i64 = scalar(&app, "SELECT count(*) FROM events").await;

    provider.command("status 500");
    round_until_worked(&app, Duration::from_secs(4)).await;
    let (failures, wait) = backoff(&app).await;
    assert_eq!(failures, 1);
    assert!(wait <= 0.2, "the first pause is the base: {wait}");

    provider.command("throttle 3");
    round_until_worked(&app, Duration::from_secs(2)).await;
    let (failures, wait) = backoff(&app).await;
    assert_eq!(failures, 2);
    assert!((2.5..=3.0).contains(&wait), "Retry-After: 3 outweighs a 400 ms backoff: {wait}");
    let refreshes = provider.refreshes();
    assert!(!upkeep::round(&app.state).await.expect("round"), "nothing before Retry-After");
    assert_eq!(provider.refreshes(), refreshes);
    assert_eq!(scalar::<i64>(&app, "SELECT count(*) FROM events").await, before, "failures change nothing");

    round_until_worked(&app, Duration::from_secs(5)).await;
    assert_eq!(events_of(&app, "credential_refreshed").await.len(), 1);
    assert_eq!(scalar::<i32>(&app, "SELECT failures FROM refresh_schedule").await, 0, "a success resets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_marks_the_connection_and_the_owner_reconnects_it_in_place() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_secs(1), 10).await;
    let id = connect(&app, &provider, 2).await;
    app.send(Method::PUT, "/v1/services/google-calendar/default", Some("alice"), Some(json!({"connection_id": id})))
        .await;
    provider.command("error invalid_grant");
    round_until_worked(&app, Duration::from_secs(4)).await;
    let rejected = events_of(&app, "credential_rejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["connection_id"], id);
    assert!(rejected[0].get("agent_id").is_none(), "found by the refresher, not an agent: {}", rejected[0]);
    let version: i32 = scalar(&app, "SELECT schema_version FROM events WHERE event_type = 'credential_rejected'").await;
    assert_eq!(version, 2);
    assert_eq!(scalar::<i64>(&app, "SELECT count(*) FROM refresh_schedule").await, 0, "off the schedule");
    let view = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(view.body["needs_attention"], true);

    // Someone else cannot reconnect it; nor can anyone reconnect a made-up one.
    for (user, target) in [("mallory", id.clone()), ("alice", uuid::Uuid::now_v7().to_string())] {
        let answer =
            app.send(Method::POST, format!("/v1/connections/{target}/reconnect"), Some(user), Some(json!({}))).await;
        answer.assert_problem(StatusCode::NOT_FOUND, "not-found");
    }
    let answer =
        app.send(Method::POST, format!("/v1/connections/{id}/reconnect"), Some("alice"), Some(json!({}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    crate::openapi::assert_documented(&crate::openapi::document(), "post", "/v1/connections/{id}/reconnect", &answer);
    let cookie = answer.headers["set-cookie"].to_str().expect("ascii").split(';').next().expect("pair").to_owned();
    let url = answer.body["authorize_url"].as_str().expect("url").to_owned();
    let (status, page, _) = callback(&app, &authorize(&url).await, Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains(&id), "the same connection: {page}");

    let view = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(
        (view.body["needs_attention"].clone(), view.body["credential_version"].clone()),
        (json!(false), json!(2))
    );
    assert_eq!(view.body["is_default"], true, "the default stays: {}", view.body);
    let answer = app.resolve("agent-0", "alice", "google-calendar").await;
    assert_eq!(
        (answer.body["connection_id"].clone(), answer.body["credential_version"].clone()),
        (json!(id), json!(2))
    );
    assert_eq!(scalar::<i32>(&app, "SELECT credential_version FROM refresh_schedule").await, 2, "scheduled again");
    assert_eq!(events_of(&app, "connection_created").await.len(), 1, "no new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_returns_at_once_and_the_tokens_are_then_revoked_at_the_provider() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_secs(1), 10).await;
    let id = connect(&app, &provider, 3600).await;
    let refresh_token = provider.last_issued_refresh_token();
    let revoked = app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(provider.revocations().is_empty(), "the revoke did not wait for the provider");
    // Queued in the revoking transaction, sealed: no token in the row.
    let sealed: Vec<u8> = scalar(&app, "SELECT sealed FROM upstream_revocations").await;
    assert!(!sealed.windows(refresh_token.len()).any(|w| w == refresh_token.as_bytes()));
    assert_eq!(scalar::<i64>(&app, "SELECT count(*) FROM data_keys").await, 0, "the connection's key is gone");

    round_until_worked(&app, Duration::from_secs(2)).await;
    let revocations = provider.revocations();
    assert_eq!(revocations.len(), 2, "refresh and access token: {revocations:?}");
    assert_eq!(revocations[0], refresh_token, "the refresh token first");
    assert_eq!(
        events_of(&app, "upstream_revoked").await,
        vec![json!({"connection_id": id, "outcome": "revoked", "attempts": 1})]
    );
    assert_eq!(scalar::<i64>(&app, "SELECT count(*) FROM upstream_revocations").await, 0, "the tokens are gone");
    let history = app.send(Method::GET, format!("/v1/connections/{id}/history"), Some("alice"), None).await;
    assert!(history.body.to_string().contains("upstream_revoked"), "{}", history.body);
    let actor: String =
        scalar(&app, "SELECT metadata->>'actor' FROM events WHERE event_type = 'upstream_revoked'").await;
    assert_eq!(actor, "service:upstream-revoker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_revocation_endpoint_is_retried_then_given_up() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_millis(100), 3).await;
    let id = connect(&app, &provider, 3600).await;
    provider.command("revoke-status 503 1");
    app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    round_until_worked(&app, Duration::from_secs(2)).await;
    assert_eq!(scalar::<i32>(&app, "SELECT attempts FROM upstream_revocations").await, 1, "postponed");
    assert!(events_of(&app, "upstream_revoked").await.is_empty());
    round_until_worked(&app, Duration::from_secs(2)).await;
    assert_eq!(
        events_of(&app, "upstream_revoked").await,
        vec![json!({"connection_id": id, "outcome": "revoked", "attempts": 2})]
    );

    let id = connect(&app, &provider, 3600).await;
    provider.command("revoke-status 500 100");
    app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    for _ in 0..3 {
        round_until_worked(&app, Duration::from_secs(2)).await;
    }
    let outcomes = events_of(&app, "upstream_revoked").await;
    assert_eq!(outcomes.last(), Some(&json!({"connection_id": id, "outcome": "gave_up", "attempts": 3})));
    assert_eq!(scalar::<i64>(&app, "SELECT count(*) FROM upstream_revocations").await, 0, "destroyed all the same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_racing_a_refresh_wins_and_the_refreshed_tokens_are_revoked_upstream() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_secs(1), 10).await;
    let id = connect(&app, &provider, 2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The provider holds the refresh answer while the owner revokes.
    provider.command("hold 1500");
    let state = app.state.clone();
    let refreshing = tokio::spawn(async move { upkeep::round(&state).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let revoked = app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(started.elapsed() < Duration::from_millis(900), "the revoke did not wait for the refresh");
    assert!(refreshing.await.expect("task").expect("round"));
    assert_eq!(provider.refreshes(), 1, "the refresh did reach the provider");
    let issued = provider.last_issued_refresh_token();

    assert!(events_of(&app, "credential_refreshed").await.is_empty(), "the refresh result was discarded");
    let answer = app.resolve("agent-0", "alice", "google-calendar").await;
    assert_ne!(answer.status, StatusCode::OK, "{}", answer.body);
    // Both token sets were queued (the revoked version's, and the discarded
    // refresh's); the same round may already have revoked them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while events_of(&app, "upstream_revoked").await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "not both revoked upstream");
        upkeep::round(&app.state).await.expect("round");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revocations = provider.revocations();
    assert!(revocations.contains(&issued), "the discarded refresh's token was revoked too: {revocations:?}");
    assert_eq!(revocations.len(), 4);
    assert_eq!(scalar::<i64>(&app, "SELECT count(*) FROM upstream_revocations").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upkeep_leads_and_another_takes_over_when_it_stops() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_secs(1), 10).await;
    let key = 7_243_777_i64;
    let (stop_first, stopping) = tokio::sync::watch::channel(false);
    let first = tokio::spawn(upkeep::run(app.state.clone(), app.db.url.clone(), key, stopping));
    // pg_locks spans the server's databases: only this test's counts.
    let holders = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7243777 AND granted \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    wait_for(&app, holders, 1).await;
    let (stop_second, stopping) = tokio::sync::watch::channel(false);
    let second = tokio::spawn(upkeep::run(app.state.clone(), app.db.url.clone(), key, stopping));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(scalar::<i64>(&app, holders).await, 1, "one leader");
    let leader_pid: i32 = scalar(&app, &holders.replace("count(*)", "pid")).await;

    // The leader does the work: a connection due soon gets refreshed.
    let id = connect(&app, &provider, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while events_of(&app, "credential_refreshed").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the leader did not refresh {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop_first.send(true).expect("stop");
    first.await.expect("stopped");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let pid: Option<i32> = app
            .db
            .client()
            .await
            .query_opt(&holders.replace("count(*)", "pid"), &[])
            .await
            .expect("locks")
            .map(|row| row.get(0));
        if pid.is_some_and(|pid| pid != leader_pid) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_second.send(true).expect("stop");
    second.await.expect("stopped");
}

async fn wait_for(app: &TestApp, sql: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while scalar::<i64>(app, sql).await != expected {
        assert!(tokio::time::Instant::now() < deadline, "{sql} never gave {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_bad_input_is_refused_naming_the_problem_and_stores_nothing() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Duration::from_secs(1), 10).await;
    let id = connect(&app, &provider, 3600).await;
    let api_key = app.create("alice", "github", None).await;
    let revoked = app.create("alice", "google-calendar", None).await;
    app.send(Method::DELETE, format!("/v1/connections/{revoked}"), Some("alice"), None).await;
    let flows = "SELECT count(*) FROM oauth_states";
    let before: i64 = scalar(&app, flows).await;
    let fingerprint = app.fingerprint().await;
    let path = format!("/v1/connections/{id}/reconnect");
    for (path, body, status, slug, field) in [
        ("/v1/connections/not-a-uuid/reconnect".to_owned(), json!({}), StatusCode::BAD_REQUEST, "invalid-input", "id"),
        (path.clone(), json!({"scopes": "calendar.read"}), StatusCode::BAD_REQUEST, "invalid-input", "scopes"),
        (path.clone(), json!({"scopes": ["has space"]}), StatusCode::BAD_REQUEST, "invalid-input", "scopes"),
        (path.clone(), json!({"name": "x"}), StatusCode::BAD_REQUEST, "invalid-input", "name"),
        (format!("/v1/connections/{revoked}/reconnect"), json!({}), StatusCode::CONFLICT, "connection-revoked", ""),
        (format!("/v1/connections/{api_key}/reconnect"), json!({}), StatusCode::CONFLICT, "not-reconnectable", ""),
    ] {
        let answer = app.send(Method::POST, path.clone(), Some("alice"), Some(body.clone())).await;
        answer.assert_problem(status, slug);
        if !field.is_empty() {
            assert_eq!(answer.body["field"], field, "{path} {body}: {}", answer.body);
        }
    }
    let unauthenticated = app.send(Method::POST, path, None, Some(json!({}))).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(scalar::<i64>(&app, flows).await, before, "no flow stored");
    assert_eq!(app.fingerprint().await, fingerprint, "nothing else stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_succeeds_even_when_the_tokens_cannot_be_opened_for_the_provider() {
    let provider = OauthProvider::start();
    let mut app = app_with(&provider, Duration::from_secs(1), 10).await;
    let id = connect(&app, &provider, 3600).await;
    // The keyring no longer holds the key the data key is wrapped under.
    let text = provider.providers_json(REDIRECT, &["google-calendar"], &["calendar.read"], "SECRET");
    let providers = Providers::parse(&text, |_| Some("client-secret-canary".to_owned())).expect("providers");
    let settings = connections_api::Settings { providers, ..Default::default() };
    app.master_key = std::sync::Arc::new(
        connections_sealing::MasterKey::from_base64(
            "other",
            &connections_sealing::MasterKey::generate_base64().expect("key"),
        )
        .expect("key"),
    );
    app.use_settings(settings);
    let revoked = app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(
        (revoked.status, revoked.body["status"].clone()),
        (StatusCode::OK, json!("revoked")),
        "{}",
        revoked.body
    );
    assert_eq!(scalar::<i64>(&app, "SELECT count(*) FROM data_keys").await, 0, "the key is destroyed all the same");
    assert_eq!(scalar::<i64>(&app, "SELECT count(*) FROM upstream_revocations").await, 0);
}
