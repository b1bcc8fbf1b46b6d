//! Operating instances: SIGTERM hands the roles over at once and finishes
//! what is in flight; `/metrics` passes `promtool check metrics`; JSON
//! logs carry the request id.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use connections_e2e::Server;
use serde_json::{json, Value};

async fn roles(client: &reqwest::Client, base: &str) -> Vec<String> {
    match client.get(format!("{base}/health")).send().await {
        Ok(response) => response.json::<Value>().await.map_or_else(
            |_| Vec::new(),
            |body| {
                body["roles"].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(str::to_owned)).collect()
            },
        ),
        Err(_) => Vec::new(),
    }
}

async fn wait_for_roles(client: &reqwest::Client, base: &str, wanted: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let held = roles(client, base).await;
        if wanted.iter().all(|role| held.iter().any(|h| h == role)) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{base} did not take {wanted:?} within {within:?} (holds {held:?})");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_hands_its_roles_over_at_once_and_exits_0() {
    let prefix = format!("op{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
    let mut first = Server::start(&[("CONNECTIONS_NATS_PREFIX", &prefix), ("CONNECTIONS_INSTANCE", "first")]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let every_role = ["relay", "projector-dashboard", "upkeep"];
    wait_for_roles(&client, &first.base, &every_role, Duration::from_secs(20)).await;
    let second = first.beside(&[("CONNECTIONS_INSTANCE", "second")]);
    let health: Value =
        client.get(format!("{}/health", second.base)).send().await.expect("health").json().await.expect("json");
    assert_eq!(health["instance"], "second");
    // One instance holds each role. Usually the first holds them all; a
    // session of the first that restarts under load hands its role over,
    // and while it does, a look at both may find no holder (released, not
    // yet taken) or two (each read at another moment): it must settle.
    let settling = Instant::now();
    loop {
        let (held_first, held_second) = (roles(&client, &first.base).await, roles(&client, &second.base).await);
        let holders =
            |role: &str| [&held_first, &held_second].iter().filter(|held| held.iter().any(|h| h == role)).count();
        if every_role.iter().all(|role| holders(role) == 1) {
            break;
        }
        assert!(
            settling.elapsed() < Duration::from_secs(10),
            "each role must have one holder: first {held_first:?}, second {held_second:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A request in flight: its head and half its body are sent.
    let token = first.token("alice");
    let body =
        json!({"service": "github", "name": "In flight", "credential": {"kind": "api_key", "key": "k-1"}}).to_string();
    let address = first.base.trim_start_matches("http://").to_owned();
    let mut in_flight = std::net::TcpStream::connect(&address).expect("connect");
    in_flight.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!(
        "POST /v1/connections HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (start, rest) = body.split_at(body.len() / 2);
    in_flight.write_all(head.as_bytes()).expect("head");
    in_flight.write_all(start.as_bytes()).expect("half the body");
    tokio::time::sleep(Duration::from_millis(200)).await;

    first.signal("TERM");
    let took_over = wait_for_roles(&client, &second.base, &every_role, Duration::from_secs(5)).await;
    println!("roles handed over {:.1} ms after SIGTERM", took_over.as_secs_f64() * 1e3);
    assert!(took_over < Duration::from_secs(2), "no lease wait: took {took_over:?}");
    // Not accepting any more.
    assert!(
        client.get(format!("{}/health", first.base)).send().await.is_err(),
        "a stopping instance accepts no new request"
    );

    in_flight.write_all(rest.as_bytes()).expect("the rest of the body");
    let mut answer = String::new();
    in_flight.read_to_string(&mut answer).expect("the answer");
    assert!(answer.starts_with("HTTP/1.1 201"), "the request in flight was finished: {answer}");
    let status = tokio::task::block_in_place(|| first.wait_exit(Duration::from_secs(15))).expect("exited");
    assert!(status.success(), "exit status {status}: {}", first.output());

    // The other instance serves it, relayed and projected by its new roles.
    let id = answer.split("\"connection_id\":\"").nth(1).and_then(|rest| rest.split('"').next()).expect("an id");
    let shown =
        client.get(format!("{}/v1/connections/{id}", second.base)).bearer_auth(&token).send().await.expect("show");
    assert_eq!(shown.status(), 200);
    let output = first.output();
    assert!(output.contains("role released"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_json_logs_carry_the_request_id() {
    // A successful request's line is at `debug`; this filter is the README's way to log them all.
    let server = Server::start(&[
        ("CONNECTIONS_LOG_FORMAT", "json"),
        ("CONNECTIONS_LOG", "info,connections_api::telemetry=debug"),
    ]);
    let client = reqwest::Client::new();
    let token = server.token("alice");
    let created = client
        .post(format!("{}/v1/connections", server.base))
        .bearer_auth(&token)
        .header("x-request-id", "e2e-request-7")
        .json(&json!({"service": "github", "name": "W", "agent_id": "agent-1",
                      "credential": {"kind": "api_key", "key": "k-1"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["x-request-id"], "e2e-request-7");
    let agent = server.agent_token("agent-1", "alice");
    let resolved =
        client.post(format!("{}/v1/resolve", server.base)).bearer_auth(&agent).json(&json!({"service": "github"}));
    assert_eq!(resolved.send().await.expect("resolve").status(), 200);
    let ready = client.get(format!("{}/ready", server.base)).send().await.expect("ready");
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap_or_default());

    // Wait for the relay to publish, so that its metrics are there too.
    let started = Instant::now();
    let metrics = loop {
        let text =
            client.get(format!("{}/metrics", server.base)).send().await.expect("metrics").text().await.expect("text");
        if text.contains("connections_relay_lag_seconds_count ")
            && text.contains("connections_projection_lag_seconds_count")
        {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no relay metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for family in [
        "connections_nats_connected 1",
        "connections_role_held{role=\"relay\"} 1",
        "connections_notices_published_total",
    ] {
        assert!(metrics.contains(family), "missing {family}:\n{metrics}");
    }
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: apt-get install prometheus (ops/test does)");
    let mut promtool = promtool;
    promtool.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("write");
    let checked = promtool.wait_with_output().expect("promtool ran");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let output = server.output();
    let request_line = output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["span"]["request_id"] == "e2e-request-7" && line["fields"]["message"] == "answered")
        .unwrap_or_else(|| panic!("no JSON line for the request:\n{output}"));
    assert_eq!(request_line["fields"]["status"], 201, "{request_line}");
    assert_eq!(request_line["span"]["route"], "/v1/connections", "{request_line}");
}
