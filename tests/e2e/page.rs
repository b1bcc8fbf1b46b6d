//! The Connections page in a real browser: `tests/browser/page.mjs` drives
//! Debian's chromium (playwright-core) against the real binary, Postgres and
//! NATS (`ops/test` installs chromium and the npm packages). It signs in,
//! reads the cards, sees a change made through the API appear live, opens
//! the usage view, sets a default, rotates, revokes with the affected agents
//! named before and after, checks CSRF, CSP, storage, phone width and
//! accessibility (axe-core), and that bob sees nothing of alice's.
//! Screenshots of the cards and the usage view go to `target/screenshots/`.

use std::process::Command;

use connections_e2e::{workspace_root, Server};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_a_real_browser() {
    let browser_tests = workspace_root().join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").exists(),
        "the browser tests are not installed: run `npm ci --prefix tests/browser` (ops/test does)"
    );
    let mut server = Server::start(&[]);
    let (alice, bob) = (server.token("alice"), server.token("bob"));
    let http = reqwest::Client::new();
    let create = |service: &str, name: &str, agent: Option<&str>| {
        let mut body = json!({"service": service, "name": name, "credential": {"kind": "api_key", "key": "k-page"}});
        if let Some(agent) = agent {
            body["agent_id"] = json!(agent);
        }
        http.post(format!("{}/v1/connections", server.base)).bearer_auth(&alice).json(&body).send()
    };
    let used: Value =
        create("google-calendar", "Work calendar", Some("a1")).await.expect("create").json().await.expect("JSON");
    let used = used["connection_id"].as_str().expect("id").to_owned();
    let assigned = http
        .post(format!("{}/v1/connections/{used}/agents", server.base))
        .bearer_auth(&alice)
        .json(&json!({"agent_id": "a2"}))
        .send()
        .await
        .expect("assign");
    assert_eq!(assigned.status(), 200);
    let spare: Value = create("google-calendar", "Spare", None).await.expect("create").json().await.expect("JSON");
    let spare = spare["connection_id"].as_str().expect("id").to_owned();
    create("github", "Code", None).await.expect("create");

    let shots = workspace_root().join("target/screenshots");
    let run = Command::new("node")
        .arg(browser_tests.join("page.mjs"))
        .args([&server.base, &alice, &bob, &used, &spare, shots.to_str().expect("utf-8")])
        .current_dir(&browser_tests)
        .output()
        .expect("run node tests/browser/page.mjs");
    let printed = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    server.stop();
    assert!(run.status.success(), "the browser test failed:\n{printed}");
    assert!(printed.contains("page: done"), "{printed}");
    assert!(shots.join("cards.png").exists() && shots.join("usage.png").exists());
    // No token reached the server's logs through a URL.
    assert!(!server.output().contains(&alice), "alice's token is in the server output");
}
