//! Three instances on one Postgres and a 3-node JetStream cluster (streams
//! replicated 3 times), under a steady command and resolve load, with agent
//! runtimes on different NATS nodes, through: kill -9 of the relay's leader,
//! SIGTERM of an instance, the loss of a NATS node and of the stream
//! leader's node, and a Postgres restart. After each, every live runtime
//! gets every revocation; at the end every acknowledged command is in the
//! log exactly once, the read models equal a rebuild, the events stream
//! equals the log, the audit verifies, and no resolve handed out a
//! connection after its revoke was acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connections_agent::{AgentClient, AgentConfig, InvalidationReason, NoticeKind};
use connections_e2e::cluster::{NatsCluster, PrivatePostgres};
use connections_e2e::{binary, read_model_snapshot, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The instances' URLs (they change when an instance is restarted).
type Bases = Arc<Mutex<Vec<String>>>;

#[derive(Default)]
struct Observed {
    /// Acknowledged commands: (kind, connection id, position).
    acked: Vec<(&'static str, String, i64)>,
    /// Revokes acknowledged: connection id → when the answer arrived.
    revoked_at: HashMap<String, Instant>,
    /// Resolves answered 200: (connection id, when the request was sent).
    granted: Vec<(String, Instant)>,
    /// Answers by status (0: no answer: connection refused or reset).
    statuses: HashMap<u16, u64>,
}

struct Load {
    observed: Arc<Mutex<Observed>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Sends a command with an idempotency key to the instances in turn until
/// one acknowledges it (an answer lost to a kill is asked again with the
/// same key, on another instance); gives up after 60 s.
async fn acknowledged(
    http: &reqwest::Client,
    bases: &Bases,
    observed: &Mutex<Observed>,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let key = uuid::Uuid::now_v7().to_string();
    let started = Instant::now();
    for attempt in 0usize.. {
        let base = {
            let bases = bases.lock().expect("bases");
            bases[attempt % bases.len()].clone()
        };
        let mut request = http.request(method.clone(), format!("{base}{path}")).bearer_auth(token);
        request = request.header("idempotency-key", &key);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let (status, body) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                if response.status().is_success() {
                    observed.lock().expect("observed").statuses.entry(status).and_modify(|n| *n += 1).or_insert(1);
                    return response.json().await.expect("a JSON answer");
                }
                (status, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        };
        observed.lock().expect("observed").statuses.entry(status).and_modify(|n| *n += 1).or_insert(1);
        assert!(status == 0 || status == 503, "{method} {path} answered {status}: {body}");
        assert!(started.elapsed() < Duration::from_secs(60), "{method} {path} not acknowledged in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

impl Load {
    /// `writers` owners each creating a connection for their agent and
    /// revoking it, in turn; one resolver per owner resolving all along.
    fn start(bases: Bases, tokens: Vec<(String, String)>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        let observed = Arc::new(Mutex::new(Observed::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (writer, (user_token, agent_token)) in tokens.into_iter().enumerate() {
            let (http, bases, observed, stop) = (http.clone(), bases.clone(), observed.clone(), stop.clone());
            let service = format!("svc{writer}");
            let agent = format!("agent{writer}");
            let (resolve_http, resolve_bases, resolve_observed, resolve_stop, resolve_service) =
                (http.clone(), bases.clone(), observed.clone(), stop.clone(), service.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let body = json!({"service": service, "name": "Load", "agent_id": agent,
                                      "credential": {"kind": "api_key", "key": "k"}});
                    let created = acknowledged(
                        &http,
                        &bases,
                        &observed,
                        &user_token,
                        reqwest::Method::POST,
                        "/v1/connections",
                        Some(body),
                    )
                    .await;
                    let id = created["connection_id"].as_str().expect("id").to_owned();
                    let position = created["position"].as_i64().expect("position");
                    observed.lock().expect("observed").acked.push(("connection_created", id.clone(), position));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let path = format!("/v1/connections/{id}");
                    let revoked =
                        acknowledged(&http, &bases, &observed, &user_token, reqwest::Method::DELETE, &path, None).await;
                    let mut observed = observed.lock().expect("observed");
                    observed.revoked_at.insert(id.clone(), Instant::now());
                    observed.acked.push(("connection_revoked", id, revoked["position"].as_i64().expect("position")));
                }
            }));
            tasks.push(tokio::spawn(async move {
                let mut turn = 0usize;
                while !resolve_stop.load(Ordering::SeqCst) {
                    turn += 1;
                    let base = {
                        let bases = resolve_bases.lock().expect("bases");
                        bases[turn % bases.len()].clone()
                    };
                    let sent = Instant::now();
                    let answer = resolve_http
                        .post(format!("{base}/v1/resolve"))
                        .bearer_auth(&agent_token)
                        .json(&json!({"service": resolve_service}))
                        .send()
                        .await;
                    let (status, body) = match answer {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let body: Value = response.json().await.unwrap_or_default();
                            if status == 200 {
                                let id = body["connection_id"].as_str().expect("id").to_owned();
                                resolve_observed.lock().expect("observed").granted.push((id, sent));
                            }
                            (status, body)
                        }
                        Err(_) => (0, Value::Null),
                    };
                    assert!([0, 200, 409, 503].contains(&status), "resolve answered {status}: {body}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        Self { observed, stop, tasks }
    }

    async fn finish(self) -> Observed {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("a load task failed");
        }
        Arc::try_unwrap(self.observed).ok().expect("no other owner").into_inner().expect("observed")
    }
}

struct Cluster {
    servers: Vec<Server>,
    bases: Bases,
    http: reqwest::Client,
    /// The highest log position seen on the events stream.
    relayed: Arc<std::sync::atomic::AtomicI64>,
}

impl Cluster {
    fn refresh_bases(&self) {
        *self.bases.lock().expect("bases") = self.servers.iter().map(|s| s.base.clone()).collect();
    }

    /// Which instance holds `role`, waiting up to `within`.
    /// The first instance other than `except` whose health reports `role`.
    /// (An instance that was just signalled can still report its role for
    /// the moments before it handles the signal, so a hand-over is awaited by
    /// excluding it rather than by asking once.)
    async fn holder(&self, role: &str, except: Option<usize>, within: Duration) -> usize {
        let started = Instant::now();
        loop {
            for (index, server) in self.servers.iter().enumerate().filter(|(index, _)| Some(*index) != except) {
                if let Ok(response) = self.http.get(format!("{}/health", server.base)).send().await {
                    if let Ok(body) = response.json::<Value>().await {
                        if body["roles"].as_array().is_some_and(|roles| roles.iter().any(|r| r == role)) {
                            return index;
                        }
                    }
                }
            }
            assert!(started.elapsed() < within, "no instance took {role} within {within:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A runtime on a NATS node, for its own owner.
struct Runtime {
    client: AgentClient,
    owner_token: String,
    node: usize,
}

/// For each live runtime: a connection is created for it, resolved and
/// cached, then revoked; the runtime must drop it. Returns the delays from
/// the revoke's answer to the runtime dropping it.
async fn revocation_round(cluster: &Cluster, runtimes: &[Runtime], down_node: Option<usize>) -> Vec<Duration> {
    let mut delays = Vec::new();
    for (index, runtime) in runtimes.iter().enumerate().filter(|(_, r)| Some(r.node) != down_node) {
        let base = cluster.servers[index % cluster.servers.len()].base.clone();
        let created: Value = cluster
            .http
            .post(format!("{base}/v1/connections"))
            .bearer_auth(&runtime.owner_token)
            .json(&json!({"service": "github", "name": "Runtime", "agent_id": runtime.client.agent(),
                          "credential": {"kind": "api_key", "key": "rk"}}))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("JSON");
        let id = created["connection_id"].as_str().unwrap_or_else(|| panic!("created: {created}")).to_owned();
        // Its notices (the agent's binding changed) go out before the event
        // reaches the stream: once it has, they are on their way.
        let position = created["position"].as_i64().expect("position");
        let started = Instant::now();
        while cluster.relayed.load(Ordering::SeqCst) < position {
            // Generous: with a NATS node just lost on a loaded machine, the
            // stream's new leader may take a while to be elected.
            if started.elapsed() > Duration::from_secs(60) {
                panic!("position {position} was not relayed in 60 s; warnings:\n{}", warnings(cluster));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Resolve until the runtime holds it in its cache, and still holds it
        // once the create's own notice (the agent's binding changed) is in.
        let started = Instant::now();
        loop {
            if let Ok(resolved) = runtime.client.resolve("github").await {
                if resolved.connection_id == id {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if runtime.client.cached("github").is_some_and(|c| c.connection_id == id) {
                        break;
                    }
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "runtime {index} could not resolve and cache {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut invalidations = runtime.client.invalidations();
        let revoke = cluster
            .http
            .delete(format!("{base}/v1/connections/{id}"))
            .bearer_auth(&runtime.owner_token)
            .send()
            .await
            .expect("revoke");
        assert_eq!(revoke.status(), 200);
        let returned = Instant::now();
        let seen = Mutex::new(Vec::new());
        let dropped = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match invalidations.recv().await {
                    // The revoke also ends the agent's binding: whichever of
                    // the two notices the runtime handles first drops it.
                    Ok(i)
                        if i.connection_id == id
                            && matches!(
                                i.reason,
                                InvalidationReason::Notice(NoticeKind::Revoked | NoticeKind::BindingChanged)
                            ) =>
                    {
                        return i.at
                    }
                    Ok(other) => seen.lock().expect("seen").push(format!("{other:?}")),
                    Err(error) => panic!("runtime {index}: {error}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            let warnings: Vec<String> = cluster
                .servers
                .iter()
                .flat_map(|s| {
                    s.output()
                        .lines()
                        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "runtime {index} on node {} never got the revocation of {id}; it saw {:?}; warnings:\n{}",
                runtime.node,
                seen.lock().expect("seen"),
                warnings.join("\n")
            )
        });
        assert!(runtime.client.cached("github").is_none_or(|c| c.connection_id != id), "runtime {index} kept it");
        delays.push(dropped.saturating_duration_since(returned));
    }
    delays
}

/// Every warning and error the instances logged.
fn warnings(cluster: &Cluster) -> String {
    cluster
        .servers
        .iter()
        .enumerate()
        .flat_map(|(index, server)| {
            server
                .output()
                .lines()
                .filter(|line| line.contains("WARN") || line.contains("ERROR") || line.contains("role"))
                .map(|line| format!("instance {index}: {line}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (at most 60 s) until the events stream's and the projector's
/// consumer's replicas are all caught up, so that one node more may be lost.
///
/// A replica is caught up when it is online, was heard from in the last
/// two seconds, and is current or at most [`CAUGHT_UP_LAG`] operations
/// behind the leader: under the command load `current` flickers (a replica
/// a single operation behind is not current), and such a replica takes part
/// in the group's quorum, which is what losing another node needs. A failure
/// prints the groups' state and the nodes' logs.
async fn replicas_current(
    stream: &mut async_nats::jetstream::stream::Stream,
    consumer: &str,
    cluster: &Cluster,
    nats: &NatsCluster,
) {
    use async_nats::jetstream::stream::ClusterInfo;
    let started = Instant::now();
    let caught_up = |info: Option<&ClusterInfo>| {
        info.is_some_and(|c| {
            c.leader.is_some()
                && c.replicas.len() == 2
                && c.replicas.iter().all(|r| {
                    !r.offline
                        && r.active < Duration::from_secs(2)
                        && (r.current || r.lag.is_some_and(|lag| lag <= CAUGHT_UP_LAG))
                })
        })
    };
    let (mut last_stream, mut last_consumer) = (None, None);
    while started.elapsed() < Duration::from_secs(60) {
        let stream_info = stream.info().await.ok().and_then(|i| i.cluster.clone());
        let consumer_info = stream.consumer_info(consumer).await.ok().and_then(|i| i.cluster.clone());
        if caught_up(stream_info.as_ref()) && caught_up(consumer_info.as_ref()) {
            return;
        }
        (last_stream, last_consumer) = (stream_info, consumer_info);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "the stream's or the consumer's replicas were not all caught up in 60 s\nstream: {last_stream:?}\n\
         consumer: {last_consumer:?}\nwarnings:\n{}\nthe NATS nodes' logs:\n{}",
        warnings(cluster),
        (0..3).map(|node| format!("node{node}:\n{}", nats.log_tail(node, 40))).collect::<Vec<_>>().join("\n")
    );
}

/// How many operations behind its leader a replica may be and still count
/// as caught up (see [`replicas_current`]).
const CAUGHT_UP_LAG: u64 = 100;

/// When (within `limit` of `since`) the projection is current again: two
/// seconds after `since` (in which a stalled projector falls two seconds
/// behind the load), the oldest event it has not applied is under a
/// second old.
async fn projection_current_again(cluster: &Cluster, since: Instant, limit: Duration) -> Option<Instant> {
    let started = since;
    tokio::time::sleep((since + Duration::from_secs(2)).saturating_duration_since(Instant::now())).await;
    let user = cluster.servers[0].token("load0");
    while started.elapsed() < limit {
        let status = cluster.http.get(format!("{}/v1/status", cluster.servers[0].base)).bearer_auth(&user).send().await;
        if let Ok(status) = status {
            let status: Value = status.json().await.unwrap_or_default();
            if status["projections"]["dashboard"]["milliseconds"].as_i64().is_some_and(|age| age < 1000) {
                return Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_survives_instance_nats_and_postgres_failures_without_losing_or_leaking_anything() {
    let mut nats = NatsCluster::start(3);
    let postgres = PrivatePostgres::start();
    let database_url = postgres.url("connections");
    let prefix = format!("cl{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
    // Fixed ports, kept across restarts (runtimes keep their instance's URL).
    let ports: Vec<u16> = (0..3).map(|_| connections_e2e::free_port()).collect();
    let env = |node: usize| {
        vec![
            ("CONNECTIONS_LISTEN".to_owned(), format!("127.0.0.1:{}", ports[node])),
            ("CONNECTIONS_NATS_URL".to_owned(), nats.urls_from(node)),
            ("CONNECTIONS_NATS_ISSUER_FILE".to_owned(), nats.issuer_file.clone()),
            ("CONNECTIONS_NATS_REPLICAS".to_owned(), "3".to_owned()),
            ("CONNECTIONS_NATS_PREFIX".to_owned(), prefix.clone()),
            ("CONNECTIONS_INSTANCE".to_owned(), format!("instance{node}")),
        ]
    };
    let mut servers = Vec::new();
    for node in 0..3 {
        let owned = env(node);
        let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        servers.push(Server::start_on(&database_url, &pairs));
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let mut cluster = Cluster { servers, bases: Arc::default(), http, relayed: Arc::default() };
    cluster.refresh_bases();
    cluster.holder("relay", None, Duration::from_secs(30)).await;

    // The events as they reach JetStream, timed (for the relay failover gap).
    let names = connections_wire::Names::new(&prefix).expect("prefix");
    let issuer = connections_natsauth::Issuer::from_json(&std::fs::read_to_string(&nats.issuer_file).expect("issuer"))
        .expect("issuer");
    let access = connections_fanout::nats::NatsAccess::secured(nats.urls_from(1), Arc::new(issuer));
    // The service's rights, and a subscription to the events it publishes.
    let mut grant = connections_natsauth::Grant::service(&names);
    grant.subscribe.allow.push(names.events_wildcard());
    let watcher = connections_fanout::nats::connect_as(&access, &grant, &names.service_inbox(), "cluster test")
        .await
        .expect("connect");
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut subscription = watcher.subscribe(names.events_wildcard()).await.expect("subscribe");
    let recorded = arrivals.clone();
    let relayed = cluster.relayed.clone();
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            recorded.lock().expect("arrivals").push(Instant::now());
            let position = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Connections-Position"))
                .and_then(|p| p.as_str().parse::<i64>().ok())
                .unwrap_or_default();
            relayed.fetch_max(position, Ordering::SeqCst);
        }
    });

    // Runtimes: two per NATS node, each for an owner of its own.
    let mut runtimes = Vec::new();
    for index in 0..6 {
        let owner = format!("rt-owner{index}");
        let token = cluster.servers[0].agent_token(&format!("rt-agent{index}"), &owner);
        let mut config = AgentConfig::new(cluster.servers[index % 3].base.clone(), token);
        config.nats_url = Some(nats.url(index % 3));
        let client = AgentClient::connect(config).await.expect("runtime connects");
        runtimes.push(Runtime { client, owner_token: cluster.servers[0].token(&owner), node: index % 3 });
    }
    let tokens: Vec<(String, String)> = (0..4)
        .map(|w| {
            let owner = format!("load{w}");
            (cluster.servers[0].token(&owner), cluster.servers[0].agent_token(&format!("agent{w}"), &owner))
        })
        .collect();
    let load = Load::start(cluster.bases.clone(), tokens);
    let mut delays = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    delays.extend(revocation_round(&cluster, &runtimes, None).await);

    // 1. kill -9 the relay's leader.
    let leader = cluster.holder("relay", None, Duration::from_secs(10)).await;
    let killed_at = Instant::now();
    cluster.servers[leader].signal("KILL");
    cluster.holder("relay", Some(leader), Duration::from_secs(20)).await;
    let took_over = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The gap: the longest silence on the events stream around the kill
    // (under this load events otherwise arrive every few milliseconds).
    let gap = {
        let arrivals = arrivals.lock().expect("arrivals");
        let window: Vec<Instant> = arrivals
            .iter()
            .copied()
            .filter(|at| {
                *at + Duration::from_millis(200) >= killed_at && *at <= killed_at + took_over + Duration::from_secs(1)
            })
            .collect();
        window.windows(2).map(|pair| pair[1] - pair[0]).max().expect("events around the kill")
    };
    println!("relay failover: kill -9 → another instance leads in {}; publish gap {}", millis(took_over), millis(gap));
    tokio::task::block_in_place(|| cluster.servers[leader].kill_and_restart());
    cluster.refresh_bases();
    delays.extend(revocation_round(&cluster, &runtimes, None).await);

    // 2. SIGTERM the relay's leader: it exits 0 and hands over at once.
    let leader = cluster.holder("relay", None, Duration::from_secs(10)).await;
    let termed_at = Instant::now();
    cluster.servers[leader].signal("TERM");
    cluster.holder("relay", Some(leader), Duration::from_secs(5)).await;
    let handed_over = termed_at.elapsed();
    let status = tokio::task::block_in_place(|| cluster.servers[leader].wait_exit(Duration::from_secs(25)));
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: exit {status:?}: {}", cluster.servers[leader].output());
    println!("SIGTERM: roles handed over in {}", millis(handed_over));
    tokio::task::block_in_place(|| cluster.servers[leader].restart_with(&[]));
    cluster.refresh_bases();

    // 3. Lose a NATS node, then bring it back.
    nats.kill_node(2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    delays.extend(revocation_round(&cluster, &runtimes, Some(2)).await);
    nats.start_node(2);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 4. Lose the events stream leader's node.
    let jetstream = async_nats::jetstream::new(watcher.clone());
    let mut stream = jetstream.get_stream(names.events_stream()).await.expect("stream");
    let consumer_name = names.projector_consumer("dashboard");
    replicas_current(&mut stream, &consumer_name, &cluster, &nats).await;
    let info = stream.info().await.expect("info").clone();
    assert_eq!(info.config.num_replicas, 3, "the events stream is replicated 3 times");
    let leader_node = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.as_deref())
        .and_then(NatsCluster::index_of)
        .expect("a stream leader");
    nats.kill_node(leader_node);
    tokio::time::sleep(Duration::from_secs(3)).await;
    delays.extend(revocation_round(&cluster, &runtimes, Some(leader_node)).await);
    nats.start_node(leader_node);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 4b. Lose the node leading the projector's consumer. A waiting pull
    // request goes with it (the new leader never heard of it): the server's
    // idle heartbeats stop, and the projector pulls again within seconds
    // rather than after the pull's expiry.
    // Only once the node lost in 4 is current again: losing a second one
    // before that would leave no quorum.
    replicas_current(&mut stream, &consumer_name, &cluster, &nats).await;
    let consumer = stream.consumer_info(&consumer_name).await.expect("consumer info").clone();
    let consumer_node = consumer
        .cluster
        .as_ref()
        .and_then(|c| c.leader.as_deref())
        .and_then(NatsCluster::index_of)
        .expect("a consumer leader");
    let killed_at = Instant::now();
    nats.kill_node(consumer_node);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Back at once: the pull waiting on it is lost all the same.
    nats.start_node(consumer_node);
    let current = projection_current_again(&cluster, killed_at, Duration::from_secs(30)).await;
    let current = current.unwrap_or_else(|| {
        panic!(
            "the projection fell behind for 30 s after its consumer's leader was lost; warnings:\n{}",
            warnings(&cluster)
        )
    });
    println!("consumer leader lost: the projection is current again {} after", millis(current - killed_at));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 5. Restart Postgres: commands answer 503 while it is down, then recover.
    let owner_token = cluster.servers[0].token("pg-probe");
    tokio::task::block_in_place(|| postgres.stop());
    let down = cluster
        .http
        .post(format!("{}/v1/connections", cluster.servers[0].base))
        .bearer_auth(&owner_token)
        .json(&json!({"service": "github", "name": "Down", "credential": {"kind": "api_key", "key": "k"}}))
        .send()
        .await
        .expect("an answer while Postgres is down");
    assert_eq!(down.status(), 503, "{}", down.text().await.unwrap_or_default());
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| postgres.start_again());
    let restarted = Instant::now();
    loop {
        let answer = cluster
            .http
            .post(format!("{}/v1/connections", cluster.servers[0].base))
            .bearer_auth(&owner_token)
            .json(&json!({"service": "github", "name": "Back", "credential": {"kind": "api_key", "key": "k"}}))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 201) {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(30), "commands did not recover after Postgres restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "Postgres restart: commands answered 503, then recovered {} after it was back",
        millis(restarted.elapsed())
    );
    delays.extend(revocation_round(&cluster, &runtimes, None).await);
    let observed = load.finish().await;

    // Every live runtime got every revocation.
    delays.sort();
    println!(
        "revocations to live runtimes: {} delivered, p50 {}, max {}",
        delays.len(),
        millis(delays[delays.len() / 2]),
        millis(*delays.last().expect("some"))
    );

    // The projection catches up on the whole log.
    let user = cluster.servers[0].token("load0");
    let started = Instant::now();
    loop {
        let status: Value = cluster
            .http
            .get(format!("{}/v1/status", cluster.servers[0].base))
            .bearer_auth(&user)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        if status["projections"]["dashboard"]["events"] == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let warnings: Vec<String> = cluster
                .servers
                .iter()
                .flat_map(|s| {
                    s.output()
                        .lines()
                        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            // Everything each instance printed, for the post-mortem.
            let dump = std::env::temp_dir().join(format!("cluster-{prefix}.log"));
            let everything: Vec<String> =
                cluster.servers.iter().enumerate().map(|(n, s)| format!("=== instance{n}\n{}", s.output())).collect();
            let _ = std::fs::write(&dump, everything.join("\n"));
            // Where it stopped: the stream behind the log (the relay) or
            // the consumer behind the stream (the projector).
            let stream_state = stream.info().await.map(|i| format!("{:?}", i.state)).unwrap_or_else(|e| e.to_string());
            let consumer_state = match stream.consumer_info(names.projector_consumer("dashboard")).await {
                Ok(info) => format!(
                    "delivered {:?}, ack floor {:?}, pending {}, ack pending {}, waiting {}",
                    info.delivered, info.ack_floor, info.num_pending, info.num_ack_pending, info.num_waiting
                ),
                Err(error) => error.to_string(),
            };
            panic!(
                "the projection did not catch up: {status}\nstream: {stream_state}\nconsumer: {consumer_state}\n\
                 (every instance's output: {}); warnings:\n{}",
                dump.display(),
                warnings.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for server in &mut cluster.servers {
        tokio::task::block_in_place(|| server.stop());
    }

    // Every acknowledged command is in the log exactly once.
    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let rows = db
        .query(
            "SELECT event_type, data->>'connection_id', position FROM events \
             WHERE event_type IN ('connection_created', 'connection_revoked') AND stream_id LIKE 'owner-service/load%'",
            &[],
        )
        .await
        .expect("log");
    let mut in_log: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for row in rows {
        in_log.entry((row.get(0), row.get(1))).or_default().push(row.get(2));
    }
    assert!(observed.acked.len() > 100, "the load ran: {} commands acknowledged", observed.acked.len());
    for (kind, id, position) in &observed.acked {
        let positions = in_log.get(&(kind.to_string(), id.clone())).map(Vec::as_slice).unwrap_or_default();
        // Once; at or before the answer's position (the command's last event).
        assert!(
            positions.len() == 1 && positions[0] <= *position,
            "{kind} {id} acknowledged at {position}: in the log at {positions:?}"
        );
    }
    // No resolve sent after a revoke was acknowledged handed that connection out.
    for (id, sent) in &observed.granted {
        if let Some(revoked) = observed.revoked_at.get(id) {
            assert!(sent < revoked, "{id} was handed out by a resolve sent after its revoke returned");
        }
    }
    assert!(!observed.statuses.contains_key(&500), "no 500s: {:?}", observed.statuses);
    println!(
        "load: {} commands acknowledged, {} resolves granted; answers seen {:?}",
        observed.acked.len(),
        observed.granted.len(),
        observed.statuses
    );

    // The read models equal a rebuild; the audit verifies.
    let live = read_model_snapshot(&database_url).await;
    for (command, what) in [(vec!["projections", "rebuild"], "rebuild"), (vec!["audit", "verify"], "audit verify")] {
        let output = std::process::Command::new(binary())
            .args(&command)
            .env("CONNECTIONS_DATABASE_URL", &database_url)
            .output()
            .expect("run the CLI");
        assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(read_model_snapshot(&database_url).await, live, "live read models differ from a rebuild");

    // The events stream holds the log, once each, in log order.
    let log: Vec<String> = db
        .query("SELECT event_id::text FROM events ORDER BY transaction_id, position", &[])
        .await
        .expect("log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let state = stream.info().await.expect("info").state.clone();
    let mut ids = Vec::with_capacity(log.len());
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await.expect("message");
        let envelope: Value = serde_json::from_slice(&message.payload).expect("envelope");
        ids.push(envelope["event_id"].as_str().expect("event id").to_owned());
    }
    assert_eq!(ids.len(), log.len(), "the stream holds as many events as the log");
    assert!(ids == log, "the stream holds each event of the log exactly once, in log order");
}
