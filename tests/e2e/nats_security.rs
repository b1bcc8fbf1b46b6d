//! NATS as an attacker sees it: a compromised agent runtime holding valid
//! credentials for (alice, agent-1) tries everything it should not, against
//! a nats-server in JWT mode set up by `connections nats init`. nats-server
//! refuses each attempt, the service notices nothing (no stream rebuild, no
//! projector restart), and a revoke still reaches a good runtime at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connections_agent::{AgentClient, AgentConfig};
use connections_e2e::{NatsServer, NatsVersion};
use futures_util::StreamExt;
use serde_json::{json, Value};

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// A raw NATS client with the credentials `token` obtains, recording every
/// error the server sends it.
async fn runtime_with(http: &Http, token: &str, url: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let key = Arc::new(nkeys::KeyPair::new_user());
    let (status, credentials) = http
        .call(
            reqwest::Method::POST,
            "/v1/runtime/nats-credentials",
            token,
            Some(json!({"public_key": key.public_key()})),
        )
        .await;
    assert_eq!(status, 200, "{credentials}");
    let (options, errors) = recording_server_errors(async_nats::ConnectOptions::new().jwt(
        credentials["jwt"].as_str().expect("jwt").to_owned(),
        move |nonce| {
            let key = key.clone();
            async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
        },
    ));
    let client = options.connect(url).await.expect("a runtime with valid credentials connects");
    (client, errors)
}

/// `options` with short request timeouts, and the errors the server sends,
/// as they arrive.
fn recording_server_errors(
    options: async_nats::ConnectOptions,
) -> (async_nats::ConnectOptions, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let recorded = errors.clone();
    let options = options.request_timeout(Some(Duration::from_millis(500))).event_callback(move |event| {
        let recorded = recorded.clone();
        async move {
            if let async_nats::Event::ServerError(error) = event {
                recorded.lock().expect("errors").push(error.to_string());
            }
        }
    });
    (options, errors)
}

