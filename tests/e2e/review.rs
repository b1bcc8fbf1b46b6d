//! `connections review` and `GET /v1/review` on the real binary: the same
//! findings, and keyed fingerprints that never leave their table: not in an
//! answer, an event, a NATS message or the server's output.

use std::process::Command;

use connections_e2e::{binary, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn review_cli(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("review")
        .args(args)
        .env("CONNECTIONS_DATABASE_URL", &server.database_url)
        .env("CONNECTIONS_LOG", "error")
        .output()
        .expect("run connections review")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_finds_a_reused_secret_and_its_fingerprints_stay_in_their_table() {
    let prefix = format!("rev{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
    let nats = async_nats::connect("nats://127.0.0.1:4222").await.expect("connect");
    let mut everything = nats.subscribe(format!("{prefix}.>")).await.expect("subscribe");
    nats.flush().await.expect("flush");
    let mut server = Server::start(&[("CONNECTIONS_LOG", "trace"), ("CONNECTIONS_NATS_PREFIX", &prefix)]);
    let http = reqwest::Client::new();
    let alice = server.token("alice");
    let mut ids = Vec::new();
    let mut position = 0;
    for (service, user) in [("github", "alice"), ("slack", "alice"), ("notion", "bob")] {
        let answer: Value = http
            .post(format!("{}/v1/connections", server.base))
            .bearer_auth(server.token(user))
            .json(&json!({"service": service, "name": service, "agent_id": "agent-1",
                          "credential": {"kind": "api_key", "key": "the-reused-secret"}}))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("JSON");
        ids.push(answer["connection_id"].as_str().expect("id").to_owned());
        position = position.max(answer["position"].as_i64().expect("position"));
    }
    let answer = http
        .get(format!("{}/v1/review?min_position={position}", server.base))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("review");
    assert_eq!(answer.status(), 200);
    let http_review: Value = answer.json().await.expect("JSON");
    let kinds: Vec<(&str, &str)> = http_review["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| (f["connection_id"].as_str().expect("id"), f["kind"].as_str().expect("kind")))
        .collect();
    assert_eq!(kinds, vec![(ids[0].as_str(), "duplicate_secret"), (ids[1].as_str(), "duplicate_secret")]);

    // The CLI answers the same findings; bad options are refused cleanly.
    let cli = review_cli(&server, &["--owner", "alice", "--json"]);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let cli_review: Value = serde_json::from_slice(&cli.stdout).expect("JSON");
    assert_eq!(cli_review["findings"], http_review["findings"]);
    let text = review_cli(&server, &["--owner", "alice"]);
    let text = String::from_utf8(text.stdout).expect("UTF-8");
    assert!(text.contains("duplicate_secret") && text.contains(&format!("same secret as {}", ids[1])), "{text}");
    let bob = review_cli(&server, &["--owner", "bob", "--json"]);
    let bob: Value = serde_json::from_slice(&bob.stdout).expect("JSON");
    assert_eq!((bob["connections_reviewed"].clone(), bob["findings"].clone()), (json!(1), json!([])));
    for args in [&["--owner", "not valid"][..], &["--owner", "alice", "--max-agents", "0"], &[]] {
        let refused = review_cli(&server, args);
        assert!(!refused.status.success(), "{args:?} must be refused");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // Every fingerprint, in the forms a leak would take.
    let (client, connection) =
        tokio_postgres::connect(&server.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let rows = client.query("SELECT unnest(fingerprints) FROM credential_hygiene", &[]).await.expect("fingerprints");
    let prints: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(prints.len(), 3, "one per connection (one secret value each)");
    let forms: Vec<String> = prints
        .iter()
        .flat_map(|p| {
            let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
            let bytes = format!("{p:?}");
            [hex.clone(), hex.to_uppercase(), bytes, base64(p)]
        })
        .collect();
    let events: Vec<String> = client
        .query("SELECT data::text || metadata::text FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut messages = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(std::time::Duration::from_millis(500), everything.next()).await {
        messages.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    assert!(messages.len() >= 3, "the relay's messages were captured (sanity check): {}", messages.len());
    server.stop();
    let output = server.output();
    assert!(output.contains("listening on"), "the server output was captured (sanity check)");
    for form in &forms {
        for (place, text) in [
            ("the review answer", http_review.to_string()),
            ("the CLI output", String::from_utf8_lossy(&cli.stdout).into_owned()),
            ("an event", events.join("\n")),
            ("a NATS message", messages.join("\n")),
            ("the server output", output.clone()),
        ] {
            if let Some(at) = text.find(form.as_str()) {
                let start = text[..at].char_indices().rev().nth(300).map_or(0, |(i, _)| i);
                panic!("a fingerprint is in {place}: …{}", &text[start..(at + form.len()).min(text.len())]);
            }
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
