//! The whole path — HTTP command → log → relay → JetStream → projector →
//! read API — through a server killed with SIGKILL, a NATS restart and a
//! deleted stream: the read models converge to exactly what a rebuild from
//! the log gives, and the stream holds each event once, in log order.

use std::process::Command;
use std::time::{Duration, Instant};

use connections_e2e::{binary, read_model_snapshot, NatsServer, NatsVersion, Server};
use serde_json::{json, Value};

/// Three users issuing commands concurrently (one writer each).
struct Workload {
    client: reqwest::Client,
    tokens: Vec<(String, String)>,
    created: Vec<(usize, String, String)>,
    step: usize,
}

impl Workload {
    fn new(server: &Server) -> Self {
        let tokens = ["alice", "bob", "carol"].iter().map(|u| (u.to_string(), server.token(u))).collect();
        Self { client: reqwest::Client::new(), tokens, created: Vec::new(), step: 0 }
    }

    /// `count` commands per user, the users concurrently; returns the highest position.
    async fn run(&mut self, base: &str, count: usize) -> i64 {
        let mut writers: Vec<Workload> = (0..3)
            .map(|user| Workload {
                client: self.client.clone(),
                tokens: self.tokens.clone(),
                created: self.created.iter().filter(|(u, _, _)| *u == user).cloned().collect(),
                step: self.step + user,
            })
            .collect();
        let positions = futures_util::future::join_all(writers.iter_mut().map(|w| w.run_one_user(base, count))).await;
        self.created = writers.into_iter().flat_map(|w| w.created).collect();
        self.step += 3 * count;
        positions.into_iter().max().unwrap_or(0)
    }

    /// `count` commands of a fixed mix for the user `step % 3`; every one must be accepted.
    async fn run_one_user(&mut self, base: &str, count: usize) -> i64 {
        let mut position = 0;
        for _ in 0..count {
            self.step += 3;
            let user = self.step % 3;
            let service = ["github", "slack"][self.step / 3 % 2];
            let token = &self.tokens[user].1;
            let mine: Vec<&(usize, String, String)> =
                self.created.iter().filter(|(u, s, _)| *u == user && s == service).collect();
            let request = match (self.step % 5, mine.get(self.step % mine.len().max(1))) {
                (0 | 1, _) | (_, None) => self.client.post(format!("{base}/v1/connections")).json(&json!({
                    "service": service, "name": format!("c{}", self.step), "agent_id": format!("agent-{}", self.step % 4),
                    "credential": {"kind": "api_key", "key": format!("k{}", self.step)}})),
                (2, Some((_, _, id))) => self
                    .client
                    .post(format!("{base}/v1/connections/{id}/agents"))
                    .json(&json!({"agent_id": format!("agent-{}", self.step % 4)})),
                (3, Some((_, _, id))) => {
                    self.client.put(format!("{base}/v1/services/{service}/default")).json(&json!({"connection_id": id}))
                }
                (_, Some((_, _, id))) => self.client.delete(format!("{base}/v1/connections/{id}")),
            };
            let response = request.bearer_auth(token).send().await.expect("command sent");
            let status = response.status();
            let body: Value = response.json().await.expect("JSON answer");
            assert!(status.is_success() || status == 409, "command failed: {status} {body}");
            if status == 201 {
                self.created.push((user, service.to_owned(), body["connection_id"].as_str().expect("id").to_owned()));
            }
            if let Some(p) = body["position"].as_i64() {
                position = position.max(p);
            }
        }
        position
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_converge_to_exactly_what_a_rebuild_gives_on_nats_2_9() {
    faults_converge_to_exactly_what_a_rebuild_gives(NatsVersion::Debian29).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_converge_to_exactly_what_a_rebuild_gives_on_current_nats() {
    faults_converge_to_exactly_what_a_rebuild_gives(NatsVersion::Current).await;
}

async fn faults_converge_to_exactly_what_a_rebuild_gives(version: NatsVersion) {
    // Secured as ops/run sets it up: the faults below happen with the
    // service's own NATS identity and permissions in force.
    let mut nats = NatsServer::start_secured(version);
    let (mut server, prefix) = nats.serve(&[]);
    let mut workload = Workload::new(&server);

    workload.run(&server.base, 30).await;
    server.kill_and_restart(); // relay and projector die mid-stream with the process
    workload.run(&server.base, 30).await;
    nats.restart();
    workload.run(&server.base, 30).await;
    let nats_client = nats.service_client(&prefix).await;
    let jetstream = async_nats::jetstream::new(nats_client);
    jetstream.delete_stream(format!("{prefix}_events")).await.expect("delete the stream");
    let last = workload.run(&server.base, 30).await;

    // Read-your-writes through the whole path, bounded.
    let started = Instant::now();
    let token = &workload.tokens[0].1;
    loop {
        let response = workload
            .client
            .get(format!("{}/v1/services?min_position={last}", server.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("read");
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 503, "only 'not yet' is acceptable while converging");
        assert!(started.elapsed() < Duration::from_secs(60), "the projection did not catch up:\n{}", server.output());
    }
    wait_until_caught_up(&workload, &server).await;
    server.stop();

    let live = read_model_snapshot(&server.database_url).await;
    let rebuilt = Command::new(binary())
        .args(["projections", "rebuild"])
        .env("CONNECTIONS_DATABASE_URL", &server.database_url)
        .output()
        .expect("run projections rebuild");
    assert!(rebuilt.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&rebuilt.stderr));
    assert_eq!(read_model_snapshot(&server.database_url).await, live, "live read models differ from a rebuild");
    // Every chain survived the kills and restarts.
    let verified = Command::new(binary())
        .args(["audit", "verify"])
        .env("CONNECTIONS_DATABASE_URL", &server.database_url)
        .output()
        .expect("run audit verify");
    assert!(verified.status.success(), "audit verify failed: {}", String::from_utf8_lossy(&verified.stderr));

    // The refilled stream holds the whole log, once, in order.
    let (db, connection) = tokio_postgres::connect(&server.database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let log: Vec<String> = db
        .query("SELECT event_id::text FROM events ORDER BY transaction_id, position", &[])
        .await
        .expect("log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut stream = jetstream.get_stream(format!("{prefix}_events")).await.expect("the relay recreated the stream");
    let state = stream.info().await.expect("info").state.clone();
    let mut ids = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await.expect("message");
        let envelope: Value = serde_json::from_slice(&message.payload).expect("envelope");
        ids.push(envelope["event_id"].as_str().expect("event id").to_owned());
    }
    assert_eq!(ids, log, "the stream must hold each event of the log exactly once, in log order");
}

async fn wait_until_caught_up(workload: &Workload, server: &Server) {
    let started = Instant::now();
    loop {
        let status: Value = workload
            .client
            .get(format!("{}/v1/status", server.base))
            .bearer_auth(&workload.tokens[0].1)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        // The projector reads from the stream: once it has applied the whole
        // log, the (refilled) stream holds the whole log too.
        if status["projections"]["dashboard"]["events"] == 0 && status["log_head_position"].is_i64() {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "did not catch up: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
