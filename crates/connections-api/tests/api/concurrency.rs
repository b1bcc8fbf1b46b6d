//! Invariants under concurrent commands.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_set_defaults_leave_exactly_one_default_and_a_consistent_log() {
    let app = TestApp::new().await;
    let mut ids = Vec::new();
    for _ in 0..32 {
        ids.push(app.create("alice", "github", None).await);
    }
    let requests = ids.iter().map(|id| {
        app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": id})))
    });
    let answers = futures::future::join_all(requests).await;
    // Commands on one stream queue on its lock: none has to give up.
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let succeeded = answers.len();

    // The log is a consistent chain: each default_set names the default it replaced.
    let rows = app
        .db
        .client()
        .await
        .query(
            "SELECT data->>'connection_id', data->>'previous' FROM events WHERE event_type = 'default_set' ORDER BY stream_version",
            &[],
        )
        .await
        .expect("default_set events");
    assert_eq!(rows.len(), succeeded, "one default_set per successful command");
    let mut current: Option<String> = None;
    for row in &rows {
        let previous: Option<String> = row.get(1);
        assert_eq!(previous, current, "default_set must name the default it replaced");
        current = Some(row.get(0));
    }
    let defaults: Vec<_> = futures::future::join_all(
        ids.iter().map(|id| app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None)),
    )
    .await
    .into_iter()
    .filter(|a| a.body["is_default"] == true)
    .map(|a| a.body["connection_id"].as_str().expect("id").to_owned())
    .collect();
    assert_eq!(defaults.len(), 1, "exactly one default");
    assert_eq!(Some(defaults[0].clone()), current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assign_racing_revoke_never_leaves_an_agent_bound_to_a_revoked_connection() {
    let app = TestApp::new().await;
    for round in 0..10 {
        let id = app.create("alice", "github", None).await;
        let assigns = (0..6).map(|n| {
            app.send(
                Method::POST,
                format!("/v1/connections/{id}/agents"),
                Some("alice"),
                Some(json!({"agent_id": format!("agent-{round}-{n}")})),
            )
        });
        let revoke = app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None);
        let (assigned, revoked) = tokio::join!(futures::future::join_all(assigns), revoke);
        assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
        for answer in &assigned {
            // Before the revoke it lands; after it, it is refused as revoked.
            assert!(
                answer.status == StatusCode::OK || answer.body["type"] == "urn:connections:problem:connection-revoked",
                "assign answered {} {}",
                answer.status,
                answer.body
            );
        }
        let view = app.send(Method::GET, &format!("/v1/connections/{id}"), Some("alice"), None).await;
        assert_eq!(view.body["status"], "revoked");
        assert_eq!(view.body["agents"], json!([]), "round {round}: an agent is bound to a revoked connection");
        // Every assign that succeeded before the revoke is named by it.
        let affected = view.body["affected_agents"].as_array().expect("affected").len();
        let won_before = assigned.iter().filter(|a| a.status == StatusCode::OK).count();
        assert_eq!(affected, won_before, "round {round}: the revoke names every agent that was bound");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_on_one_stream_all_land_with_consecutive_versions() {
    let app = TestApp::new().await;
    let creates = (0..16).map(|n| {
        app.send(
            Method::POST,
            "/v1/connections",
            Some("alice"),
            Some(json!({"service": "github", "name": format!("c{n}"), "credential": {"kind": "api_key", "key": "k"}})),
        )
    });
    let answers = futures::future::join_all(creates).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let created = answers.len();
    let versions: Vec<i64> = app
        .db
        .client()
        .await
        .query("SELECT stream_version FROM events ORDER BY stream_version", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=created as i64).collect::<Vec<_>>(), "one event per create, no gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_resolutions_racing_commands_on_one_stream_all_succeed() {
    let app = TestApp::new().await;
    let default = app.create("alice", "github", None).await;
    let set = app
        .send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": default})))
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    // 24 agents bind the default on their first resolution (an append each)
    // while the owner creates 8 connections on the same stream.
    let agents: Vec<String> = (0..24).map(|n| format!("agent-{n}")).collect();
    let resolves = agents.iter().map(|agent| app.resolve(agent, "alice", "github"));
    let creates = (0..8).map(|_| {
        let body = json!({"service": "github", "name": "More", "credential": {"kind": "api_key", "key": "k"}});
        app.send(Method::POST, "/v1/connections", Some("alice"), Some(body))
    });
    let (resolved, created) = tokio::join!(futures::future::join_all(resolves), futures::future::join_all(creates));
    for answer in &resolved {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["connection_id"], json!(default));
    }
    for answer in &created {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    let view = app.send(Method::GET, format!("/v1/connections/{default}"), Some("alice"), None).await;
    assert_eq!(view.body["agents"].as_array().expect("agents").len(), 24, "{}", view.body);
}

/// A hundred agents of one owner ask for the same service for the first
/// time at the same moment: each is bound to the default (one append each
/// to the owner's stream) and every one is answered, none with 409 or 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_first_resolutions_at_once_all_succeed() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", None).await;
    let answer =
        app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": id}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let agents: Vec<String> = (0..100).map(|n| format!("agent-{n:03}")).collect();
    let started = std::time::Instant::now();
    let app = &app;
    let answers = futures::future::join_all(agents.iter().map(|agent| async move {
        let answer = app.resolve(agent, "alice", "github").await;
        (answer, started.elapsed())
    }))
    .await;
    let mut took: Vec<_> = answers.iter().map(|(_, took)| *took).collect();
    took.sort();
    for (answer, _) in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["connection_id"], json!(id));
    }
    println!("100 first resolutions at once: p50 {:?}, p99 {:?}", took[49], took[98]);
    let bound: i64 = app
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM events WHERE event_type = 'agent_assigned'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(bound, 100, "each agent is bound once");
}

