//! Master key rotation on the real binary: `connections keys rewrap` killed
//! with SIGKILL in the middle, run again to completion, then the old key
//! removed from the keyring and every sampled connection still resolves
//! through a restarted server.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use connections_e2e::{binary, master_key, Server};
use serde_json::json;

const CONNECTIONS: usize = 600;

fn keys(database_url: &str, keyring: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("keys")
        .args(args)
        .env("CONNECTIONS_DATABASE_URL", database_url)
        .env("CONNECTIONS_MASTER_KEYS_FILE", keyring)
        .env_remove("CONNECTIONS_MASTER_KEY")
        .env_remove("CONNECTIONS_MASTER_KEY_FILE");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrap_killed_midway_finishes_when_run_again_and_the_old_key_can_go() {
    let mut server = Server::start(&[]);
    let token = server.token("alice");
    let http = reqwest::Client::new();
    use futures_util::StreamExt;
    let created: Vec<_> = futures_util::stream::iter(0..CONNECTIONS).map(|n| {
        let (http, base, token) = (&http, &server.base, &token);
        async move {
            let body = json!({"service": format!("svc-{}", n % 50), "name": format!("c{n}"), "agent_id": format!("a{n}"),
                "credential": {"kind": "api_key", "key": format!("k-{n}")}});
            http.post(format!("{base}/v1/connections")).bearer_auth(token).json(&body).send().await.map(|r| r.status())
        }
    })
    .buffer_unordered(16)
    .collect()
    .await;
    assert!(created.iter().all(|s| s.as_ref().is_ok_and(|s| s.as_u16() == 201)), "creating the connections");

    let dir = std::env::temp_dir().join(format!("keyring-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("k1.key"), master_key()).expect("k1");
    std::fs::write(
        dir.join("k2.key"),
        "KysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKw==",
    )
    .expect("k2");
    let ring = |with_k1: bool| {
        let mut keys = vec![json!({"id": "k2", "key_file": dir.join("k2.key")})];
        if with_k1 {
            keys.push(json!({"id": "k1", "key_file": dir.join("k1.key")}));
        }
        json!({"current": "k2", "keys": keys, "derivation_key_file": dir.join("k1.key")}).to_string()
    };
    let keyring = dir.join("keyring.json");
    std::fs::write(&keyring, ring(true)).expect("keyring");

    let (database, connection) =
        tokio_postgres::connect(&server.database_url, tokio_postgres::NoTls).await.expect("database");
    tokio::spawn(connection);
    let under = |id: &'static str| {
        let database = &database;
        async move {
            let row = database
                .query_one("SELECT count(*) FROM data_keys WHERE master_key_id = $1", &[&id])
                .await
                .expect("count");
            row.get::<_, i64>(0)
        }
    };
    assert_eq!(under("k1").await, CONNECTIONS as i64);

    // Killed (SIGKILL) once part of the keys moved.
    let mut first = keys(&server.database_url, &keyring, &["rewrap", "--batch", "50", "--concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start keys rewrap");
    let deadline = Instant::now() + Duration::from_secs(60);
    while under("k2").await < 100 {
        assert!(Instant::now() < deadline, "the rewrap made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    // A COMMIT the killed process had already sent still lands: count once
    // the counts (both from one snapshot) have stopped moving.
    let counts = || async {
        let row = database
            .query_one(
                "SELECT count(*) FILTER (WHERE master_key_id = 'k2'), count(*) FILTER (WHERE master_key_id = 'k1') \
                 FROM data_keys",
                &[],
            )
            .await
            .expect("count");
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    let mut last = counts().await;
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = counts().await;
        if now == last || Instant::now() > settle {
            break;
        }
        last = now;
    }
    let (moved, left) = last;
    assert!(moved > 0 && left > 0, "killed in the middle: {moved} moved, {left} left");
    assert_eq!(moved + left, CONNECTIONS as i64, "no key lost or doubled by the kill");

    let second = keys(&server.database_url, &keyring, &["rewrap"]).output().expect("run keys rewrap");
    let printed = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(second.status.success(), "{printed}{}", String::from_utf8_lossy(&second.stderr));
    assert!(printed.contains(&format!("rewrapped {left} data keys under k2")), "{printed}");
    assert!(printed.contains(&format!("k2: {CONNECTIONS} live data keys (current)")), "{printed}");
    assert!(printed.contains("k1: 0 live data keys"), "{printed}");
    let status = keys(&server.database_url, &keyring, &["status"]).output().expect("keys status");
    assert!(String::from_utf8_lossy(&status.stdout).contains(&format!("k2: {CONNECTIONS} live data keys (current)")));
    let events = database
        .query_one(
            "SELECT count(*), count(DISTINCT data->>'connection_id') FROM events WHERE event_type = 'data_key_rewrapped'",
            &[],
        )
        .await
        .expect("events");
    assert_eq!((events.get::<_, i64>(0), events.get::<_, i64>(1)), (CONNECTIONS as i64, CONNECTIONS as i64));

    // The old key removed: a server on the k2-only keyring resolves them.
    std::fs::write(&keyring, ring(false)).expect("keyring without k1");
    server.restart_with(&[("CONNECTIONS_MASTER_KEYS_FILE", keyring.to_str().expect("utf-8"))]);
    for n in (0..CONNECTIONS).step_by(37) {
        let resolved = http
            .post(format!("{}/v1/resolve", server.base))
            .bearer_auth(server.agent_token(&format!("a{n}"), "alice"))
            .json(&json!({"service": format!("svc-{}", n % 50)}))
            .send()
            .await
            .expect("resolve");
        assert_eq!(resolved.status(), 200, "connection {n}");
        let body: serde_json::Value = resolved.json().await.expect("JSON");
        assert_eq!(body["credential"]["key"], format!("k-{n}"));
    }
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
