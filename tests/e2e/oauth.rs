//! The OAuth connect flow on the real binary against a real authorization
//! server, at trace level, through a background refresh and a revocation
//! revoked upstream: the client secret, the authorization code, the state
//! and every token (first and refreshed) never reach the database dump
//! (outside the sealed credentials) or anything the server prints.

use std::process::Command;

use connections_e2e::Server;
use connections_testkit::OauthProvider;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_secrets_never_reach_the_dump_or_the_logs() {
    let provider = OauthProvider::start();
    let client_secret = format!("client-secret-{}", uuid::Uuid::now_v7().simple());
    let file = std::env::temp_dir().join(format!("providers-{}.json", uuid::Uuid::now_v7().simple()));
    let text = provider.providers_json(
        "http://127.0.0.1:9/v1/oauth/callback",
        &["google-calendar"],
        &["calendar.read"],
        "E2E_OAUTH_SECRET",
    );
    std::fs::write(&file, text).expect("write the providers file");
    let mut server = Server::start(&[
        ("CONNECTIONS_LOG", "trace"),
        ("CONNECTIONS_PROVIDERS_FILE", file.to_str().expect("utf-8")),
        ("E2E_OAUTH_SECRET", &client_secret),
    ]);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let listed: Value = http
        .get(format!("{}/v1/providers", server.base))
        .bearer_auth(server.token("alice"))
        .send()
        .await
        .expect("providers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["providers"][0]["service"], "google-calendar");

    let started = http
        .post(format!("{}/v1/connect/google-calendar", server.base))
        .bearer_auth(server.token("alice"))
        .json(&json!({"agent_id": "agent-1"}))
        .send()
        .await
        .expect("connect");
    assert_eq!(started.status(), 200);
    let cookie = started.headers()["set-cookie"].to_str().expect("ascii").split(';').next().expect("pair").to_owned();
    let started: Value = started.json().await.expect("JSON");
    let authorized = http.get(started["authorize_url"].as_str().expect("url")).send().await.expect("authorize");
    let location = authorized.headers()["location"].to_str().expect("ascii").to_owned();
    let query = location.split_once('?').expect("query").1.to_owned();
    let param =
        |name: &str| query.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).expect("param").to_owned();
    let (code, state) = (param("code"), param("state"));
    // The first tokens live 4 seconds: the server's refresher replaces them.
    provider.command("expires 4");
    let done = http
        .get(format!("{}/v1/oauth/callback?{query}", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("callback");
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap_or_default());
    provider.command("expires 3600");
    let resolve = || async {
        let resolved: Value = http
            .post(format!("{}/v1/resolve", server.base))
            .bearer_auth(server.agent_token("agent-1", "alice"))
            .json(&json!({"service": "google-calendar"}))
            .send()
            .await
            .expect("resolve")
            .json()
            .await
            .expect("JSON");
        let token = |name: &str| resolved["credential"][name].as_str().expect("token").to_owned();
        (resolved["connection_id"].as_str().expect("id").to_owned(), token("access_token"), token("refresh_token"))
    };
    // No resolve yet (one would refresh a token this short-lived itself).
    let (refresh, access) = provider.last_issued();
    let (database, connection) =
        tokio_postgres::connect(&server.database_url, tokio_postgres::NoTls).await.expect("database");
    tokio::spawn(connection);
    let count = |event_type: &'static str| {
        let database = &database;
        async move {
            let row = database
                .query_one("SELECT count(*) FROM events WHERE event_type = $1", &[&event_type])
                .await
                .expect("count");
            row.get::<_, i64>(0)
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while count("credential_refreshed").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the background refresher did not refresh");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (id, refreshed_access, refreshed_refresh) = resolve().await;
    assert_ne!(refreshed_access, access, "the agent gets the refreshed token");
    assert_eq!(count("credential_refreshed").await, 1, "refreshed in the background, not by the resolve");

    let revoked = http
        .delete(format!("{}/v1/connections/{id}", server.base))
        .bearer_auth(server.token("alice"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    let pending = Command::new("pg_dump").args(["--data-only", &server.database_url]).output().expect("pg_dump");
    let pending = String::from_utf8_lossy(&pending.stdout).into_owned();
    while count("upstream_revoked").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the tokens were not revoked upstream");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(provider.revocations().contains(&refreshed_refresh), "revoked at the provider");

    let dump = Command::new("pg_dump").args(["--data-only", &server.database_url]).output().expect("pg_dump");
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned() + &pending;
    assert!(
        dump.contains("oauth_states") && dump.contains("connection_created") && dump.contains("upstream_revoked"),
        "the dump holds the flow and the log"
    );
    server.stop();
    let output = server.output();
    assert!(output.contains("listening on"), "the server output was captured (sanity check)");
    let _ = std::fs::remove_file(&file);
    for (what, secret) in [
        ("client secret", &client_secret),
        ("code", &code),
        ("state", &state),
        ("access token", &access),
        ("refresh token", &refresh),
        ("refreshed access token", &refreshed_access),
        ("refreshed refresh token", &refreshed_refresh),
    ] {
        assert!(!dump.contains(secret.as_str()), "the {what} is in the database dump");
        assert!(!output.contains(secret.as_str()), "the {what} is in the server output");
    }
}