/// A first resolution binding the default appends without the stream's
/// lock only while the stream is short (its keyed copy is not written).
/// On a long stream it takes the lock before it appends: its write to the
/// copy's head row then comes after every other writer's, all of them
/// holding the lock; appending first unlocked could deadlock with a writer
/// that rebuilt the copy (head row, then append) under the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_resolution_appends_under_the_streams_lock_once_the_stream_is_long() {
    let app = TestApp::new().await;
    for (owner, agents) in [("alice", 70), ("bob", 3)] {
        let id = app.create(owner, "github", None).await;
        let answer =
            app.send(Method::PUT, "/v1/services/github/default", Some(owner), Some(json!({"connection_id": id}))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        // Each binds the default: one event each (alice's stream passes 64
        // events, and its copy is rebuilt once, then kept).
        for n in 0..agents {
            let answer = app.resolve(&format!("agent-{n:03}"), owner, "github").await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        }
    }
    for (owner, waits) in [("alice", true), ("bob", false)] {
        // Another writer holds the stream's lock.
        let mut holder = app.db.client().await;
        let holding = holder.transaction().await.expect("begin");
        holding
            .execute(
                "SELECT pg_advisory_xact_lock(1668247150, connections_stream_lock_key($1))",
                &[&format!("owner-service/{owner}/github")],
            )
            .await
            .expect("lock");
        let resolving = app.resolve("agent-new", owner, "github");
        tokio::pin!(resolving);
        let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut resolving).await;
        assert_eq!(early.is_err(), waits, "{owner}: the resolve waited for the stream's lock: {}", early.is_err());
        holding.rollback().await.expect("release");
        let answer = match early {
            Ok(answer) => answer,
            Err(_) => tokio::time::timeout(std::time::Duration::from_secs(10), resolving).await.expect("resolved"),
        };
        assert_eq!(answer.status, StatusCode::OK, "{owner}: {}", answer.body);
    }
}
