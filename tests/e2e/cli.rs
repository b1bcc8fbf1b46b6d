//! The binary's other subcommands.

use std::process::Command;

use connections_e2e::{binary, JWT_SECRET};
use connections_testkit::{drop_database, unique_database};

#[test]
fn migrate_creates_the_database_and_is_idempotent() {
    let (name, url) = unique_database();
    for run in 0..2 {
        let output = Command::new(binary())
            .arg("migrate")
            .env("CONNECTIONS_DATABASE_URL", &url)
            .output()
            .expect("run connections migrate");
        assert!(output.status.success(), "migrate run {run} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    drop_database(&name);
}

/// The claims of a token printed by `connections token`.
fn claims_of(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut command = Command::new(binary());
    command.args(args).env("CONNECTIONS_JWT_SECRET", JWT_SECRET);
    command.env_remove("CONNECTIONS_JWT_AUDIENCE").env_remove("CONNECTIONS_JWT_ISSUER");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run connections token");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let payload = token.trim().split('.').nth(1).expect("a JWT").to_owned();
    // base64url without padding, decoded by hand (no base64 crate here).
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut bits, mut buffer, mut bytes) = (0u32, 0u32, Vec::new());
    for c in payload.bytes() {
        buffer = (buffer << 6) | alphabet.iter().position(|&a| a == c).expect("base64url") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
        }
    }
    serde_json::from_slice(&bytes).expect("claims JSON")
}

#[test]
fn agent_tokens_are_short_lived_and_tokens_carry_the_configured_audience() {
    // The lifetime is judged against the clock before and after each run
    // (a cold start of the binary can take seconds on a loaded machine).
    let unix_now =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let (before, agent, after) =
        (unix_now(), claims_of(&["token", "--agent", "agent-1", "--owner", "alice"], &[]), unix_now());
    let exp = agent["exp"].as_i64().expect("exp");
    assert!(
        (before + 899..=after + 901).contains(&exp),
        "agent token expires at {exp}, not 15 minutes after {before}..{after}"
    );
    assert_eq!(
        (agent["role"].clone(), agent["owner"].clone()),
        (serde_json::json!("agent"), serde_json::json!("alice"))
    );
    let (before, user, after) = (unix_now(), claims_of(&["token", "--user", "alice"], &[]), unix_now());
    let exp = user["exp"].as_i64().expect("exp");
    assert!(
        (before + 86_399..=after + 86_401).contains(&exp),
        "user token expires at {exp}, not a day after {before}..{after}"
    );
    assert!(user.get("aud").is_none());
    let configured = claims_of(
        &["token", "--user", "alice", "--ttl", "60"],
        &[("CONNECTIONS_JWT_AUDIENCE", "connections"), ("CONNECTIONS_JWT_ISSUER", "https://idp.example")],
    );
    assert_eq!(
        (configured["aud"].clone(), configured["iss"].clone()),
        (serde_json::json!("connections"), serde_json::json!("https://idp.example"))
    );
}

#[test]
fn token_refuses_an_invalid_user_id_and_a_missing_secret() {
    let invalid = Command::new(binary())
        .args(["token", "--user", "not valid"])
        .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
        .output()
        .expect("run connections token");
    assert!(!invalid.status.success());
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("--user"));
    let no_secret = Command::new(binary())
        .args(["token", "--user", "alice"])
        .env_remove("CONNECTIONS_JWT_SECRET")
        .output()
        .expect("run connections token");
    assert!(!no_secret.status.success());
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("CONNECTIONS_JWT_SECRET"));
}

#[test]
fn serve_refuses_to_start_without_a_master_key() {
    let output = Command::new(binary())
        .arg("serve")
        .env("CONNECTIONS_LISTEN", "127.0.0.1:0")
        .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
        .env_remove("CONNECTIONS_MASTER_KEY")
        .env_remove("CONNECTIONS_MASTER_KEY_FILE")
        .output()
        .expect("run connections serve");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("CONNECTIONS_MASTER_KEY"));
}

#[test]
fn serve_refuses_a_setting_out_of_its_range_and_names_it() {
    for (name, value) in [
        ("CONNECTIONS_COMMIT_GROUP", "0"),
        ("CONNECTIONS_COMMIT_GROUP", "65"),
        ("CONNECTIONS_COMMIT_GROUP", "many"),
        ("CONNECTIONS_NATS_RUNTIME_TTL_SECS", "5"),
        ("CONNECTIONS_STREAMS_PER_USER", "0"),
        ("CONNECTIONS_DATABASE_POOL", "x"),
        ("CONNECTIONS_PROJECTOR_PACE_MS", "1001"),
        ("CONNECTIONS_PROJECTOR_PACE_MS", "-1"),
    ] {
        let output = Command::new(binary())
            .arg("serve")
            .env("CONNECTIONS_LISTEN", "127.0.0.1:0")
            .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
            .env("CONNECTIONS_MASTER_KEY", connections_e2e::master_key())
            .env("CONNECTIONS_NATS_INSECURE", "1")
            .env(name, value)
            .output()
            .expect("run connections serve");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}={value}: {stderr}");
        assert!(stderr.contains(name) && !stderr.contains("panicked"), "{name}={value}: {stderr}");
        assert!(!stderr.contains("listening on"), "{name}={value} started: {stderr}");
    }
}

