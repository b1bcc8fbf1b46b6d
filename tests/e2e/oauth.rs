//! The OAuth connect flow on the real binary against a real authorization
//! server, at trace level: the client secret, the authorization code, the
//! state and the tokens never reach the database dump (outside the sealed
//! credential) or anything the server prints.

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
    let done = http
        .get(format!("{}/v1/oauth/callback?{query}", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("callback");
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap_or_default());
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
    let access = resolved["credential"]["access_token"].as_str().expect("access token").to_owned();
    let refresh = resolved["credential"]["refresh_token"].as_str().expect("refresh token").to_owned();

    let dump = Command::new("pg_dump").args(["--data-only", &server.database_url]).output().expect("pg_dump");
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(
        dump.contains("oauth_states") && dump.contains("connection_created"),
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
    ] {
        assert!(!dump.contains(secret.as_str()), "the {what} is in the database dump");
        assert!(!output.contains(secret.as_str()), "the {what} is in the server output");
    }
}
