//! Commit groups: commands that arrive together share a transaction, and
//! its outcome (see `connections_api::groups`).

use std::future::Future;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::{Answer, TestApp};

/// Holds the writers' lock of each of `owners`' `github` stream until
/// rolled back.
async fn hold_locks(app: &TestApp, owners: &[&str]) -> tokio_postgres::Client {
    let holder = app.db.client().await;
    holder.batch_execute("BEGIN").await.expect("begin");
    for owner in owners {
        holder
            .execute(
                "SELECT pg_advisory_xact_lock(1668247150, connections_stream_lock_key($1))",
                &[&format!("owner-service/{owner}/github")],
            )
            .await
            .expect("lock");
    }
    holder
}

/// Polls `request` for a while and says whether it is still waiting.
async fn still_waiting(request: &mut std::pin::Pin<&mut impl Future<Output = Answer>>) -> bool {
    tokio::time::timeout(Duration::from_millis(300), request.as_mut()).await.is_err()
}

async fn assigned(app: &TestApp, agent: &str) -> i64 {
    let client = app.db.client().await;
    let row = client
        .query_one(
            "SELECT count(*) FROM events WHERE event_type = 'agent_assigned' AND data->>'agent_id' = $1",
            &[&agent],
        )
        .await
        .expect("count");
    row.get(0)
}

fn assign<'a>(app: &'a TestApp, owner: &'a str, id: &str, agent: &str) -> impl Future<Output = Answer> + 'a {
    let path = format!("/v1/connections/{id}/agents");
    app.send(Method::POST, path, Some(owner), Some(json!({"agent_id": agent})))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_arriving_while_another_runs_shares_its_transaction_and_waits_for_its_commit() {
    let app = TestApp::new().await;
    let (alice, bob) = (app.create("alice", "github", None).await, app.create("bob", "github", None).await);
    let before = app.state.settings.commit_groups.committed();
    let committed_before = connections_metrics::COMMIT_GROUP_COMMANDS.get(&["committed"]);
    let holder = hold_locks(&app, &["alice"]).await;

    let first = assign(&app, "alice", &alice, "agent-a");
    tokio::pin!(first);
    assert!(still_waiting(&mut first).await, "alice's assign waits for her stream's lock");
    // Bob's stream is free, but his command joined alice's group: it is
    // answered when the group commits, not before.
    let second = assign(&app, "bob", &bob, "agent-b");
    tokio::pin!(second);
    assert!(still_waiting(&mut second).await, "bob's assign waits for the group it joined");
    assert_eq!(assigned(&app, "agent-b").await, 0, "nothing of the group is visible before its commit");

    holder.batch_execute("ROLLBACK").await.expect("release");
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let (groups, members) = app.state.settings.commit_groups.committed();
    assert_eq!((groups - before.0, members - before.1), (1, 2), "one commit for both");
    // Other tests in this process commit groups too: at least these two.
    assert!(connections_metrics::COMMIT_GROUP_COMMANDS.get(&["committed"]) >= committed_before + 2, "counted");
    assert_eq!((assigned(&app, "agent-a").await, assigned(&app, "agent-b").await), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_member_is_answered_with_its_groups_commit_and_the_others_land() {
    let app = TestApp::new().await;
    let (alice, bob) = (app.create("alice", "github", None).await, app.create("bob", "github", None).await);
    let revoked = app.send(Method::DELETE, format!("/v1/connections/{bob}"), Some("bob"), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let before = app.state.settings.commit_groups.committed();
    let events = app.event_count().await;
    let holder = hold_locks(&app, &["alice"]).await;

    let first = assign(&app, "alice", &alice, "agent-a");
    tokio::pin!(first);
    assert!(still_waiting(&mut first).await, "alice's assign waits for her stream's lock");
    let refused = assign(&app, "bob", &bob, "agent-b");
    tokio::pin!(refused);
    assert!(still_waiting(&mut refused).await, "bob's refusal waits for the group it joined");

    holder.batch_execute("ROLLBACK").await.expect("release");
    let (first, refused) = tokio::join!(first, refused);
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    refused.assert_problem(StatusCode::CONFLICT, "connection-revoked");
    let (groups, members) = app.state.settings.commit_groups.committed();
    assert_eq!((groups - before.0, members - before.1), (1, 2), "the refusal did not roll the group back");
    assert_eq!(app.event_count().await, events + 1, "alice's assign, and nothing for bob");
    assert_eq!((assigned(&app, "agent-a").await, assigned(&app, "agent-b").await), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cancelled_midway_rolls_its_group_back_and_leaves_nothing() {
    let app = TestApp::new().await;
    let (alice, bob) = (app.create("alice", "github", None).await, app.create("bob", "github", None).await);
    let before = app.state.settings.commit_groups.committed();
    let rolled_back_before = connections_metrics::COMMIT_GROUPS.get(&["rolled_back"]);
    let holder = hold_locks(&app, &["alice", "bob"]).await;

    let first = assign(&app, "alice", &alice, "agent-a");
    tokio::pin!(first);
    assert!(still_waiting(&mut first).await, "alice's assign waits for her stream's lock");
    {
        // Bob's request joins the group, waits for his stream's lock, and
        // goes away (its client hung up).
        let cancelled = assign(&app, "bob", &bob, "agent-b");
        tokio::pin!(cancelled);
        assert!(still_waiting(&mut cancelled).await, "bob's assign waits for his stream's lock");
    }

    holder.batch_execute("ROLLBACK").await.expect("release");
    let first = tokio::time::timeout(Duration::from_secs(10), first).await.expect("answered");
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(app.state.settings.commit_groups.committed(), before, "the group did not commit");
    assert!(connections_metrics::COMMIT_GROUPS.get(&["rolled_back"]) > rolled_back_before, "counted");
    assert_eq!((assigned(&app, "agent-a").await, assigned(&app, "agent-b").await), (1, 0));
    // The stream bob's request left is usable.
    let again = assign(&app, "bob", &bob, "agent-b").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runtimes_problem_report_never_joins_a_group() {
    // Nothing a runtime sends may hold back or roll back a user's command:
    // its report runs alone even while a group is taking members.
    let app = TestApp::new().await;
    let alice = app.create("alice", "github", None).await;
    let bob = app.create("bob", "github", Some("agent-b")).await;
    assert_eq!(app.resolve("agent-b", "bob", "github").await.status, StatusCode::OK);
    let holder = hold_locks(&app, &["alice"]).await;

    let first = assign(&app, "alice", &alice, "agent-a");
    tokio::pin!(first);
    assert!(still_waiting(&mut first).await, "alice's assign waits for her stream's lock");
    let report = app.raw(
        axum::http::Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/connections/{bob}/problems"))
            .header("authorization", format!("Bearer {}", app.agent_token("agent-b", "bob")))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(json!({"kind": "rejected", "status": 401}).to_string()))
            .expect("request"),
    );
    let report = tokio::time::timeout(Duration::from_secs(5), report).await.expect("answered while the group waits");
    assert_eq!((report.status, report.body["recorded"].clone()), (StatusCode::OK, json!(true)), "{}", report.body);

    holder.batch_execute("ROLLBACK").await.expect("release");
    let first = tokio::time::timeout(Duration::from_secs(10), first).await.expect("answered");
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
}
