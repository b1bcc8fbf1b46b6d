//! `GET /v1/review`: every finding kind, thresholds, isolation, and keyed
//! fingerprints that never leave their table.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::TestApp;

async fn create(app: &TestApp, user: &str, service: &str, name: &str, credential: Value) -> String {
    let body = json!({"service": service, "name": name, "credential": credential});
    let answer = app.send(Method::POST, "/v1/connections", Some(user), Some(body)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["connection_id"].as_str().expect("id").to_owned()
}

async fn assign(app: &TestApp, id: &str, agent: &str) -> i64 {
    let answer = app
        .send(Method::POST, format!("/v1/connections/{id}/agents"), Some("alice"), Some(json!({"agent_id": agent})))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.body["position"].as_i64().expect("position")
}

async fn review(app: &TestApp, user: &str, query: &str) -> Value {
    let answer = app.send(Method::GET, format!("/v1/review{query}"), Some(user), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

/// (connection, kind) of every finding.
fn kinds(review: &Value) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = review["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| (f["connection_id"].as_str().expect("id").to_owned(), f["kind"].as_str().expect("kind").to_owned()))
        .collect();
    found.sort();
    found
}

fn has(review: &Value, id: &str, kind: &str) -> bool {
    kinds(review).contains(&(id.to_owned(), kind.to_owned()))
}

fn key(k: &str) -> Value {
    json!({"kind": "api_key", "key": k})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_finding_kind_with_its_reason_and_action() {
    let app = TestApp::with_fanout().await;
    let healthy = create(&app, "alice", "github", "Healthy", key("unique-1")).await;
    assign(&app, &healthy, "agent-0").await;
    let plain = create(&app, "alice", "github", "Plain", key("unique-2")).await;
    let shared = create(&app, "alice", "slack", "Shared", key("unique-3")).await;
    for agent in ["a1", "a2", "a3"] {
        assign(&app, &shared, agent).await;
    }
    let twin_a = create(&app, "alice", "notion", "Twin A", key("reused-secret")).await;
    let twin_b = create(
        &app,
        "alice",
        "linear",
        "Twin B",
        json!({"kind": "basic", "username": "me", "password": "reused-secret"}),
    )
    .await;
    let soon = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let past = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let expiring = create(
        &app,
        "alice",
        "google-calendar",
        "Expiring",
        json!({"kind": "oauth2", "access_token": "t1", "expires_at": soon}),
    )
    .await;
    let expired = create(
        &app,
        "alice",
        "outlook",
        "Expired",
        json!({"kind": "oauth2", "access_token": "t2", "expires_at": past}),
    )
    .await;
    let old = create(&app, "alice", "jira", "Old", key("unique-4")).await;
    let mut position = 0;
    for id in [&plain, &twin_a, &twin_b, &expiring, &expired, &old] {
        position = assign(&app, id, "agent-x").await.max(position);
    }
    position = assign(&app, &shared, "a4").await.max(position);
    // Time passes for two of them (read models and hygiene facts are
    // mutable tables; the log is not touched).
    let client = app.db.client().await;
    client
        .execute(
            "UPDATE credential_hygiene SET sealed_at = now() - interval '100 days' WHERE connection_id = $1",
            &[&uuid::Uuid::parse_str(&old).expect("uuid")],
        )
        .await
        .expect("age the credential");

    let answer = review(&app, "alice", &format!("?min_position={position}")).await;
    assert_eq!(answer["connections_reviewed"], 8);
    assert_eq!(answer["thresholds"], json!({"unused_days": 30, "max_agents": 3, "old_days": 90, "expiring_hours": 24}));
    let mut expected = vec![
        (expired.clone(), "expired".to_owned()),
        (expiring.clone(), "expiring".to_owned()),
        (old.clone(), "old".to_owned()),
        (shared.clone(), "shared".to_owned()),
        (twin_a.clone(), "duplicate_secret".to_owned()),
        (twin_b.clone(), "duplicate_secret".to_owned()),
    ];
    expected.sort();
    let got = kinds(&answer);
    assert_eq!(got, expected, "exactly these findings; healthy and plain have none");
    for finding in answer["findings"].as_array().expect("findings") {
        assert!(finding["reason"].as_str().is_some_and(|r| !r.is_empty()), "{finding}");
        assert!(finding["action"].as_str().is_some_and(|r| !r.is_empty()), "{finding}");
        assert!(finding["name"].is_string() && finding["service"].is_string());
    }
    assert!(!got.iter().any(|(id, _)| *id == healthy || *id == plain), "{got:?}");
    let twin = answer["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["connection_id"] == json!(twin_a))
        .expect("twin");
    assert_eq!(twin["related"], json!([twin_b]), "an api key reused as a password is the same secret");

    // An unbound connection that is not the default is unused; the default is not.
    let spare = create(&app, "alice", "github", "Spare", key("unique-5")).await;
    let default = app
        .send(Method::PUT, "/v1/services/slack/default", Some("alice"), Some(json!({"connection_id": shared})))
        .await;
    let position = default.body["position"].as_i64().expect("position");
    let answer = review(&app, "alice", &format!("?min_position={position}")).await;
    assert!(has(&answer, &spare, "unused"), "{:?}", kinds(&answer));
    assert_eq!(
        answer["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .find(|f| f["connection_id"] == json!(spare))
            .expect("spare")["reason"],
        "no agent is bound to it"
    );

    // Thresholds are parameters: with max_agents=5 nothing is shared; with
    // old_days=200 the aged credential is not old; with expiring_hours=1 the
    // two-hour token is not expiring.
    let relaxed = review(&app, "alice", "?max_agents=5&old_days=200&expiring_hours=1").await;
    assert!(!has(&relaxed, &shared, "shared") && !has(&relaxed, &old, "old") && !has(&relaxed, &expiring, "expiring"));
    assert!(has(&relaxed, &expired, "expired"));
    let strict = review(&app, "alice", "?max_agents=1").await;
    assert!(has(&strict, &shared, "shared"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_replacing_or_revoking_clears_what_it_fixes() {
    let app = TestApp::with_fanout().await;
    let a = create(&app, "alice", "github", "A", key("same")).await;
    let b = create(&app, "alice", "slack", "B", key("same")).await;
    let c = create(&app, "alice", "notion", "C", key("same")).await;
    let mut position = 0;
    for id in [&a, &b, &c] {
        position = assign(&app, id, "agent-1").await;
    }
    let answer = review(&app, "alice", &format!("?min_position={position}")).await;
    assert!(
        has(&answer, &a, "duplicate_secret")
            && has(&answer, &b, "duplicate_secret")
            && has(&answer, &c, "duplicate_secret")
    );
    let rotated = app
        .send(
            Method::PUT,
            format!("/v1/connections/{a}/credential"),
            Some("alice"),
            Some(json!({"credential": key("fresh")})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let replaced = app
        .send(
            Method::POST,
            format!("/v1/connections/{b}/replace"),
            Some("alice"),
            Some(json!({"credential": key("fresher")})),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::CREATED);
    let position = replaced.body["position"].as_i64().expect("position");
    let answer = review(&app, "alice", &format!("?min_position={position}")).await;
    assert!(
        !answer["findings"].as_array().expect("findings").iter().any(|f| f["kind"] == "duplicate_secret"),
        "{answer}"
    );
    let rows: i64 = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM credential_hygiene WHERE connection_id = $1",
            &[&uuid::Uuid::parse_str(&b).expect("uuid")],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "a revoked connection's fingerprints are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_is_per_owner_and_fingerprints_are_not_comparable_across_owners() {
    let app = TestApp::with_fanout().await;
    let alice = create(&app, "alice", "github", "Alice's", key("shared-by-two-users")).await;
    let bob = create(&app, "bob", "github", "Bob's", key("shared-by-two-users")).await;
    let position = app.send(Method::GET, format!("/v1/connections/{bob}"), Some("bob"), None).await.body["position"]
        .as_i64()
        .expect("position");
    let alices = review(&app, "alice", &format!("?min_position={position}")).await;
    let bobs = review(&app, "bob", &format!("?min_position={position}")).await;
    assert_eq!(alices["connections_reviewed"], 1);
    assert_eq!(bobs["connections_reviewed"], 1);
    assert!(!alices.to_string().contains(&bob) && !bobs.to_string().contains(&alice), "each sees only their own");
    assert!(!alices.to_string().contains("duplicate_secret") && !bobs.to_string().contains("duplicate_secret"));
    let nobody = review(&app, "carol", "").await;
    assert_eq!((nobody["connections_reviewed"].clone(), nobody["findings"].clone()), (json!(0), json!([])));
    // The same secret under two owners' keys: two different fingerprints.
    let rows = app
        .db
        .client()
        .await
        .query("SELECT fingerprints FROM credential_hygiene ORDER BY owner_id", &[])
        .await
        .expect("rows");
    let prints: Vec<Vec<Vec<u8>>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(prints.len(), 2);
    assert_ne!(prints[0], prints[1]);
    assert_eq!(prints[0][0].len(), 32);
}

#[tokio::test]
async fn bad_review_parameters_are_named_and_tokens_are_required() {
    let app = TestApp::new().await;
    for (query, field) in [
        ("?unused_days=0", "unused_days"),
        ("?unused_days=x", "unused_days"),
        ("?max_agents=-1", "max_agents"),
        ("?old_days=99999", "old_days"),
        ("?expiring_hours=", "expiring_hours"),
        ("?min_position=-3", "min_position"),
        ("?colour=red", "colour"),
    ] {
        let answer = app.send(Method::GET, format!("/v1/review{query}"), Some("alice"), None).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{query}: {}", answer.body);
    }
    let anonymous = app.send(Method::GET, "/v1/review", None, None).await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_never_or_long_not_handed_out_is_unused() {
    let app = TestApp::with_fanout().await;
    let idle = create(&app, "alice", "github", "Idle", key("k1")).await;
    let busy = create(&app, "alice", "slack", "Busy", key("k2")).await;
    assign(&app, &idle, "agent-1").await;
    let position = assign(&app, &busy, "agent-1").await;
    assert_eq!(app.resolve("agent-1", "alice", "slack").await.status, StatusCode::OK);
    let answer = review(&app, "alice", &format!("?min_position={position}")).await;
    assert_eq!(kinds(&answer), vec![], "both are new and bound");
    // Forty days pass (the read model's creation time is moved back).
    app.db
        .client()
        .await
        .execute("UPDATE rm_connections SET created_at = created_at - interval '40 days'", &[])
        .await
        .expect("age");
    let answer = review(&app, "alice", "").await;
    assert_eq!(kinds(&answer), vec![(idle.clone(), "unused".to_owned())], "busy was handed out today");
    let finding = &answer["findings"][0];
    assert_eq!(finding["reason"], "no agent has been handed it since it was created 40 days ago");
    assert!(!has(&review(&app, "alice", "?unused_days=41").await, &idle, "unused"));
}

#[tokio::test]
async fn hygiene_facts_and_hand_outs_are_row_level_secured_for_readers() {
    let app = TestApp::new().await;
    let body = |key: &str| json!({"service": "github", "name": "A", "agent_id": "agent-1", "credential": {"kind": "api_key", "key": key}});
    for (user, secret) in [("alice", "k1"), ("bob", "k2"), ("bob", "k3")] {
        let answer = app.send(Method::POST, "/v1/connections", Some(user), Some(body(secret))).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    assert_eq!(app.resolve("agent-1", "alice", "github").await.status, StatusCode::OK);
    assert_eq!(app.resolve("agent-1", "bob", "github").await.status, StatusCode::OK);
    let mut client = app.db.client().await;
    for (owner, hygiene, handouts) in [(Some("alice"), 1, 1), (Some("bob"), 2, 1), (None, 0, 0)] {
        let transaction = client.transaction().await.expect("begin");
        transaction.execute("SET LOCAL ROLE connections_reader", &[]).await.expect("role");
        if let Some(owner) = owner {
            transaction.execute("SELECT set_config('connections.owner', $1, true)", &[&owner]).await.expect("owner");
        }
        // No WHERE clause: the policies alone decide.
        let seen: i64 = transaction.query_one("SELECT count(*) FROM credential_hygiene", &[]).await.expect("q").get(0);
        let used: i64 = transaction.query_one("SELECT count(*) FROM access_log", &[]).await.expect("q").get(0);
        assert_eq!((seen, used), (hygiene, handouts), "{owner:?}");
        let denied = transaction.execute("DELETE FROM credential_hygiene", &[]).await;
        assert!(denied.is_err(), "readers cannot write");
        let _ = transaction.rollback().await;
    }
}