#[test]
fn serve_refuses_to_start_without_nats_authentication_unless_told_it_is_insecure() {
    let output = Command::new(binary())
        .arg("serve")
        .env("CONNECTIONS_LISTEN", "127.0.0.1:0")
        .env("CONNECTIONS_JWT_SECRET", JWT_SECRET)
        .env("CONNECTIONS_MASTER_KEY", connections_e2e::master_key())
        .env_remove("CONNECTIONS_NATS_ISSUER_FILE")
        .env_remove("CONNECTIONS_NATS_INSECURE")
        .output()
        .expect("run connections serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CONNECTIONS_NATS_ISSUER_FILE") && stderr.contains("CONNECTIONS_NATS_INSECURE"),
        "{stderr}"
    );

    // Told explicitly, it starts, and says loudly that NATS is open.
    let server = connections_e2e::Server::start(&[("CONNECTIONS_NATS_INSECURE", "1")]);
    assert!(server.output().contains("WARN"), "{}", server.output());
    assert!(server.output().contains("NATS without authentication"), "{}", server.output());
}

#[test]
fn audit_history_lists_a_connections_events_and_refuses_bad_ids() {
    let server = connections_e2e::Server::start(&[]);
    let created = Command::new("curl")
        .args(["-sf", "-X", "POST", &format!("{}/v1/connections", server.base)])
        .args(["-H", &format!("Authorization: Bearer {}", server.token("alice")), "-H", "Content-Type: application/json"])
        .args(["-d", r#"{"service":"github","name":"Work","agent_id":"agent-1","credential":{"kind":"api_key","key":"audit-canary"}}"#])
        .output()
        .expect("curl");
    let body: serde_json::Value = serde_json::from_slice(&created.stdout).expect("JSON");
    let id = body["connection_id"].as_str().expect("id");
    let audit = |args: &[&str]| {
        Command::new(binary())
            .arg("audit")
            .args(args)
            .env("CONNECTIONS_DATABASE_URL", &server.database_url)
            .output()
            .expect("run connections audit")
    };
    let history = audit(&["history", "--connection", id, "--json"]);
    assert!(history.status.success(), "{}", String::from_utf8_lossy(&history.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let types: Vec<&str> = lines.iter().map(|l| l["event_type"].as_str().expect("type")).collect();
    assert_eq!(types, vec!["connection_created", "agent_assigned"]);
    assert!(!String::from_utf8_lossy(&history.stdout).contains("audit-canary"));
    let by_owner = audit(&["history", "--owner", "alice"]);
    assert!(String::from_utf8_lossy(&by_owner.stdout).contains("connection_created"));
    let unknown = audit(&["history", "--owner", "nobody"]);
    assert!(unknown.status.success(), "an unknown id is an empty answer, not an error");
    assert!(String::from_utf8_lossy(&unknown.stdout).contains("(no events)"));
    let bad = audit(&["history", "--connection", "not-a-uuid"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--connection must be a UUID"));

    // A page at a time: the first page names where the next one starts.
    let first = audit(&["history", "--owner", "alice", "--json", "--limit", "1"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let first_page: Vec<serde_json::Value> = String::from_utf8_lossy(&first.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(first_page.len(), 1);
    assert_eq!(first_page[0]["event_type"], "connection_created");
    let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
    let after = stderr
        .lines()
        .find_map(|line| line.strip_prefix("more events: --after "))
        .unwrap_or_else(|| panic!("no next page named: {stderr}"))
        .trim()
        .to_owned();
    let second = audit(&["history", "--owner", "alice", "--json", "--limit", "1", "--after", &after]);
    let second_page: Vec<serde_json::Value> = String::from_utf8_lossy(&second.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(second_page.len(), 1);
    assert_eq!(second_page[0]["event_type"], "agent_assigned");
    assert!(!String::from_utf8_lossy(&second.stderr).contains("more events"), "the last page names no next one");
    for (args, flag) in [
        (vec!["history", "--owner", "alice", "--limit", "0"], "--limit"),
        (vec!["history", "--owner", "alice", "--after", "soon"], "--after"),
    ] {
        let refused = audit(&args);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains(flag), "{args:?}");
    }
}

/// A runtime links the client crate without the server's Postgres stack:
/// the wire contract lives in `connections-wire`.
#[test]
fn the_agent_client_does_not_pull_in_postgres() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--offline", "-p", "connections-agent", "-e", "normal", "--prefix", "none"])
        .current_dir(connections_e2e::workspace_root())
        .output()
        .expect("run cargo tree");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(tree.contains("connections-wire"), "{tree}");
    for server_crate in ["tokio-postgres", "deadpool-postgres", "connections-store", "connections-fanout", "axum"] {
        assert!(!tree.lines().any(|line| line.starts_with(&format!("{server_crate} "))), "{server_crate} in:\n{tree}");
    }
}
