//! The README's curl session works as printed.

use std::process::Command;

use connections_e2e::{workspace_root, Server};

fn readme_session() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("read README.md");
    let start = readme.find("<!-- readme-session:start -->").expect("session start marker");
    let end = readme.find("<!-- readme-session:end -->").expect("session end marker");
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
    assert_eq!(String::from_utf8_lossy(&output.stdout), r#"{"status":"ok"}"#);
}
