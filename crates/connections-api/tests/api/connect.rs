//! Connecting through a real OAuth 2.0 authorization server
//! (oauth2-mock-server on loopback): the authorization-code flow with PKCE,
//! and every refusal storing nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use connections_api::providers::Providers;
use connections_testkit::OauthProvider;
use serde_json::{json, Value};

use crate::{Answer, TestApp};

const REDIRECT: &str = "http://127.0.0.1:9/v1/oauth/callback";

pub(crate) async fn app_with(provider: &OauthProvider, return_url: Option<&str>) -> TestApp {
    let mut app = TestApp::new().await;
    let mut text = provider.providers_json(REDIRECT, &["google-calendar"], &["calendar.read", "openid"], "SECRET");
    if let Some(url) = return_url {
        text = text.replacen("{", &format!("{{\"return_url\": \"{url}\", "), 1);
    }
    let providers = Providers::parse(&text, |_| Some("client-secret-canary".to_owned())).expect("providers");
    app.use_settings(connections_api::Settings { providers, ..Default::default() });
    app
}

/// Starts a flow as alice; returns (authorize URL, browser cookie).
pub(crate) async fn start(app: &TestApp, body: Value) -> (String, String) {
    let answer = app.send(Method::POST, "/v1/connect/google-calendar", Some("alice"), Some(body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    crate::openapi::assert_documented(&crate::openapi::document(), "post", "/v1/connect/{service}", &answer);
    let cookie = answer.headers["set-cookie"].to_str().expect("ascii").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/v1;"));
    let cookie = cookie.split(';').next().expect("pair").to_owned();
    (answer.body["authorize_url"].as_str().expect("url").to_owned(), cookie)
}

/// The provider's redirect back: the callback's query string.
pub(crate) async fn authorize(url: &str) -> String {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let response = http.get(url).send().await.expect("authorize");
    assert_eq!(response.status().as_u16(), 302);
    let location = response.headers()["location"].to_str().expect("ascii").to_owned();
    assert!(location.starts_with(REDIRECT), "{location}");
    location.split_once('?').expect("query").1.to_owned()
}

pub(crate) async fn callback(app: &TestApp, query: &str, cookie: Option<&str>) -> (StatusCode, String, Option<String>) {
    let mut request = Request::builder().method(Method::GET).uri(format!("/v1/oauth/callback?{query}"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = tower::ServiceExt::oneshot(app.router.clone(), request.body(Body::empty()).expect("request"))
        .await
        .expect("answer");
    let status = response.status();
    let location = response.headers().get("location").map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned(), location)
}

fn param(query: &str, name: &str) -> String {
    query.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).expect("param").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_creates_a_connection_the_agent_can_resolve_and_no_token_reaches_the_log() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, None).await;
    let (url, cookie) = start(&app, json!({"agent_id": "agent-1", "skill": "calendar-connector"})).await;
    assert!(url.starts_with(&format!("{}/authorize?", provider.base)));
    assert!(url.contains("code_challenge_method=S256") && url.contains("scope=calendar.read+openid"), "{url}");
    assert!(!url.contains("client-secret-canary"));
    let query = authorize(&url).await;
    let (status, page, _) = callback(&app, &query, Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Connected"), "{page}");

    let resolved = app.resolve("agent-1", "alice", "google-calendar").await;
    assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.body);
    let credential = &resolved.body["credential"];
    assert_eq!(credential["kind"], "oauth2");
    assert_eq!(credential["scopes"], json!(["calendar.read", "openid"]));
    let access_token = credential["access_token"].as_str().expect("access token").to_owned();
    let refresh_token = credential["refresh_token"].as_str().expect("refresh token").to_owned();
    assert!(credential["expires_at"].is_string());
    let events: Vec<String> = app
        .db
        .client()
        .await
        .query("SELECT data::text || metadata::text FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let log = events.join("\n");
    let granted: Vec<Value> = app
        .db
        .client()
        .await
        .query("SELECT data FROM events WHERE event_type = 'oauth_granted'", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0]["scopes"], json!(["calendar.read", "openid"]), "the log records the granted scopes");
    assert!(log.contains("calendar-connector"), "the events were read (sanity check): {log}");
    for secret in [access_token.as_str(), refresh_token.as_str(), "client-secret-canary", &param(&query, "code")] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    // The state is single-use.
    let (status, page, _) = callback(&app, &query, Some(&cookie)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("already used"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_callback_stores_nothing_and_says_why() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, None).await;
    let before = app.fingerprint().await;
    let refused = |expected: StatusCode, words: &'static str| {
        move |(status, page, _): (StatusCode, String, Option<String>)| {
            assert_eq!(status, expected, "{page}");
            assert!(page.contains(words), "expected {words:?}: {page}");
        }
    };
    // Unknown, missing and forged states.
    refused(StatusCode::BAD_REQUEST, "not one we issued")(callback(&app, "code=x&state=forged", None).await);
    refused(StatusCode::BAD_REQUEST, "not one we issued")(callback(&app, "code=x", None).await);
    // Another browser: no cookie, or someone else's.
    let (url, _) = start(&app, json!({})).await;
    let query = authorize(&url).await;
    refused(StatusCode::BAD_REQUEST, "another browser")(callback(&app, &query, None).await);
    let (url, _) = start(&app, json!({})).await;
    let query = authorize(&url).await;
    let other = format!("connections_oauth={}", "A".repeat(43));
    refused(StatusCode::BAD_REQUEST, "another browser")(callback(&app, &query, Some(&other)).await);
    // Expired.
    let (url, cookie) = start(&app, json!({})).await;
    let query = authorize(&url).await;
    app.db
        .client()
        .await
        .execute("UPDATE oauth_states SET expires_at = now() - interval '1 second'", &[])
        .await
        .expect("age");
    refused(StatusCode::BAD_REQUEST, "expired")(callback(&app, &query, Some(&cookie)).await);
    // The user says no at the provider.
    provider.command("deny");
    let (url, cookie) = start(&app, json!({})).await;
    let query = authorize(&url).await;
    refused(StatusCode::BAD_REQUEST, "access_denied")(callback(&app, &query, Some(&cookie)).await);
    // The token endpoint refuses, fails, answers garbage, or grants less.
    for (command, status, words) in [
        ("error invalid_grant", StatusCode::BAD_REQUEST, "invalid_grant"),
        ("status 500", StatusCode::BAD_GATEWAY, "token endpoint failed"),
        ("garbage", StatusCode::BAD_GATEWAY, "something unexpected"),
        ("scope openid", StatusCode::BAD_REQUEST, "fewer permissions"),
    ] {
        provider.command(command);
        let (url, cookie) = start(&app, json!({})).await;
        let query = authorize(&url).await;
        refused(status, words)(callback(&app, &query, Some(&cookie)).await);
    }
    let after = app.fingerprint().await;
    assert_eq!(after[..4], before[..4], "no event, locator, data key or sealed credential was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_return_url_the_callback_redirects_with_the_connection_or_the_error() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, Some("http://127.0.0.1:9/done")).await;
    let (url, cookie) = start(&app, json!({"name": "Work calendar"})).await;
    let query = authorize(&url).await;
    let (status, _, location) = callback(&app, &query, Some(&cookie)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = location.expect("location");
    let id = location.strip_prefix("http://127.0.0.1:9/done?connection_id=").expect("connection id");
    let view = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(
        (view.body["name"].clone(), view.body["credential_kind"].clone()),
        (json!("Work calendar"), json!("oauth2"))
    );
    let bob = app.send(Method::GET, format!("/v1/connections/{id}"), Some("bob"), None).await;
    bob.assert_problem(StatusCode::NOT_FOUND, "not-found");
    let (status, _, location) = callback(&app, &query, Some(&cookie)).await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("http://127.0.0.1:9/done?error=state_already_used"))
    );
}

#[tokio::test]
async fn bad_connect_requests_are_named_and_store_nothing() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, None).await;
    let connect = |service: &str, body: Value| {
        app.send(Method::POST, format!("/v1/connect/{service}"), Some("alice"), Some(body))
    };
    let no_provider: Answer = connect("slack", json!({})).await;
    no_provider.assert_problem(StatusCode::NOT_FOUND, "no-provider");
    crate::openapi::assert_documented(&crate::openapi::document(), "post", "/v1/connect/{service}", &no_provider);
    for (body, field) in [
        (json!({"scopes": "calendar.read"}), "scopes"),
        (json!({"scopes": ["bad scope"]}), "scopes"),
        (json!({"name": ""}), "name"),
        (json!({"agent_id": "a b"}), "agent_id"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let answer = connect("google-calendar", body.clone()).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{body}");
    }
    connect("Google", json!({})).await.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    let anonymous = app.send(Method::POST, "/v1/connect/google-calendar", None, Some(json!({}))).await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let flows: i64 =
        app.db.client().await.query_one("SELECT count(*) FROM oauth_states", &[]).await.expect("count").get(0);
    assert_eq!(flows, 0, "a refused connect starts no flow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_started_side_by_side_in_one_browser_all_complete() {
    let provider = OauthProvider::start();
    let app = app_with(&provider, None).await;
    let (first_url, cookie) = start(&app, json!({"name": "First"})).await;
    // The browser sends its cookie with the second connect: it is kept.
    let second = app
        .raw(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/connect/google-calendar")
                .header("authorization", format!("Bearer {}", app.token("alice")))
                .header("content-type", "application/json")
                .header("cookie", &cookie)
                .body(Body::from(json!({"name": "Second"}).to_string()))
                .expect("request"),
        )
        .await;
    assert_eq!(second.status, StatusCode::OK);
    let again = second.headers["set-cookie"].to_str().expect("ascii").split(';').next().expect("pair").to_owned();
    assert_eq!(again, cookie, "one cookie per browser");
    let second_url = second.body["authorize_url"].as_str().expect("url").to_owned();
    for url in [first_url, second_url] {
        let query = authorize(&url).await;
        let (status, page, _) = callback(&app, &query, Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
    }
    let names: Vec<String> = app
        .db
        .client()
        .await
        .query("SELECT data->>'name' FROM events WHERE event_type = 'connection_created' ORDER BY position", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["First", "Second"]);
}
