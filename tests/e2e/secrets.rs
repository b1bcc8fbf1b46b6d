//! A canary secret written through the API never appears in a `pg_dump` of
//! the database nor in anything the server prints, even at trace level.

use std::process::Command;

use connections_e2e::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_never_reaches_the_database_dump_or_the_logs() {
    let mut server = Server::start(&[("CONNECTIONS_LOG", "trace")]);
    let canary = format!("canary-{}", uuid::Uuid::now_v7().simple());
    let client = reqwest::Client::new();
    let token = server.token("alice");
    let post = |path: &str, body: serde_json::Value| {
        client.post(format!("{}{path}", server.base)).bearer_auth(&token).json(&body).send()
    };

    let created = post(
        "/v1/connections",
        json!({"service": "github", "name": "Work", "agent_id": "agent-1",
               "credential": {"kind": "oauth2", "access_token": canary, "refresh_token": canary}}),
    )
    .await
    .expect("create");
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.expect("json")["connection_id"].as_str().expect("id").to_owned();
    let rotated = client
        .put(format!("{}/v1/connections/{id}/credential", server.base))
        .bearer_auth(&token)
        .json(&json!({"credential": {"kind": "basic", "username": canary, "password": canary}}))
        .send()
        .await
        .expect("rotate");
    assert_eq!(rotated.status(), 200);
    // Bad input carrying the canary: refused without echoing it.
    for body in [
        json!({"service": "github", "name": "x", "credential": {"kind": "api_key", "key": canary, "extra": canary}}),
        json!({"service": "github", "name": "x", "credential": {"kind": "oauth2", "access_token": canary, "expires_at": canary}}),
    ] {
        let refused = post("/v1/connections", body).await.expect("bad create");
        assert_eq!(refused.status(), 400);
        assert!(!refused.text().await.expect("body").contains(&canary));
    }
    let malformed = client
        .post(format!("{}/v1/connections", server.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!("{{\"credential\": {{\"key\": \"{canary}\""))
        .send()
        .await
        .expect("malformed");
    assert_eq!(malformed.status(), 400);
    assert!(!malformed.text().await.expect("body").contains(&canary));
    // The plaintext leaves exactly once: in an agent's resolve answer.
    let resolved: serde_json::Value = client
        .post(format!("{}/v1/resolve", server.base))
        .bearer_auth(server.agent_token("agent-1", "alice"))
        .json(&json!({"service": "github"}))
        .send()
        .await
        .expect("resolve")
        .json()
        .await
        .expect("JSON");
    assert_eq!(resolved["credential"]["password"], json!(canary), "the agent gets the rotated credential");
    let revoked =
        client.delete(format!("{}/v1/connections/{id}", server.base)).bearer_auth(&token).send().await.expect("revoke");
    assert_eq!(revoked.status(), 200);

    let dump = Command::new("pg_dump").args(["--data-only", &server.database_url]).output().expect("run pg_dump");
    assert!(dump.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("connection_revoked"), "the dump must contain the log (sanity check)");
    assert!(!dump.contains(&canary), "the canary is in the database dump");

    server.stop();
    let output = server.output();
    assert!(output.contains("listening on"), "the server output was captured (sanity check)");
    assert!(!output.contains(&canary), "the canary is in the server's output");
}
