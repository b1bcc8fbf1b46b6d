//! `POST /v1/connections/{id}/replace`: a compromised connection replaced in
//! one command, without a moment in which its agents have no credential.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::TestApp;

fn replace_body(key: &str) -> Value {
    json!({"credential": {"kind": "api_key", "key": key}})
}

async fn replace(app: &TestApp, user: &str, id: &str, body: Value) -> crate::Answer {
    app.send(Method::POST, format!("/v1/connections/{id}/replace"), Some(user), Some(body)).await
}

/// Alice's `github` connection used three ways: bound at creation
/// (agent-1), assigned (agent-2), and through the default (agent-3).
async fn compromised(app: &TestApp) -> String {
    let id = app.create("alice", "github", Some("agent-1")).await;
    let assign = app
        .send(Method::POST, format!("/v1/connections/{id}/agents"), Some("alice"), Some(json!({"agent_id": "agent-2"})))
        .await;
    assert_eq!(assign.status, StatusCode::OK);
    let default =
        app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": id}))).await;
    assert_eq!(default.status, StatusCode::OK, "{}", default.body);
    assert_eq!(app.resolve("agent-3", "alice", "github").await.body["connection_id"], json!(id));
    id
}

#[tokio::test]
async fn replacing_moves_every_agent_and_the_default_and_revokes_the_old_connection() {
    let app = TestApp::new().await;
    let old = compromised(&app).await;
    let other = app.create("alice", "github", Some("agent-9")).await;

    let answer =
        replace(&app, "alice", &old, json!({"credential": {"kind": "api_key", "key": "canary-new"}, "name": "Fresh"}))
            .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let new = answer.body["connection_id"].as_str().expect("new id").to_owned();
    assert_ne!(new, old);
    assert_eq!(answer.body["replaces"], json!(old));
    assert_eq!(answer.body["name"], "Fresh");
    assert_eq!(answer.body["is_default"], true);
    assert_eq!(answer.body["moved_agents"], json!(["agent-1", "agent-2", "agent-3"]));
    assert_eq!(
        answer.body["agents"],
        json!([
            {"agent_id": "agent-1", "source": "created"},
            {"agent_id": "agent-2", "source": "assigned"},
            {"agent_id": "agent-3", "source": "default"},
        ]),
        "each agent keeps how it came to use the connection"
    );
    assert!(!answer.body.to_string().contains("canary-new"), "the answer leaked the secret");

    let old_view = app.send(Method::GET, format!("/v1/connections/{old}"), Some("alice"), None).await;
    assert_eq!(old_view.body["status"], "revoked");
    assert_eq!(old_view.body["replaced_by"], json!(new));
    assert_eq!(old_view.body["agents"], json!([]));
    assert_eq!(old_view.body["affected_agents"], json!(["agent-1", "agent-2", "agent-3"]));
    let other_view = app.send(Method::GET, format!("/v1/connections/{other}"), Some("alice"), None).await;
    assert_eq!(other_view.body["agents"][0]["agent_id"], "agent-9", "other connections keep their agents");

    // The old data key is gone in the same transaction; every agent now gets the new secret.
    let keys: i64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM data_keys WHERE connection_id = $1",
            &[&uuid::Uuid::parse_str(&old).expect("uuid")],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(keys, 0, "the old data key must be destroyed");
    for agent in ["agent-1", "agent-2", "agent-3"] {
        let resolved = app.resolve(agent, "alice", "github").await;
        assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.body);
        assert_eq!(resolved.body["connection_id"], json!(new));
        assert_eq!(resolved.body["credential"]["key"], "canary-new");
    }
    // A new agent asking for authorization gets the new default.
    assert_eq!(app.resolve("agent-4", "alice", "github").await.body["connection_id"], json!(new));

    // The link is recorded both ways, in one transaction.
    let rows = app
        .db
        .client()
        .await
        .query(
            "SELECT event_type, schema_version, data, transaction_id::text FROM events \
             WHERE event_type IN ('connection_created', 'connection_revoked') AND schema_version = 2 ORDER BY position",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(rows.len(), 2);
    let created: Value = rows[0].get(2);
    let revoked: Value = rows[1].get(2);
    assert_eq!(created["replaces"], json!(old));
    assert_eq!(revoked["replaced_by"], json!(new));
    assert_eq!(rows[0].get::<_, String>(3), rows[1].get::<_, String>(3), "one transaction");
}

