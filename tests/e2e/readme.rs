//! The README's curl session works as printed.

use std::process::Command;

use connections_e2e::{workspace_root, Server};

fn readme_session() -> String {
    session("readme-session")
}

/// The commands between `<!-- NAME:start -->` and `<!-- NAME:end -->`.
fn session(name: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("read README.md");
    let start = readme.find(&format!("<!-- {name}:start -->")).expect("session start marker");
    let end = readme.find(&format!("<!-- {name}:end -->")).expect("session end marker");
    readme[start..end]
        .lines()
        .filter(|line| !line.starts_with("```") && !line.starts_with("<!--"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_readme_curl_session_works_as_printed() {
    let server = Server::start(&[]);
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &readme_session()])
        .env("B", &server.base)
        .env("T", server.token("alice"))
        .output()
        .expect("run the README session");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the README session failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("the session prints");
    assert_eq!(last, r#"{"status":"revoked","affected_agents":["agent-1","agent-2"],"is_default":false}"#);
}

#[test]
fn health_answers_without_a_token() {
    let server = Server::start(&[]);
    let output = Command::new("curl").args(["-sf", &format!("{}/health", server.base)]).output().expect("curl");
    assert!(output.status.success());
    let health: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(health["status"], "ok");
    // Named after the address it listens on; its roles are listed.
    assert_eq!(health["instance"].as_str(), server.base.strip_prefix("http://"));
    assert!(health["roles"].is_array(), "{health}");
}

#[test]
fn the_readme_oauth_session_works_as_printed_against_a_real_provider() {
    let provider = connections_testkit::OauthProvider::start();
    // The provider redirects the browser to the server's callback: the
    // server's port must be known before it starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let dir = std::env::temp_dir().join(format!("oauth-session-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("providers.json");
    let redirect = format!("http://127.0.0.1:{port}/v1/oauth/callback");
    std::fs::write(
        &file,
        provider.providers_json(&redirect, &["google-calendar"], &["calendar.read"], "README_SECRET"),
    )
    .expect("write");
    let server = Server::start(&[
        ("CONNECTIONS_LISTEN", &format!("127.0.0.1:{port}")),
        ("CONNECTIONS_PROVIDERS_FILE", file.to_str().expect("utf-8")),
        ("README_SECRET", "readme-client-secret"),
    ]);
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &session("oauth-session")])
        .current_dir(&dir)
        .env("B", &server.base)
        .env("T", server.token("alice"))
        .output()
        .expect("run the OAuth session");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the OAuth session failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("Connected. Connection ") && stdout.contains("is ready"), "{stdout}");
    let resolved = Command::new("curl")
        .args(["-sf", "-X", "POST", &format!("{}/v1/resolve", server.base)])
        .args(["-H", &format!("Authorization: Bearer {}", server.agent_token("agent-1", "alice"))])
        .args(["-H", "Content-Type: application/json", "-d", r#"{"service":"google-calendar"}"#])
        .output()
        .expect("curl");
    let resolved: serde_json::Value = serde_json::from_slice(&resolved.stdout).expect("JSON");
    assert_eq!(resolved["credential"]["kind"], "oauth2", "{resolved}");
    let _ = std::fs::remove_dir_all(&dir);
}