fn violations(errors: &Mutex<Vec<String>>, kind: &str, subject: &str) -> usize {
    let needle = format!("{kind} to \"{subject}\"");
    errors.lock().expect("errors").iter().filter(|e| e.contains("Permissions Violation") && e.contains(&needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_runtime_is_refused_everything_on_nats_2_9() {
    a_hostile_runtime_is_refused_everything(NatsVersion::Debian29).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_runtime_is_refused_everything_on_current_nats() {
    a_hostile_runtime_is_refused_everything(NatsVersion::Current).await;
}

async fn a_hostile_runtime_is_refused_everything(version: NatsVersion) {
    let nats = NatsServer::start_secured(version);
    let (server, prefix) = nats.serve(&[]);
    let http = Http { client: reqwest::Client::new(), base: server.base.clone() };
    let (alice, bob) = (server.token("alice"), server.token("bob"));
    let credential = |key: &str| json!({"kind": "api_key", "key": key});
    let (_, created) = http
        .call(
            reqwest::Method::POST,
            "/v1/connections",
            &alice,
            Some(
                json!({"service": "github", "name": "w", "agent_id": "agent-1", "credential": credential("alice-key")}),
            ),
        )
        .await;
    let x = created["connection_id"].as_str().expect("id").to_owned();
    http.call(
        reqwest::Method::POST,
        &format!("/v1/connections/{x}/agents"),
        &alice,
        Some(json!({"agent_id": "agent-2"})),
    )
    .await;
    let (_, created) = http
        .call(
            reqwest::Method::POST,
            "/v1/connections",
            &bob,
            Some(json!({"service": "github", "name": "b", "agent_id": "agent-1", "credential": credential("bob-key")})),
        )
        .await;
    let y = created["connection_id"].as_str().expect("id").to_owned();

    let good = AgentClient::connect(AgentConfig::new(server.base.clone(), server.agent_token("agent-2", "alice")))
        .await
        .expect("a good runtime connects");
    assert_eq!(good.resolve("github").await.expect("resolve").connection_id, x);
    assert!(good.cached("github").is_some());

    let service = nats.service_client(&prefix).await;
    let jetstream = async_nats::jetstream::new(service);
    let events_stream = format!("{prefix}_events");
    // The five events appended so far (two creates with their bindings, one
    // assign) are relayed before the stream is described: the checks below
    // compare against a stream that already holds them.
    let waited = std::time::Instant::now();
    // (Under load the relay may not have made the stream yet: wait for it too.)
    let before = loop {
        let mut stream = match jetstream.get_stream(&events_stream).await {
            Err(_) if waited.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            found => found.expect("events stream"),
        };
        let info = stream.info().await.expect("info").clone();
        if info.state.messages >= 5 || waited.elapsed() > Duration::from_secs(5) {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The hostile runtime: valid credentials for (alice, agent-1). (The
    // projector may restart once at start-up, before the relay made the
    // stream; only what the service logs from here on counts.)
    let logged_before = server.output().len();
    let (hostile, errors) = runtime_with(&http, &server.agent_token("agent-1", "alice"), &nats.url).await;
    let own = format!("{prefix}.v2.notices.alice.agent.agent-1");
    let mut allowed = hostile.subscribe(own.clone()).await.expect("subscribe");
    let own_connections = format!("{prefix}.v2.notices.alice.connection.*");
    let mut allowed_connections = hostile.subscribe(own_connections.clone()).await.expect("subscribe");
    let forbidden_subscriptions = [
        format!("{prefix}.v1.events.>"),
        format!("{prefix}.v1.events.bob.github.connection_created"),
        ">".to_owned(),
        format!("{prefix}.>"),
        format!("{prefix}.v2.notices.>"),
        format!("{prefix}.v2.notices.bob.>"),
        format!("{prefix}.v2.notices.bob.connection.{y}"),
        format!("{prefix}.v2.notices.bob.agent.agent-1"),
        format!("{prefix}.v2.notices.alice.agent.agent-2"),
        format!("{prefix}.v2.notices.alice.agent.*"),
        format!("{prefix}.v2.sync.alice.agent-2"),
        format!("{prefix}.v2.sync.bob.agent-1"),
        format!("{prefix}.v2.sync.>"),
        "_INBOX.>".to_owned(),
        format!("_INBOX_{prefix}.>"),
        "$JS.API.>".to_owned(),
    ];
    let mut hostile_subscriptions = Vec::new();
    for subject in &forbidden_subscriptions {
        hostile_subscriptions.push(hostile.subscribe(subject.clone()).await.expect("subscribe is sent"));
    }
    let forbidden_publishes = [
        format!("{prefix}.v1.events.alice.github.connection_revoked"),
        format!("{prefix}.v1.events.x"),
        format!("{prefix}.v2.notices.alice.connection.{x}"),
        format!("{prefix}.v2.notices.alice.agent.agent-2"),
        format!("{prefix}.v2.notices.bob.connection.{y}"),
        format!("{prefix}.v2.sync.alice.agent-2"),
        format!("{prefix}.v2.sync.bob.agent-1"),
    ];
    for subject in &forbidden_publishes {
        hostile.publish(subject.clone(), "junk".into()).await.expect("publish is sent");
    }
    // Its own echo subject it may publish to (and only it hears it).
    let own_echo = format!("{prefix}.v2.sync.alice.agent-1");
    let mut echo = hostile.subscribe(own_echo.clone()).await.expect("subscribe");
    hostile.publish(own_echo.clone(), "ping".into()).await.expect("publish is sent");
    hostile.flush().await.expect("flush");
    let echoed = tokio::time::timeout(Duration::from_secs(5), echo.next()).await.expect("the echo").expect("message");
    assert_eq!(&echoed.payload[..], b"ping");
    // The JetStream API on the service's streams and consumers.
    let notices_stream = format!("{prefix}_notices");
    let projector = format!("{prefix}_projector_dashboard");
    let api_calls = [
        format!("$JS.API.STREAM.DELETE.{events_stream}"),
        format!("$JS.API.STREAM.PURGE.{events_stream}"),
        format!("$JS.API.STREAM.DELETE.{notices_stream}"),
        format!("$JS.API.STREAM.CREATE.{prefix}_evil"),
        format!("$JS.API.STREAM.INFO.{events_stream}"),
        format!("$JS.API.CONSUMER.DELETE.{events_stream}.{projector}"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{events_stream}.{projector}"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{events_stream}.evil"),
        format!("$JS.API.CONSUMER.CREATE.{events_stream}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{events_stream}.{projector}"),
    ];
    for subject in &api_calls {
        let answer = hostile.request(subject.clone(), "{}".into()).await;
        assert!(answer.is_err(), "{subject} answered: {answer:?}");
    }
    let hostile_js = async_nats::jetstream::new(hostile.clone());
    assert!(hostile_js.delete_stream(&events_stream).await.is_err());

    // nats-server refused each one, and said so.
    let started = Instant::now();
    loop {
        let missing: Vec<String> = forbidden_subscriptions
            .iter()
            .filter(|s| violations(&errors, "Subscription", s) == 0)
            .chain(forbidden_publishes.iter().chain(&api_calls).filter(|s| violations(&errors, "Publish", s) == 0))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no permissions violation for {missing:?}; errors: {:?}",
            errors.lock().expect("errors")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(violations(&errors, "Subscription", &own), 0, "its own notices are allowed");
    assert_eq!(violations(&errors, "Subscription", &own_echo), 0, "its own echo is allowed");
    assert_eq!(violations(&errors, "Publish", &own_echo), 0, "its own echo is allowed");
    assert_eq!(violations(&errors, "Subscription", &own_connections), 0, "its owner's connection notices are allowed");

    // A revoke still reaches the good runtime at once.
    let (status, revoked) = http.call(reqwest::Method::DELETE, &format!("/v1/connections/{x}"), &alice, None).await;
    let returned = Instant::now();
    assert_eq!(status, 200, "{revoked}");
    while good.cached("github").is_some() {
        assert!(returned.elapsed() < Duration::from_secs(5), "the good runtime kept the revoked credential");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "{version:?}: the good runtime dropped the revoked credential {:?} after the revoke returned",
        returned.elapsed()
    );
    // The hostile runtime hears the revocation of its owner's connection
    // (a revoke sends no notice per ended binding), and nothing else.
    let notice = tokio::time::timeout(Duration::from_secs(5), allowed_connections.next())
        .await
        .expect("own connection's notice")
        .expect("message");
    let notice: Value = serde_json::from_slice(&notice.payload).expect("notice JSON");
    let schema_path = connections_e2e::workspace_root().join("schemas/nats/notice.v1.json");
    let schema = serde_json::from_str(&std::fs::read_to_string(schema_path).expect("read")).expect("JSON");
    let schema = jsonschema::validator_for(&schema).expect("schema compiles");
    assert!(schema.is_valid(&notice), "not a notice.v1.json: {notice}");
    assert_eq!((notice["kind"].clone(), notice["connection_id"].clone()), (json!("revoked"), json!(x)));
    let unbound = tokio::time::timeout(Duration::from_millis(100), allowed.next()).await;
    assert!(!matches!(unbound, Ok(Some(_))), "a revoke sent a binding notice: {unbound:?}");
    for (subject, subscription) in forbidden_subscriptions.iter().zip(&mut hostile_subscriptions) {
        let got = tokio::time::timeout(Duration::from_millis(20), subscription.next()).await;
        assert!(!matches!(got, Ok(Some(_))), "{subject} delivered a message to the hostile runtime");
    }

    // The service noticed nothing: same stream, every event in it, no rebuild, no restart.
    let (status, history) =
        http.call(reqwest::Method::GET, &format!("/v1/connections/{x}/history"), &alice, None).await;
    assert_eq!(status, 200);
    let after = loop {
        let info =
            jetstream.get_stream(&events_stream).await.expect("events stream").info().await.expect("info").clone();
        if info.state.messages >= before.state.messages + 2 || returned.elapsed() > Duration::from_secs(5) {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after.created, before.created, "the events stream was recreated");
    assert_eq!(after.state.first_sequence, before.state.first_sequence);
    assert!(after.state.messages > before.state.messages, "the revoke's events were relayed");
    assert!(history["events"].as_array().is_some_and(|events| events.len() >= 3), "{history}");
    let output = server.output()[logged_before..].to_owned();
    for sign in ["rebuilding it from the log", "session ended; restarting", "not an event envelope"] {
        assert!(!output.contains(sign), "the service logged '{sign}':\n{output}");
    }
    drop(hostile);
}

/// Connects once (no reconnecting) with `jwt`, signing the nonce with `key`.
async fn connect_signed(
    url: &str,
    jwt: String,
    key: Arc<nkeys::KeyPair>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .jwt(jwt, move |nonce| {
            let key = key.clone();
            async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
        })
        .max_reconnects(Some(1))
        .connect(url)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_issued_identities_get_in() {
    let nats = NatsServer::start_secured(NatsVersion::Debian29);
    let (server, _prefix) = nats.serve(&[]);
    // No credentials at all.
    let anonymous = async_nats::ConnectOptions::new().max_reconnects(Some(1)).connect(&nats.url).await;
    assert!(anonymous.is_err(), "an anonymous client got in");
    // A JWT signed by an account the server does not trust.
    let stranger = nkeys::KeyPair::new_account();
    let forged =
        connections_natsauth::Issuer::new(&stranger.public_key(), &stranger.seed().expect("seed")).expect("issuer");
    let user = Arc::new(nkeys::KeyPair::new_user());
    let jwt = forged
        .issue(
            &connections_natsauth::Grant::runtime(
                &connections_wire::Names::new("connections").expect("prefix"),
                "a",
                "b",
            ),
            &user.public_key(),
            chrono::Utc::now().timestamp(),
            None,
        )
        .expect("issue");
    assert!(connect_signed(&nats.url, jwt, user).await.is_err(), "a JWT from an untrusted account got in");
    // Valid credentials, signed for another key: the nonce signature fails.
    let http = Http { client: reqwest::Client::new(), base: server.base.clone() };
    let (_, credentials) = http
        .call(
            reqwest::Method::POST,
            "/v1/runtime/nats-credentials",
            &server.agent_token("agent-1", "alice"),
            Some(json!({})),
        )
        .await;
    let thief = Arc::new(nkeys::KeyPair::new_user());
    let stolen = connect_signed(&nats.url, credentials["jwt"].as_str().expect("jwt").to_owned(), thief).await;
    assert!(stolen.is_err(), "a JWT without its key got in");
    // The seed the server returned with it does get in.
    let creds = connections_natsauth::creds_file(
        credentials["jwt"].as_str().expect("jwt"),
        credentials["seed"].as_str().expect("seed"),
    );
    let owner = async_nats::ConnectOptions::with_credentials(&creds).expect("creds").connect(&nats.url).await;
    assert!(owner.is_ok(), "the issued credentials did not get in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reads_the_events_stream_and_nothing_else() {
    let nats = NatsServer::start_secured(NatsVersion::Current);
    let (server, prefix) = nats.serve(&[]);
    let http = Http { client: reqwest::Client::new(), base: server.base.clone() };
    let (status, _) = http
        .call(
            reqwest::Method::POST,
            "/v1/connections",
            &server.token("alice"),
            Some(json!({"service": "github", "name": "w", "credential": {"kind": "api_key", "key": "k"}})),
        )
        .await;
    assert_eq!(status, 201);
    let output = std::process::Command::new(connections_e2e::binary())
        .args(["nats", "reader", "--name", "data-team"])
        .env("CONNECTIONS_NATS_ISSUER_FILE", nats.issuer_file.as_deref().expect("secured"))
        .env("CONNECTIONS_NATS_PREFIX", &prefix)
        .output()
        .expect("run connections nats reader");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let creds = String::from_utf8(output.stdout).expect("utf-8");
    let (options, errors) = recording_server_errors(
        async_nats::ConnectOptions::with_credentials(&creds)
            .expect("creds")
            .custom_inbox_prefix(format!("_INBOX_{prefix}_reader_data-team")),
    );
    let reader = options.connect(&nats.url).await.expect("the reader connects");
    let jetstream = async_nats::jetstream::new(reader.clone());
    let stream_name = format!("{prefix}_events");
    let stream = {
        let started = Instant::now();
        loop {
            if let Ok(mut stream) = jetstream.get_stream(&stream_name).await {
                if stream.info().await.map(|i| i.state.messages).unwrap_or(0) > 0 {
                    break stream;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(5), "the event never reached the stream");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(format!("{prefix}_reader_data-team")),
            ..Default::default()
        })
        .await
        .expect("its own durable consumer");
    let mut messages =
        consumer.fetch().max_messages(10).expires(Duration::from_secs(2)).messages().await.expect("fetch");
    let message = messages.next().await.expect("an event").expect("message");
    let envelope: Value = serde_json::from_slice(&message.payload).expect("envelope");
    assert_eq!(envelope["event_type"], "connection_created");
    message.ack().await.expect("ack");

    // Read-only: no publish into the stream, no other consumer, no deletes, no notices.
    reader.publish(format!("{prefix}.v1.events.alice.github.x"), "junk".into()).await.expect("sent");
    let _notices = reader.subscribe(format!("{prefix}.v2.notices.>")).await.expect("sent");
    reader.flush().await.expect("flush");
    assert!(jetstream.delete_stream(&stream_name).await.is_err());
    assert!(stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(format!("{prefix}_projector_dashboard")),
            ..Default::default()
        })
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let errors = errors.lock().expect("errors").join("\n");
    assert!(errors.contains(&format!("Publish to \"{prefix}.v1.events.alice.github.x\"")), "{errors}");
    assert!(errors.contains(&format!("Subscription to \"{prefix}.v2.notices.>\"")), "{errors}");
    assert!(errors.contains(&format!("Publish to \"$JS.API.STREAM.DELETE.{stream_name}\"")), "{errors}");
}
