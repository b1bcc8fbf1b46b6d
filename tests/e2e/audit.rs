//! `connections audit` against the real binary and Postgres: answers from the
//! log and from an export alone, tampering through plain SQL detected and
//! pinpointed, damaged export files reported by line, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use connections_e2e::{binary, Server};
use connections_testkit::drop_database;
use serde_json::{json, Value};

struct Audit {
    database_url: String,
    dir: PathBuf,
}

impl Audit {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("audit")
            .args(args)
            .env("CONNECTIONS_DATABASE_URL", &self.database_url)
            .env("CONNECTIONS_LOG", "error")
            .output()
            .expect("run connections audit")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(output.status.success(), "audit {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Runs and expects a clean refusal (exit 1, not a panic); returns stderr.
    fn refused(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "audit {args:?} should refuse cleanly: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connections-audit-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

struct Api {
    http: reqwest::Client,
    server_base: String,
}

impl Api {
    async fn call(&self, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.server_base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap_or(Value::Null)
    }
}

/// A history with every kind of event: alice's two github connections, a
/// default bound on first resolution, hand-outs, a reassignment, a
/// revocation; bob's own connection. Returns (c1, c2, the instant between).
async fn make_history(server: &Server) -> (String, String, String) {
    let api = Api { http: reqwest::Client::new(), server_base: server.base.clone() };
    let alice = server.token("alice");
    let bob = server.token("bob");
    let create = |token: String, body: Value| {
        let api = &api;
        async move { api.call(&token, reqwest::Method::POST, "/v1/connections", Some(body)).await }
    };
    let c1 = create(
        alice.clone(),
        json!({"service": "github", "name": "Work", "agent_id": "agent-1",
               "credential": {"kind": "api_key", "key": "audit-canary-1"}}),
    )
    .await["connection_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let c2 = create(
        alice.clone(),
        json!({"service": "github", "name": "Personal", "credential": {"kind": "api_key", "key": "audit-canary-2"}}),
    )
    .await["connection_id"]
        .as_str()
        .expect("id")
        .to_owned();
    create(
        bob.clone(),
        json!({"service": "slack", "name": "Bob's", "credential": {"kind": "api_key", "key": "bob-key"}}),
    )
    .await;
    api.call(&alice, reqwest::Method::PUT, "/v1/services/github/default", Some(json!({"connection_id": c2}))).await;
    for agent in ["agent-1", "agent-2"] {
        let token = server.agent_token(agent, "alice");
        api.call(&token, reqwest::Method::POST, "/v1/resolve", Some(json!({"service": "github"}))).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let between = chrono_now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    api.call(
        &alice,
        reqwest::Method::POST,
        &format!("/v1/connections/{c2}/agents"),
        Some(json!({"agent_id": "agent-1"})),
    )
    .await;
    api.call(&alice, reqwest::Method::DELETE, &format!("/v1/connections/{c2}"), None).await;
    (c1, c2, between)
}

fn chrono_now() -> String {
    let output = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"]).output().expect("date");
    String::from_utf8(output.stdout).expect("UTF-8").trim().to_owned()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_answers_from_the_log_and_from_an_export_alone() {
    let mut server = Server::start(&[]);
    let (c1, c2, between) = make_history(&server).await;
    let audit = Audit { database_url: server.database_url.clone(), dir: scratch_dir() };

    let verified = audit.ok(&["verify"]);
    assert!(verified.contains("every chain intact"), "{verified}");

    // As of the instant between: c2 is the default, agent-1 uses c1, agent-2
    // got the default on its first resolution.
    let then = json_of(&audit.ok(&["as-of", &between, "--owner", "alice", "--json"]));
    let github = &then["services"][0];
    assert_eq!(github["service"], "github");
    assert_eq!(github["default"], json!(c2));
    let connection = |state: &Value, id: &str| {
        state["services"][0]["connections"]
            .as_array()
            .expect("list")
            .iter()
            .find(|c| c["connection_id"] == json!(id))
            .cloned()
            .expect("listed")
    };
    assert_eq!(connection(&then, &c1)["agents"], json!(["agent-1"]));
    assert_eq!(connection(&then, &c2)["agents"], json!(["agent-2"]));
    assert_eq!(connection(&then, &c2)["status"], "active");
    let now = json_of(&audit.ok(&["as-of", &chrono_now(), "--owner", "alice", "--json"]));
    assert_eq!(now["services"][0]["default"], Value::Null);
    assert_eq!(connection(&now, &c2)["status"], "revoked");
    assert_eq!(connection(&now, &c2)["agents"], json!([]));
    let before = json_of(&audit.ok(&["as-of", "2000-01-01T00:00:00Z", "--owner", "alice", "--json"]));
    assert_eq!(before["services"], json!([]));

    // Who could use c2: agent-2 (bound by default) and agent-1 (assigned),
    // both until the revocation; the one hand-out was agent-2's, while bound.
    let usage = json_of(&audit.ok(&["who-could-use", "--connection", &c2, "--json"]));
    let bindings = usage["bindings"].as_array().expect("bindings");
    assert_eq!(bindings.len(), 2, "{usage}");
    assert_eq!(bindings[0]["agent_id"], "agent-1");
    assert_eq!(bindings[0]["source"], "assigned");
    assert_eq!(bindings[1]["agent_id"], "agent-2");
    assert_eq!(bindings[1]["source"], "default");
    assert!(bindings.iter().all(|b| b["ended_by"] == "revoked"), "{usage}");
    let handouts = usage["handouts"].as_array().expect("hand-outs");
    assert_eq!(handouts.len(), 1, "{usage}");
    assert_eq!(handouts[0]["agent_id"], "agent-2");
    assert_eq!(handouts[0]["while_bound"], true);
    assert!(usage["revoked_at"].is_string());
    let outside = json_of(&audit.ok(&["who-could-use", "--connection", &c2, "--to", "2000-01-01T00:00:00Z", "--json"]));
    assert_eq!(outside["bindings"], json!([]));
    assert_eq!(outside["handouts"], json!([]));

    // The whole audit again from an export, with no database at all.
    let full = audit.path("full.jsonl");
    audit.ok(&["export", "--output", &full]);
    let exported = std::fs::read_to_string(&full).expect("export");
    assert!(!exported.contains("audit-canary"), "no secret in an export");
    export_matches_its_schema(&exported);
    assert!(exported.lines().last().expect("lines").starts_with(r#"{"kind":"checkpoint""#));
    let offline = Audit { database_url: "postgres://nobody@127.0.0.1:1/none".into(), dir: audit.dir.clone() };
    assert!(offline.ok(&["verify", "--file", &full]).contains("every chain intact"));
    for args in [
        vec!["as-of", between.as_str(), "--owner", "alice", "--json"],
        vec!["who-could-use", "--connection", c2.as_str(), "--json"],
        vec!["history", "--connection", c2.as_str(), "--json"],
        vec!["history", "--owner", "alice", "--json"],
    ] {
        let live = audit.ok(&args);
        let mut from_file = args.clone();
        from_file.extend(["--file", full.as_str()]);
        assert_eq!(offline.ok(&from_file), live, "{args:?} from the file differs from the log");
    }
    // The revoked connection's key is destroyed, its history is whole.
    let history = offline.ok(&["history", "--connection", &c2, "--file", &full, "--json"]);
    let types: Vec<String> =
        history.lines().map(|l| json_of(l)["event_type"].as_str().expect("type").to_owned()).collect();
    assert_eq!(types.first().map(String::as_str), Some("connection_created"));
    assert!(types.contains(&"connection_revoked".to_owned()), "{types:?}");

    // An owner's export verifies on its own and holds nobody else's records.
    let alice_only = audit.path("alice.jsonl");
    audit.ok(&["export", "--owner", "alice", "--output", &alice_only]);
    let text = std::fs::read_to_string(&alice_only).expect("export");
    assert!(
        !text.contains("owner-service/bob/") && !text.contains("Bob's"),
        "bob's records leaked into alice's export"
    );
    assert!(offline.ok(&["verify", "--file", &alice_only]).contains("every chain intact"));

    // An export from the last checkpoint's cursor holds only what followed,
    // anchored on the chains' previous hashes.
    let checkpoint = json_of(exported.lines().last().expect("checkpoint"));
    let cursor = checkpoint["cursor"].as_str().expect("cursor").to_owned();
    let api = Api { http: reqwest::Client::new(), server_base: server.base.clone() };
    api.call(&server.token("alice"), reqwest::Method::DELETE, &format!("/v1/connections/{c1}"), None).await;
    let later = audit.path("later.jsonl");
    audit.ok(&["export", "--from", &cursor, "--output", &later]);
    let later_text = std::fs::read_to_string(&later).expect("export");
    let events = later_text.lines().filter(|l| l.starts_with(r#"{"kind":"event""#)).count();
    assert_eq!(
        events, 1,
        "revoking c1 (no longer bound: agent-1 moved to c2) appends only connection_revoked:\n{later_text}"
    );
    assert!(offline.ok(&["verify", "--file", &later]).contains("every chain intact"));
    // The live log still passes through every head of the first export.
    let held = audit.ok(&["verify", "--checkpoint", &full]);
    assert!(held.contains("heads passed unchanged"), "{held}");

    // Bad input: clear messages, never a panic; unknown ids answer empty.
    assert!(audit.refused(&["as-of", "yesterday", "--owner", "alice"]).contains("RFC 3339"));
    assert!(audit
        .refused(&["who-could-use", "--connection", &c2, "--from", "2026-13-01T00:00:00Z"])
        .contains("--from"));
    assert!(audit
        .refused(&[
            "who-could-use",
            "--connection",
            &c2,
            "--from",
            "2026-02-01T00:00:00Z",
            "--to",
            "2026-01-01T00:00:00Z"
        ])
        .contains("after"));
    assert!(audit.refused(&["export", "--from", "12"]).contains("TRANSACTION:POSITION"));
    assert!(audit.refused(&["as-of", &between, "--owner", "not valid"]).contains("--owner"));
    let unknown = uuid::Uuid::now_v7().to_string();
    let nobody = json_of(&audit.ok(&["who-could-use", "--connection", &unknown, "--json"]));
    assert_eq!((nobody["bindings"].clone(), nobody["handouts"].clone()), (json!([]), json!([])));
    assert!(audit.ok(&["history", "--connection", &unknown]).contains("(no events)"));
    assert!(audit.ok(&["as-of", &between, "--owner", "nobody"]).contains("(no connections)"));
    assert!(audit.refused(&["verify", "--file", &audit.path("missing.jsonl")]).contains("missing.jsonl"));

    server.stop();
    let _ = std::fs::remove_dir_all(&audit.dir);
}

/// Every line of an export validates against `schemas/audit/export.v1.json`,
/// every event's data against its event schema, and the kinds come in order.
fn export_matches_its_schema(exported: &str) {
    let root = connections_e2e::workspace_root();
    let load = |path: PathBuf| {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    };
    let lines = load(root.join("schemas/audit/export.v1.json"));
    let mut kinds = Vec::new();
    for (n, line) in exported.lines().enumerate() {
        let value = json_of(line);
        let errors: Vec<String> = lines.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "line {}: {errors:?}\n{line}", n + 1);
        let kind = value["kind"].as_str().expect("kind").to_owned();
        assert!(line.starts_with(&format!("{{\"kind\":\"{kind}\",")), "line {} starts with its kind", n + 1);
        if kind == "event" {
            let schema = load(root.join(format!(
                "schemas/events/{}.v{}.json",
                value["event_type"].as_str().expect("type"),
                value["schema_version"]
            )));
            assert!(schema.is_valid(&value["data"]), "line {}: data breaks its event schema", n + 1);
        }
        if kinds.last() != Some(&kind) {
            kinds.push(kind);
        }
    }
    assert_eq!(kinds, ["event", "access", "checkpoint"], "events, then access records, then the checkpoint");
}

/// One copy of the database per tampering, made from a template.
fn copy_database(source: &str, name: &str) -> String {
    let admin = connections_testkit::server_url();
    let status = Command::new("psql")
        .args([&format!("{admin}/postgres"), "-qc", &format!("CREATE DATABASE {name} TEMPLATE {source}")])
        .status()
        .expect("psql");
    assert!(status.success(), "copy {source} to {name}");
    format!("{}/{name}", admin.trim_end_matches('/'))
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql").args([url, "-qAtc", sql]).output().expect("psql");
    assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8").trim().to_owned()
}

/// Tampers with a copy of the log through plain SQL (triggers disabled, as a
/// superuser could) and returns what `audit verify` says.
fn tampered(source_name: &str, dir: &Path, label: &str, sql: &str, checkpoint: Option<&str>) -> String {
    let name = format!("{source_name}_{label}");
    let url = copy_database(source_name, &name);
    psql(&url, &format!("BEGIN; ALTER TABLE events DISABLE TRIGGER USER; ALTER TABLE access_log DISABLE TRIGGER USER; {sql}; COMMIT"));
    let audit = Audit { database_url: url, dir: dir.to_path_buf() };
    let mut args = vec!["verify"];
    if let Some(checkpoint) = checkpoint {
        args.extend(["--checkpoint", checkpoint]);
    }
    let message = audit.refused(&args);
    drop_database(&name);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_log_through_sql_is_detected_and_pinpointed() {
    let mut server = Server::start(&[]);
    make_history(&server).await;
    let audit = Audit { database_url: server.database_url.clone(), dir: scratch_dir() };
    let checkpoint = audit.path("checkpoint.json");
    std::fs::write(&checkpoint, audit.ok(&["checkpoint"])).expect("keep the checkpoint");
    server.stop();
    let source = server.database_url.rsplit('/').next().expect("name").to_owned();
    let url = &server.database_url;
    // alice's github stream, in version order.
    let stream = psql(url, "SELECT string_agg(position::text, ',' ORDER BY stream_version) FROM events WHERE stream_id = 'owner-service/alice/github'");
    let positions: Vec<&str> = stream.split(',').collect();
    assert!(positions.len() >= 8, "{positions:?}");
    let (second, third) = (positions[1], positions[2]);

    let edited = tampered(
        &source,
        &audit.dir,
        "edit",
        &format!("UPDATE events SET data = jsonb_set(data, '{{name}}', '\"Evil\"') WHERE position = {}", positions[0]),
        None,
    );
    assert!(edited.contains(&format!("event position {}", positions[0])) && edited.contains("edited"), "{edited}");

    let deleted =
        tampered(&source, &audit.dir, "delete", &format!("DELETE FROM events WHERE position = {second}"), None);
    assert!(deleted.contains(&format!("event position {third}")) && deleted.contains("deleted"), "{deleted}");

    let swapped = tampered(&source, &audit.dir, "swap", &format!(
        "UPDATE events SET stream_version = stream_version + 1000 WHERE position IN ({second}, {third}); \
         UPDATE events SET stream_version = CASE position WHEN {second} THEN 3 ELSE 2 END WHERE position IN ({second}, {third})"), None);
    assert!(
        swapped.contains("tampering detected") && swapped.contains(&format!("event position {second}")),
        "{swapped}"
    );

    let inserted = tampered(&source, &audit.dir, "insert", &format!(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata, previous_hash, hash) \
         SELECT gen_random_uuid(), stream_id, {n}, 'agent_unassigned', 1, data, metadata, hash, hash FROM events WHERE position = {last}",
        n = positions.len() + 1, last = positions[positions.len() - 1]), None);
    assert!(
        inserted.contains("edited") && inserted.contains(&format!("version {}", positions.len() + 1)),
        "{inserted}"
    );

    let first_gone =
        tampered(&source, &audit.dir, "first", &format!("DELETE FROM events WHERE position = {}", positions[0]), None);
    assert!(first_gone.contains("starts at version 2"), "{first_gone}");

    // The chain alone cannot see a stream's last events deleted; a kept
    // checkpoint can.
    let last = positions[positions.len() - 1];
    let tail = tampered(
        &source,
        &audit.dir,
        "tail",
        &format!("DELETE FROM events WHERE position = {last}"),
        Some(&checkpoint),
    );
    assert!(tail.contains("owner-service/alice/github") && tail.contains("deleted"), "{tail}");

    let access = psql(url, "SELECT min(access_id) FROM access_log");
    let handout = tampered(
        &source,
        &audit.dir,
        "access",
        &format!("UPDATE access_log SET agent_id = 'agent-9' WHERE access_id = {access}"),
        None,
    );
    assert!(handout.contains(&format!("access record {access}")) && handout.contains("edited"), "{handout}");

    // And the untouched log verifies clean, against the checkpoint too.
    assert!(audit.ok(&["verify", "--checkpoint", &checkpoint]).contains("every chain intact"));
    let _ = std::fs::remove_dir_all(&audit.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_export_file_is_reported_with_its_line_never_a_panic() {
    let mut server = Server::start(&[]);
    make_history(&server).await;
    let audit = Audit { database_url: server.database_url.clone(), dir: scratch_dir() };
    let full = audit.path("full.jsonl");
    audit.ok(&["export", "--output", &full]);
    server.stop();
    let text = std::fs::read_to_string(&full).expect("export");
    let lines: Vec<&str> = text.lines().collect();
    let write = |name: &str, content: String| {
        let path = audit.path(name);
        std::fs::write(&path, content).expect("write");
        path
    };
    let joined = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let check = |name: &str, content: String, expected: &[&str]| {
        let path = write(name, content);
        for command in [
            vec!["verify", "--file", path.as_str()],
            vec!["as-of", "2030-01-01T00:00:00Z", "--owner", "alice", "--file", path.as_str()],
        ] {
            let message = audit.refused(&command);
            for part in expected {
                assert!(message.contains(part), "{name} / {command:?}: expected {part:?} in {message}");
            }
        }
    };

    let mut edited = lines.clone();
    let changed = lines[2].replace("\"actor\":\"alice\"", "\"actor\":\"mallory\"");
    assert_ne!(changed, lines[2], "line 3 names its actor");
    edited[2] = &changed;
    check("edited.jsonl", joined(&edited), &["line 3", "edited"]);

    let mut without = lines.clone();
    without.remove(2);
    check("deleted.jsonl", joined(&without), &["tampering detected", "deleted"]);

    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    check("swapped.jsonl", joined(&swapped), &["tampering detected at line 2"]);

    let mut garbage = lines.clone();
    garbage[4] = "{not json";
    check("garbage.jsonl", joined(&garbage), &["line 5", "not a valid audit record"]);

    check("no-checkpoint.jsonl", joined(&lines[..lines.len() - 1]), &["truncated", "closing checkpoint"]);
    check("cut.jsonl", text[..text.len() - 40].to_owned(), &["truncated"]);
    let last_event = lines.iter().rposition(|l| l.starts_with(r#"{"kind":"access""#)).expect("an access line");
    let mut fewer = lines.clone();
    fewer.remove(last_event);
    check("fewer.jsonl", joined(&fewer), &["removed"]);
    check("empty.jsonl", String::new(), &["truncated"]);
    check("binary.jsonl", "\u{0}\u{1}\n".into(), &["line 1"]);
    let _ = std::fs::remove_dir_all(&audit.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_periodic_checkpoints_that_an_auditor_can_export_and_check_against() {
    let mut server = Server::start(&[("CONNECTIONS_AUDIT_CHECKPOINT_SECS", "1")]);
    make_history(&server).await;
    let audit = Audit { database_url: server.database_url.clone(), dir: scratch_dir() };
    // Wait (bounded) for a periodic checkpoint that covers the history.
    let started = std::time::Instant::now();
    let covering = loop {
        let listed = audit.ok(&["checkpoints"]);
        if let Some(line) = listed.lines().rev().find(|l| json_of(l)["events"].as_u64() >= Some(10)) {
            break line.to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no periodic checkpoint covers the history:\n{listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let checkpoint = json_of(&covering);
    assert_eq!(checkpoint["kind"], "checkpoint");
    assert!(
        checkpoint["heads"].as_array().is_some_and(|h| h.len() == 2),
        "alice's github and bob's slack: {checkpoint}"
    );
    assert!(covering.starts_with(r#"{"kind":"checkpoint","#), "{covering}");
    let kept = audit.path("kept.json");
    std::fs::write(&kept, format!("{covering}\n")).expect("keep");
    assert!(audit.ok(&["verify", "--checkpoint", &kept]).contains("heads passed unchanged"));
    let future = audit.ok(&["checkpoints", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(future, "", "nothing was taken in the future");
    assert!(audit.refused(&["checkpoints", "--since", "soon"]).contains("--since"));
    server.stop();
    let _ = std::fs::remove_dir_all(&audit.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_one_stream_keep_its_chain_and_the_replay_right() {
    let mut server = Server::start(&[]);
    let api = Api { http: reqwest::Client::new(), server_base: server.base.clone() };
    let alice = server.token("alice");
    let create = |n: usize| {
        let (api, alice) = (&api, alice.clone());
        async move {
            let body =
                json!({"service": "github", "name": format!("c{n}"), "credential": {"kind": "api_key", "key": "k"}});
            api.call(&alice, reqwest::Method::POST, "/v1/connections", Some(body)).await["connection_id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let default = create(0).await;
    api.call(&alice, reqwest::Method::PUT, "/v1/services/github/default", Some(json!({"connection_id": default})))
        .await;
    // Six agents bind the default on their first resolution while the owner
    // creates four more connections: all append to alice's github stream.
    let agents: Vec<String> = (1..=6).map(|n| format!("agent-{n}")).collect();
    let resolves = agents.iter().map(|agent| {
        let (api, token) = (&api, server.agent_token(agent, "alice"));
        async move { api.call(&token, reqwest::Method::POST, "/v1/resolve", Some(json!({"service": "github"}))).await }
    });
    let creates = (1..=4).map(create);
    futures_util::future::join(futures_util::future::join_all(resolves), futures_util::future::join_all(creates)).await;

    let audit = Audit { database_url: server.database_url.clone(), dir: scratch_dir() };
    assert!(audit.ok(&["verify"]).contains("every chain intact"));
    let now = json_of(&audit.ok(&["as-of", &chrono_now(), "--owner", "alice", "--json"]));
    let connections = now["services"][0]["connections"].as_array().expect("connections").clone();
    assert_eq!(connections.len(), 5);
    let bound = connections.iter().find(|c| c["connection_id"] == json!(default)).expect("default");
    assert_eq!(bound["agents"], json!(agents));
    let usage = json_of(&audit.ok(&["who-could-use", "--connection", &default, "--json"]));
    assert_eq!(usage["bindings"].as_array().map(Vec::len), Some(6));
    let handouts = usage["handouts"].as_array().expect("hand-outs");
    assert_eq!(handouts.len(), 6);
    assert!(handouts.iter().all(|h| h["while_bound"] == true), "{usage}");
    server.stop();
    let _ = std::fs::remove_dir_all(&audit.dir);
}

/// The kept checkpoint says what must be covered, not the file: a file that
/// drops a stream, or cuts one back below the checkpoint's head, fails even
/// when its closing line claims a narrower scope with a digest recomputed
/// to match (here made by `audit export --owner` over a log tampered with
/// through SQL, so every line and the closing digest are consistent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_checkpoint_judges_a_file_whatever_scope_it_claims() {
    let mut server = Server::start(&[]);
    let (c1, _, _) = make_history(&server).await;
    let audit = Audit { database_url: server.database_url.clone(), dir: scratch_dir() };
    let kept = audit.path("kept.json");
    std::fs::write(&kept, audit.ok(&["checkpoint"])).expect("keep the checkpoint");
    let full = audit.path("full.jsonl");
    audit.ok(&["export", "--output", &full]);
    // A later export continuing from the kept checkpoint's cursor is fine.
    let cursor = json_of(&std::fs::read_to_string(&kept).expect("kept"))["cursor"].as_str().expect("cursor").to_owned();
    let api = Api { http: reqwest::Client::new(), server_base: server.base.clone() };
    api.call(&server.token("alice"), reqwest::Method::DELETE, &format!("/v1/connections/{c1}"), None).await;
    let later = audit.path("later.jsonl");
    audit.ok(&["export", "--from", &cursor, "--output", &later]);
    server.stop();
    let offline = Audit { database_url: "postgres://nobody@127.0.0.1:1/none".into(), dir: audit.dir.clone() };
    assert!(offline.ok(&["verify", "--file", &full, "--checkpoint", &kept]).contains("every chain intact"));
    assert!(offline.ok(&["verify", "--file", &later, "--checkpoint", &kept]).contains("every chain intact"));

    // An honest export of alice alone does not cover what the checkpoint covers.
    let alice = audit.path("alice.jsonl");
    audit.ok(&["export", "--owner", "alice", "--output", &alice]);
    assert!(offline.ok(&["verify", "--file", &alice]).contains("every chain intact"), "alone, it verifies");
    let refused = offline.refused(&["verify", "--file", &alice, "--checkpoint", &kept]);
    assert!(refused.contains("owner alice only") && refused.contains("every owner"), "{refused}");

    // A forged file: bob's stream dropped and alice's cut back by one event,
    // its closing line (owner alice) recomputed to match.
    let source = server.database_url.rsplit('/').next().expect("name").to_owned();
    let name = format!("{source}_forged");
    let url = copy_database(&source, &name);
    psql(
        &url,
        "BEGIN; ALTER TABLE events DISABLE TRIGGER USER; ALTER TABLE access_log DISABLE TRIGGER USER; \
         DELETE FROM events WHERE stream_id LIKE 'owner-service/bob/%'; \
         DELETE FROM events WHERE position = (SELECT max(position) FROM events WHERE stream_id = 'owner-service/alice/github'); \
         COMMIT",
    );
    let forger = Audit { database_url: url, dir: audit.dir.clone() };
    let forged = audit.path("forged.jsonl");
    forger.ok(&["export", "--owner", "alice", "--output", &forged]);
    drop_database(&name);
    assert!(offline.ok(&["verify", "--file", &forged]).contains("every chain intact"), "consistent on its own");
    let refused = offline.refused(&["verify", "--file", &forged, "--checkpoint", &kept]);
    assert!(refused.contains("earlier checkpoint"), "{refused}");
    // Claiming every owner instead does not help: bob's stream is missing.
    let all = audit.path("forged-all.jsonl");
    let forger = Audit { database_url: copy_database(&source, &format!("{source}_forged2")), dir: audit.dir.clone() };
    psql(
        &forger.database_url,
        "BEGIN; ALTER TABLE events DISABLE TRIGGER USER; ALTER TABLE access_log DISABLE TRIGGER USER; \
         DELETE FROM access_log WHERE owner_id = 'bob'; \
         DELETE FROM events WHERE stream_id LIKE 'owner-service/bob/%'; COMMIT",
    );
    forger.ok(&["export", "--output", &all]);
    drop_database(&format!("{source}_forged2"));
    let refused = offline.refused(&["verify", "--file", &all, "--checkpoint", &kept]);
    assert!(refused.contains("owner-service/bob/") && refused.contains("missing"), "{refused}");
    let _ = std::fs::remove_dir_all(&audit.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_is_linked_both_ways_in_history_and_who_could_use() {
    let mut server = Server::start(&[]);
    let api = Api { http: reqwest::Client::new(), server_base: server.base.clone() };
    let alice = server.token("alice");
    let old = api
        .call(
            &alice,
            reqwest::Method::POST,
            "/v1/connections",
            Some(json!({"service": "github", "name": "Work", "agent_id": "agent-1",
                        "credential": {"kind": "api_key", "key": "replace-canary-old"}})),
        )
        .await["connection_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let agent = server.agent_token("agent-1", "alice");
    api.call(&agent, reqwest::Method::POST, "/v1/resolve", Some(json!({"service": "github"}))).await;
    let replaced = api
        .call(
            &alice,
            reqwest::Method::POST,
            &format!("/v1/connections/{old}/replace"),
            Some(json!({"credential": {"kind": "api_key", "key": "replace-canary-new"}})),
        )
        .await;
    let new = replaced["connection_id"].as_str().expect("id").to_owned();
    api.call(&agent, reqwest::Method::POST, "/v1/resolve", Some(json!({"service": "github"}))).await;
    let audit = Audit { database_url: server.database_url.clone(), dir: scratch_dir() };

    let before = json_of(&audit.ok(&["who-could-use", "--connection", &old, "--json"]));
    assert_eq!(before["replaced_by"], json!(new), "{before}");
    assert_eq!(before["bindings"][0]["agent_id"], "agent-1");
    assert_eq!(before["bindings"][0]["ended_by"], "replaced");
    assert_eq!(before["handouts"].as_array().expect("hand-outs").len(), 1);
    let after = json_of(&audit.ok(&["who-could-use", "--connection", &new, "--json"]));
    assert_eq!(after["replaces"], json!(old), "{after}");
    assert_eq!(after["bindings"][0]["agent_id"], "agent-1");
    assert_eq!(after["bindings"][0]["source"], "created", "the agent keeps how it came to use the connection");
    assert_eq!(after["bindings"][0]["from"], before["bindings"][0]["until"], "no gap between the two bindings");
    assert_eq!(after["handouts"].as_array().expect("hand-outs").len(), 1);
    assert!(audit.ok(&["who-could-use", "--connection", &old]).contains(&format!("replaced by {new}")));
    assert!(audit.ok(&["who-could-use", "--connection", &new]).contains(&format!("replaces {old}")));

    let history = audit.ok(&["history", "--connection", &old, "--json"]);
    let revoked = history.lines().map(json_of).find(|e| e["event_type"] == "connection_revoked").expect("revoked");
    assert_eq!(revoked["data"]["replaced_by"], json!(new));
    let history = audit.ok(&["history", "--connection", &new, "--json"]);
    let created = history.lines().map(json_of).find(|e| e["event_type"] == "connection_created").expect("created");
    assert_eq!(created["data"]["replaces"], json!(old));

    let full = audit.path("full.jsonl");
    audit.ok(&["export", "--output", &full]);
    let exported = std::fs::read_to_string(&full).expect("export");
    assert!(!exported.contains("replace-canary"), "no secret in an export");
    export_matches_its_schema(&exported);
    assert!(audit.ok(&["verify", "--file", &full]).contains("every chain intact"));

    server.stop();
    let _ = std::fs::remove_dir_all(&audit.dir);
}
