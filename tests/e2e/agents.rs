//! Agent runtimes through the client crate, against the real binary, NATS
//! and Postgres: cached credentials are dropped on notices, and a client that
//! cannot hear notices hands nothing out from its cache.

use std::time::{Duration, Instant};

use connections_agent::{AgentClient, AgentConfig, InvalidationReason, NoticeKind, ReportError, ResolveError};
use connections_e2e::{NatsServer, NatsVersion, Server};
use serde_json::{json, Value};

struct Owner {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Owner {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.expect("JSON")
    }

    async fn create(&self, service: &str, agent: Option<&str>, key: &str) -> String {
        let mut body = json!({"service": service, "name": "n", "credential": {"kind": "api_key", "key": key}});
        if let Some(agent) = agent {
            body["agent_id"] = json!(agent);
        }
        self.call(reqwest::Method::POST, "/v1/connections", Some(body)).await["connection_id"]
            .as_str()
            .expect("id")
            .to_owned()
    }
}

fn config(server: &Server, agent: &str) -> AgentConfig {
    AgentConfig::new(server.base.clone(), server.agent_token(agent, "alice"))
}

/// A secured private nats-server and a server using it under its own prefix.
fn secured(version: NatsVersion) -> (NatsServer, Server) {
    let nats = NatsServer::start_secured(version);
    let (server, _) = nats.serve(&[]);
    (nats, server)
}

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_cached_clients_all_drop_a_revoked_credential() {
    let (_nats, server) = secured(NatsVersion::Debian29);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    let id = owner.create("github", None, "shared-key").await;
    owner.call(reqwest::Method::PUT, "/v1/services/github/default", Some(json!({"connection_id": id}))).await;
    let token = server.agent_token("agent-0", "alice");
    let mut clients = Vec::new();
    for n in 0..100 {
        let mut config = config(&server, &format!("agent-{n}"));
        if n == 0 {
            config.token = token.clone();
        }
        let client = AgentClient::connect(config).await.expect("connect");
        let credential = client.resolve("github").await.expect("resolve");
        assert_eq!(credential.connection_id, id);
        assert_eq!(credential.expose()["key"], "shared-key");
        assert!(format!("{credential:?}").contains("REDACTED"), "Debug must not show the secret");
        clients.push(client);
    }
    assert!(clients.iter().all(|c| c.cached("github").is_some()), "every client holds the credential");
    owner.call(reqwest::Method::DELETE, &format!("/v1/connections/{id}"), None).await;
    let took = eventually("every client dropping the credential", Duration::from_secs(5), || {
        clients.iter().all(|c| c.cached("github").is_none())
    })
    .await;
    println!("100 clients dropped the revoked credential {took:?} after the revoke returned");
    for client in clients.iter().take(3) {
        assert!(matches!(client.resolve("github").await, Err(ResolveError::AuthorizationRequired(_))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_rebinding_notices_make_the_next_resolve_fetch_anew() {
    let (_nats, server) = secured(NatsVersion::Current);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    let first = owner.create("github", Some("agent-1"), "v1-key").await;
    let client = AgentClient::connect(config(&server, "agent-1")).await.expect("connect");
    assert_eq!(client.resolve("github").await.expect("resolve").credential_version, 1);

    owner
        .call(
            reqwest::Method::PUT,
            &format!("/v1/connections/{first}/credential"),
            Some(json!({"credential": {"kind": "api_key", "key": "v2-key"}})),
        )
        .await;
    eventually("the rotation notice", Duration::from_secs(5), || client.cached("github").is_none()).await;
    let rotated = client.resolve("github").await.expect("resolve");
    assert_eq!((rotated.credential_version, rotated.expose()["key"].clone()), (2, json!("v2-key")));

    let second = owner.create("github", None, "other-key").await;
    owner
        .call(reqwest::Method::POST, &format!("/v1/connections/{second}/agents"), Some(json!({"agent_id": "agent-1"})))
        .await;
    eventually("the rebinding notice", Duration::from_secs(5), || client.cached("github").is_none()).await;
    assert_eq!(client.resolve("github").await.expect("resolve").connection_id, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_reported_by_one_runtime_reaches_the_others_and_a_replace_moves_them_all() {
    let (_nats, server) = secured(NatsVersion::Current);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    let id = owner.create("github", Some("agent-1"), "dead-key").await;
    owner
        .call(reqwest::Method::POST, &format!("/v1/connections/{id}/agents"), Some(json!({"agent_id": "agent-2"})))
        .await;
    let reporter = AgentClient::connect(config(&server, "agent-1")).await.expect("connect");
    let other = AgentClient::connect(config(&server, "agent-2")).await.expect("connect");
    let mut heard = other.invalidations();
    let credential = reporter.resolve("github").await.expect("resolve");
    other.resolve("github").await.expect("resolve");
    assert!(!credential.needs_attention);

    let outcome = reporter.report_rejected(&credential, Some(401), Some("invalid_token")).await.expect("report");
    assert!(outcome.recorded && outcome.needs_attention, "{outcome:?}");
    assert!(reporter.cached("github").is_none(), "the reporter stops using it at once");
    let invalidation =
        tokio::time::timeout(Duration::from_secs(5), heard.recv()).await.expect("in time").expect("open");
    assert_eq!(invalidation.reason, InvalidationReason::Notice(NoticeKind::Rejected));
    assert_eq!(invalidation.connection_id, id);
    let again = other.resolve("github").await.expect("resolving keeps working");
    assert!(again.needs_attention, "the answer says the provider rejected it");
    let repeat = reporter.report_rejected(&credential, Some(401), None).await.expect("report");
    assert!(!repeat.recorded);
    let leaking = reporter.report_rejected(&credential, None, Some("sent dead-key, got 401")).await;
    assert!(matches!(leaking, Err(ReportError::Invalid(ref field)) if field == "detail"), "{leaking:?}");
    let stranger = AgentClient::connect(config(&server, "agent-3")).await.expect("connect");
    assert!(matches!(stranger.report_rejected(&credential, None, None).await, Err(ReportError::NotFound)));

    // The owner replaces it: both runtimes drop it and resolve the new one.
    let replaced = owner
        .call(
            reqwest::Method::POST,
            &format!("/v1/connections/{id}/replace"),
            Some(json!({"credential": {"kind": "api_key", "key": "live-key"}})),
        )
        .await;
    let new = replaced["connection_id"].as_str().expect("id").to_owned();
    eventually("both runtimes dropping the old credential", Duration::from_secs(5), || {
        reporter.cached("github").is_none() && other.cached("github").is_none()
    })
    .await;
    for client in [&reporter, &other] {
        let fresh = client.resolve("github").await.expect("resolve");
        assert_eq!((fresh.connection_id.as_str(), fresh.expose()["key"].clone()), (new.as_str(), json!("live-key")));
        assert!(!fresh.needs_attention);
    }
    assert!(matches!(reporter.report_rejected(&credential, None, None).await, Err(ReportError::Revoked)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_from_nats_never_hands_out_a_revoked_credential() {
    let (mut nats, server) = secured(NatsVersion::Debian29);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    let id = owner.create("github", Some("agent-1"), "secret-key").await;
    let client = AgentClient::connect(config(&server, "agent-1")).await.expect("connect");
    client.resolve("github").await.expect("resolve");
    assert!(client.cached("github").is_some());

    nats.stop();
    // Within the heartbeat the client stops trusting its cache.
    eventually("the client failing closed", Duration::from_secs(5), || client.cached("github").is_none()).await;
    owner.call(reqwest::Method::DELETE, &format!("/v1/connections/{id}"), None).await;
    // While cut off it asks the server, which refuses.
    assert!(client.resolve("github").await.is_err(), "a revoked credential was handed out while cut off");
    nats.start_again();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(client.cached("github").is_none());
    assert!(client.resolve("github").await.is_err(), "a revoked credential was handed out after reconnecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_renewed_before_they_expire_without_emptying_the_cache() {
    let nats = NatsServer::start_secured(NatsVersion::Current);
    let (server, _) = nats.serve(&[("CONNECTIONS_NATS_RUNTIME_TTL_SECS", "10")]);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    let id = owner.create("github", Some("agent-1"), "key").await;
    let client = AgentClient::connect(config(&server, "agent-1")).await.expect("connect");
    client.resolve("github").await.expect("resolve");
    let first = client.credentials_expire_at().expect("credentials expire");
    // Past the first credentials' expiry: nats-server would have closed that
    // connection; the client moved to renewed credentials first.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        assert!(client.is_fresh(), "the client stopped trusting its cache at {:?}", started.elapsed());
        assert!(client.cached("github").is_some(), "the cache was emptied at {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed = client.credentials_expire_at().expect("credentials expire");
    assert!(renewed > first, "not renewed: {first} → {renewed}");
    owner.call(reqwest::Method::DELETE, &format!("/v1/connections/{id}"), None).await;
    eventually("the revocation on the renewed connection", Duration::from_secs(5), || {
        client.cached("github").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_notices_empty_the_cache_until_the_client_is_back_in_sync() {
    let nats = NatsServer::start_secured(NatsVersion::Debian29);
    let (server, prefix) = nats.serve(&[]);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    owner.create("github", Some("agent-1"), "key").await;
    let mut slow = config(&server, "agent-1");
    slow.subscription_capacity = 1;
    let client = AgentClient::connect(slow).await.expect("connect");
    client.resolve("github").await.expect("resolve");
    assert!(client.cached("github").is_some());
    // A burst of notices that would not drop anything by themselves (another
    // service, bound: true): more than a one-message buffer can take.
    let service = nats.service_client(&prefix).await;
    let notice = json!({"notice_version": 1, "kind": "binding_changed", "event_id": uuid::Uuid::now_v7(),
        "cursor": {"transaction_id": 1, "position": 1}, "owner": "alice", "service": "other",
        "connection_id": uuid::Uuid::now_v7(), "agent_id": "agent-1", "bound": true});
    let subject = format!("{prefix}.v2.notices.alice.agent.agent-1");
    for _ in 0..20_000 {
        service.publish(subject.clone(), notice.to_string().into()).await.expect("publish");
    }
    service.flush().await.expect("flush");
    eventually("the cache emptied after dropped notices", Duration::from_secs(5), || client.cached("github").is_none())
        .await;
    // Back in sync: it resolves and caches again.
    let started = Instant::now();
    loop {
        client.resolve("github").await.expect("resolve");
        if client.cached("github").is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the client never trusted its cache again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The example runtime as the README runs it: it names a missing setting,
/// and with the token alone (owner, agent, NATS and prefix come from the
/// server) it resolves and follows a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runtime_starts_as_the_readme_says() {
    use std::io::{BufRead, BufReader};
    let example = connections_e2e::example("runtime");
    let missing = std::process::Command::new(&example)
        .arg("github")
        .env_remove("CONNECTIONS_AGENT_TOKEN")
        .output()
        .expect("run the example");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("CONNECTIONS_AGENT_TOKEN is not set"));

    let (_nats, server) = secured(NatsVersion::Debian29);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    let id = owner.create("github", Some("agent-1"), "key").await;
    let mut child = std::process::Command::new(&example)
        .arg("github")
        .env("CONNECTIONS_URL", &server.base)
        .env("CONNECTIONS_AGENT_TOKEN", server.agent_token("agent-1", "alice"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(10)).expect("a line from the runtime in 10 s");
    assert_eq!(next(), "runtime for alice/agent-1: resolving github");
    assert!(next().starts_with(&format!("using connection {id} v1 (api_key, via assigned)")));
    owner.call(reqwest::Method::DELETE, &format!("/v1/connections/{id}"), None).await;
    assert_eq!(next(), "no connection for github: ask the user");
    let _ = child.kill();
    let _ = child.wait();
}

/// nats-server refuses a runtime's subscriptions beyond its credentials'
/// limit (1,024) with an `-ERR` and keeps the connection. A long-lived
/// runtime stops following the connections it has seen revoked, so it keeps
/// hearing revocations after more than 1,024 of them; and once NATS refuses
/// one of its subscriptions it caches nothing, instead of caching a
/// credential whose revocation it would never hear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_client_follows_within_its_limit_and_caches_nothing_it_cannot_hear() {
    use futures_util::StreamExt;
    let (_nats, server) = secured(NatsVersion::Debian29);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    let client = AgentClient::connect(config(&server, "agent-1")).await.expect("connect");
    let (owner, client) = (&owner, &client);

    // More revoked connections than the limit, one service each, 8 at a time.
    futures_util::stream::iter(0..1100)
        .for_each_concurrent(8, |n| async move {
            let service = format!("revoked-{n}");
            let id = owner.create(&service, Some("agent-1"), "k").await;
            // An answer fetched while another service's notice arrived is
            // not cached (the client cannot tell what a notice touches before
            // its answer is in): resolve again, a bounded number of times.
            let mut cached = false;
            for _ in 0..10 {
                assert_eq!(client.resolve(&service).await.expect("resolve").connection_id, id);
                cached = client.cached(&service).is_some();
                if cached {
                    break;
                }
            }
            assert!(cached, "connection {n} is cached");
            owner.call(reqwest::Method::DELETE, &format!("/v1/connections/{id}"), None).await;
            eventually(&format!("connection {n} dropped"), Duration::from_secs(10), || {
                client.cached(&service).is_none()
            })
            .await;
        })
        .await;
    assert!(client.is_fresh(), "no subscription was refused");

    // Live connections past the limit: the subscription for the 1,023rd is
    // refused (the agent's own notices and its echo hold two), and the
    // cache turns off.
    futures_util::stream::iter(0..1030)
        .for_each_concurrent(8, |n| async move {
            let service = format!("live-{n}");
            let id = owner.create(&service, Some("agent-1"), "k").await;
            assert_eq!(client.resolve(&service).await.expect("resolve").connection_id, id);
        })
        .await;
    eventually("the cache turning off", Duration::from_secs(10), || !client.is_fresh()).await;
    assert!((0..1030).all(|n| client.cached(&format!("live-{n}")).is_none()), "nothing is served from the cache");
    let answer = client.resolve("live-1029").await.expect("a resolve still answers, from the server");
    assert_eq!(answer.expose()["key"], "k");
    assert!(client.cached("live-1029").is_none(), "and is not cached");
}

/// A loopback TCP proxy to `upstream` that holds every byte a client sends
/// for `delay` before passing it on (in order); answers pass at once. It
/// stops with the test's runtime.
async fn delaying_proxy(upstream: &str, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream.trim_start_matches("nats://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let (chunks, mut held) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                    if chunks.send((tokio::time::Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((due, chunk)) = held.recv().await {
                    tokio::time::sleep_until(due).await;
                    if server_write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    format!("nats://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_slow_to_reach_nats_is_in_force_before_anything_is_cached() {
    let (nats, server) = secured(NatsVersion::Debian29);
    let owner = Owner { http: reqwest::Client::new(), base: server.base.clone(), token: server.token("alice") };
    let id = owner.create("github", Some("agent-1"), "k").await;
    // What the runtime sends reaches nats-server 300 ms late (a busy server
    // or a slow link): a subscription written to the socket is not yet in
    // force.
    let mut config = config(&server, "agent-1");
    config.nats_url = Some(delaying_proxy(&nats.url, Duration::from_millis(300)).await);
    let client = AgentClient::connect(config).await.expect("connect");
    assert_eq!(client.resolve("github").await.expect("resolve").connection_id, id);
    assert!(client.cached("github").is_some());
    // Revoked the moment the answer is cached: the notice must find the
    // subscription in force.
    owner.call(reqwest::Method::DELETE, &format!("/v1/connections/{id}"), None).await;
    eventually("the revoked credential dropped", Duration::from_secs(5), || client.cached("github").is_none()).await;
}