#[tokio::test]
async fn replacing_a_revoked_foreign_or_unknown_connection_stores_nothing() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let revoked = app.create("alice", "github", None).await;
    app.send(Method::DELETE, format!("/v1/connections/{revoked}"), Some("alice"), None).await;
    let before = app.fingerprint().await;

    replace(&app, "alice", &revoked, replace_body("k2"))
        .await
        .assert_problem(StatusCode::CONFLICT, "connection-revoked");
    replace(&app, "mallory", &id, replace_body("k2")).await.assert_problem(StatusCode::NOT_FOUND, "not-found");
    let unknown = uuid::Uuid::now_v7();
    replace(&app, "alice", &unknown.to_string(), replace_body("k2"))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    assert_eq!(app.fingerprint().await, before, "a refused replace stores nothing");
    let view = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(view.body["status"], "active");
    assert_eq!(view.body["agents"][0]["agent_id"], "agent-1", "mallory's attempt changed nothing");
}

#[tokio::test]
async fn bad_replace_bodies_name_the_field_and_store_nothing() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let before = app.fingerprint().await;
    for (body, field) in [
        (json!({}), "credential"),
        (json!({"credential": "k"}), "credential"),
        (json!({"credential": {"kind": "api_key"}}), "credential.key"),
        (json!({"credential": {"kind": "magic", "key": "k"}}), "credential.kind"),
        (json!({"credential": {"kind": "api_key", "key": "k"}, "name": ""}), "name"),
        (json!({"credential": {"kind": "api_key", "key": "k"}, "name": 7}), "name"),
        (json!({"credential": {"kind": "api_key", "key": "k"}, "agent_id": "a"}), "agent_id"),
    ] {
        let answer = replace(&app, "alice", &id, body.clone()).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{body} → {}", answer.body);
    }
    replace(&app, "alice", "not-a-uuid", replace_body("k"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    let unauthenticated =
        app.send(Method::POST, format!("/v1/connections/{id}/replace"), None, Some(replace_body("k"))).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    let agent = app
        .raw(
            Request::builder()
                .method(Method::POST)
                .uri(format!("/v1/connections/{id}/replace"))
                .header("authorization", format!("Bearer {}", app.agent_token("agent-1", "alice")))
                .header("content-type", "application/json")
                .body(Body::from(replace_body("k").to_string()))
                .expect("request"),
        )
        .await;
    assert_eq!(agent.status, StatusCode::UNAUTHORIZED, "an agent token cannot replace: {}", agent.body);
    assert_eq!(app.fingerprint().await, before);
}

#[tokio::test]
async fn a_retried_replace_answers_the_same_new_connection_and_appends_nothing() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let request = || {
        Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/connections/{id}/replace"))
            .header("authorization", format!("Bearer {}", app.token("alice")))
            .header("idempotency-key", "replace-1")
            .header("content-type", "application/json")
            .body(Body::from(replace_body("k2").to_string()))
            .expect("request")
    };
    let first = app.raw(request()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let after = app.fingerprint().await;
    let retry = app.raw(request()).await;
    assert_eq!((retry.status, &retry.body), (first.status, &first.body));
    assert_eq!(app.fingerprint().await, after);
    // Without the key, a second replace of the (now revoked) connection is refused.
    replace(&app, "alice", &id, replace_body("k2")).await.assert_problem(StatusCode::CONFLICT, "connection-revoked");
}

#[tokio::test]
async fn resolves_hammering_across_replaces_get_the_old_or_the_new_credential_never_an_error() {
    let app = TestApp::new().await;
    let old = compromised(&app).await;
    // Each runtime resolves until it is handed the last replacement (set
    // once the replaces are done), or for 10 s at most.
    let last_replacement = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let hammer = |agent: &'static str| {
        let app = &app;
        let last_replacement = last_replacement.clone();
        async move {
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                let answer = app.resolve(agent, "alice", "github").await;
                assert_eq!(answer.status, StatusCode::OK, "{agent} got {}", answer.body);
                let id = answer.body["connection_id"].as_str().expect("id").to_owned();
                let done = last_replacement.get() == Some(&id);
                seen.push((id, answer.body["credential"]["key"].as_str().expect("key").to_owned()));
                if done {
                    break;
                }
            }
            seen
        }
    };
    // Ten replaces in a row while four runtimes resolve: the original
    // connection, then each replacement, with the secret each was given.
    let replacing = async {
        let mut chain = vec![(old.clone(), "k-123".to_owned())];
        for n in 1..=10 {
            tokio::time::sleep(std::time::Duration::from_millis(40)).await;
            let key = format!("k-new-{n}");
            let answer = replace(&app, "alice", &chain.last().expect("chain").0, replace_body(&key)).await;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
            chain.push((answer.body["connection_id"].as_str().expect("id").to_owned(), key));
        }
        last_replacement.set(chain.last().expect("chain").0.clone()).expect("set once");
        chain
    };
    let (chain, a1, a2, a3, a5) =
        tokio::join!(replacing, hammer("agent-1"), hammer("agent-2"), hammer("agent-3"), hammer("agent-5"));
    for seen in [a1, a2, a3, a5] {
        assert!(seen.len() >= 8, "the hammer ran: {}", seen.len());
        let mut last = 0;
        for answer in &seen {
            let place = chain
                .iter()
                .position(|link| link == answer)
                .expect("an answer is one link of the chain, with its own secret");
            assert!(place >= last, "never an older credential after a newer one");
            last = place;
        }
        assert_eq!(last, chain.len() - 1, "the last replacement was handed out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_notice_goes_out_first_then_each_moved_agent_hears_of_its_binding() {
    use futures::StreamExt;
    let app = TestApp::with_fanout().await;
    let names = app.fanout.as_ref().expect("fanout").names.clone();
    let nats = async_nats::connect("nats://127.0.0.1:4222").await.expect("connect");
    let mut notices = nats.subscribe(names.notices_wildcard()).await.expect("subscribe");
    nats.flush().await.expect("flush");
    let old = app.create("alice", "github", None).await;
    // Enough agents that the replacement spans two relay batches (512 events).
    let agents: Vec<String> = (0..300).map(|n| format!("agent-{n:03}")).collect();
    for agent in &agents {
        let assign = app
            .send(
                Method::POST,
                format!("/v1/connections/{old}/agents"),
                Some("alice"),
                Some(json!({"agent_id": agent})),
            )
            .await;
        assert_eq!(assign.status, StatusCode::OK);
    }
    // Skip the assignments' notices.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut next = async || -> Value {
        let message = tokio::time::timeout_at(deadline, notices.next()).await.expect("a notice in time").expect("open");
        serde_json::from_slice(&message.payload).expect("notice JSON")
    };
    for _ in &agents {
        assert_eq!(next().await["kind"], "binding_changed");
    }
    let answer = replace(&app, "alice", &old, replace_body("k2")).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let new = answer.body["connection_id"].as_str().expect("id").to_owned();

    let first = next().await;
    assert_eq!((first["kind"].as_str(), first["connection_id"].as_str()), (Some("revoked"), Some(old.as_str())));
    let mut unbound = std::collections::BTreeSet::new();
    let mut bound = std::collections::BTreeSet::new();
    for _ in 0..2 * agents.len() {
        let notice = next().await;
        assert_eq!(notice["kind"], "binding_changed", "{notice}");
        let agent = notice["agent_id"].as_str().expect("agent").to_owned();
        match (notice["bound"].as_bool(), notice["connection_id"].as_str()) {
            (Some(false), Some(id)) if id == old => assert!(unbound.insert(agent)),
            (Some(true), Some(id)) if id == new => assert!(bound.insert(agent)),
            other => panic!("unexpected binding notice {other:?}"),
        }
    }
    let all: std::collections::BTreeSet<String> = agents.into_iter().collect();
    assert_eq!((unbound == all, bound == all), (true, true), "every moved agent hears both ends of its move");
}
