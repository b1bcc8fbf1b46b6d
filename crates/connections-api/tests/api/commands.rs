//! The command endpoints do what the product page promises.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::TestApp;

#[tokio::test]
async fn create_with_an_agent_assigns_it_and_never_returns_the_secret() {
    let app = TestApp::new().await;
    let body = json!({
        "service": "google-calendar", "name": "Work calendar", "agent_id": "agent-1", "skill": "calendar-connector",
        "credential": {"kind": "oauth2", "access_token": "ya29.canary-create", "scopes": ["calendar.read"]}
    });
    let answer = app.send(Method::POST, "/v1/connections", Some("alice"), Some(body)).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body["service"], "google-calendar");
    assert_eq!(answer.body["status"], "active");
    assert_eq!(answer.body["credential_kind"], "oauth2");
    assert_eq!(answer.body["agents"], json!([{"agent_id": "agent-1", "source": "created"}]));
    assert!(answer.body["position"].as_i64().expect("position") > 0);
    assert!(!answer.body.to_string().contains("canary-create"), "the answer leaked the secret");
    let id = answer.body["connection_id"].as_str().expect("id");
    assert_eq!(uuid::Uuid::parse_str(id).expect("uuid").get_version_num(), 7, "ids are UUIDv7");
}

#[tokio::test]
async fn show_returns_status_default_flag_and_agents_with_since() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let answer = app.send(Method::GET, &format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["is_default"], false);
    assert_eq!(answer.body["agents"][0]["agent_id"], "agent-1");
    assert!(answer.body["agents"][0]["since"].is_string(), "usage overview shows since when");
    assert!(answer.body["created_at"].is_string());
}

#[tokio::test]
async fn assigning_replaces_the_agents_previous_connection_for_the_service() {
    let app = TestApp::new().await;
    let first = app.create("alice", "github", Some("agent-1")).await;
    let second = app.create("alice", "github", None).await;
    let answer = app
        .send(
            Method::POST,
            &format!("/v1/connections/{second}/agents"),
            Some("alice"),
            Some(json!({"agent_id": "agent-1"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["agents"], json!([{"agent_id": "agent-1", "source": "assigned"}]));
    let old = app.send(Method::GET, &format!("/v1/connections/{first}"), Some("alice"), None).await;
    assert_eq!(old.body["agents"], json!([]), "the replaced binding must end");
    let reasons: Vec<String> = app
        .db
        .client()
        .await
        .query("SELECT data->>'reason' FROM events WHERE event_type = 'agent_unassigned'", &[])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, vec!["replaced"], "the replacement is an explicit event");
}

#[tokio::test]
async fn unassign_ends_the_binding() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let answer = app.send(Method::DELETE, &format!("/v1/connections/{id}/agents/agent-1"), Some("alice"), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["agents"], json!([]));
}

#[tokio::test]
async fn revoking_the_default_clears_it_names_the_agents_and_answers_the_same_twice() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    app.send(
        Method::POST,
        &format!("/v1/connections/{id}/agents"),
        Some("alice"),
        Some(json!({"agent_id": "agent-2"})),
    )
    .await;
    let set =
        app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": id}))).await;
    assert_eq!(set.body["default_connection_id"], json!(id));

    let first = app.send(Method::DELETE, &format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["status"], "revoked");
    assert_eq!(first.body["affected_agents"], json!(["agent-1", "agent-2"]));
    assert_eq!(first.body["is_default"], false);
    let events = app.event_count().await;

    let second = app.send(Method::DELETE, &format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, first.body, "revoking twice answers the same");
    assert_eq!(app.event_count().await, events, "revoking twice appends nothing");

    let cleared = app
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE event_type = 'default_cleared' AND data->>'reason' = 'revoked'",
            &[],
        )
        .await
        .expect("q");
    assert_eq!(cleared.get::<_, i64>(0), 1);
}

#[tokio::test]
async fn a_revoked_connection_cannot_be_assigned_made_default_or_rotated() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", None).await;
    app.send(Method::DELETE, &format!("/v1/connections/{id}"), Some("alice"), None).await;
    let events = app.event_count().await;
    let assign = app
        .send(Method::POST, &format!("/v1/connections/{id}/agents"), Some("alice"), Some(json!({"agent_id": "a"})))
        .await;
    assign.assert_problem(StatusCode::CONFLICT, "connection-revoked");
    let default =
        app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": id}))).await;
    default.assert_problem(StatusCode::CONFLICT, "connection-revoked");
    let rotate = app
        .send(
            Method::PUT,
            &format!("/v1/connections/{id}/credential"),
            Some("alice"),
            Some(json!({"credential": {"kind": "api_key", "key": "new"}})),
        )
        .await;
    rotate.assert_problem(StatusCode::CONFLICT, "connection-revoked");
    assert_eq!(app.event_count().await, events);
}

#[tokio::test]
async fn rotate_seals_a_new_version_and_clear_default_removes_it() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", None).await;
    let rotate = app
        .send(
            Method::PUT,
            &format!("/v1/connections/{id}/credential"),
            Some("alice"),
            Some(json!({"credential": {"kind": "basic", "username": "u", "password": "p"}})),
        )
        .await;
    assert_eq!(rotate.status, StatusCode::OK);
    assert_eq!(rotate.body["credential_version"], 2);
    assert_eq!(rotate.body["credential_kind"], "basic");
    let versions: i64 =
        app.db.client().await.query_one("SELECT count(*) FROM sealed_credentials", &[]).await.expect("count").get(0);
    assert_eq!(versions, 2);

    app.send(Method::PUT, "/v1/services/github/default", Some("alice"), Some(json!({"connection_id": id}))).await;
    let clear = app.send(Method::DELETE, "/v1/services/github/default", Some("alice"), None).await;
    assert_eq!(clear.status, StatusCode::OK);
    assert_eq!(clear.body["default_connection_id"], serde_json::Value::Null);
}

#[tokio::test]
async fn every_command_answer_carries_the_position_of_its_last_event() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let answer = app.send(Method::DELETE, &format!("/v1/connections/{id}"), Some("alice"), None).await;
    let head: i64 =
        app.db.client().await.query_one("SELECT max(position) FROM events", &[]).await.expect("head").get(0);
    assert_eq!(answer.body["position"], head);
}

#[tokio::test]
async fn history_lists_every_event_about_the_connection_in_order_with_actors() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", Some("agent-1")).await;
    let other = app.create("alice", "github", None).await;
    app.send(
        Method::PUT,
        format!("/v1/connections/{id}/credential"),
        Some("alice"),
        Some(json!({"credential": {"kind": "api_key", "key": "rotated-secret"}})),
    )
    .await;
    app.send(Method::DELETE, format!("/v1/connections/{id}"), Some("alice"), None).await;
    let history = app.send(Method::GET, format!("/v1/connections/{id}/history"), Some("alice"), None).await;
    assert_eq!(history.status, StatusCode::OK);
    let types: Vec<&str> = history.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    // The revoke is one event: the binding it ends is in its affected agents.
    assert_eq!(types, vec!["connection_created", "agent_assigned", "credential_rotated", "connection_revoked"]);
    let revoked = &history.body["events"][3];
    assert_eq!(revoked["schema_version"], 3);
    assert_eq!(revoked["data"]["affected_agents"], json!(["agent-1"]));
    assert!(history.body["events"].as_array().expect("events").iter().all(|e| e["actor"] == "alice"));
    assert!(!history.body.to_string().contains(&other), "another connection's events do not belong here");
    assert!(!history.body.to_string().contains("rotated-secret"), "history never carries secrets");

    // Isolation and bad input.
    let bob = app.send(Method::GET, format!("/v1/connections/{id}/history"), Some("bob"), None).await;
    bob.assert_problem(StatusCode::NOT_FOUND, "not-found");
    let absent =
        app.send(Method::GET, format!("/v1/connections/{}/history", uuid::Uuid::now_v7()), Some("bob"), None).await;
    assert_eq!(absent.body, bob.body);
    app.send(Method::GET, "/v1/connections/nope/history", Some("alice"), None)
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    assert_eq!(history.body["next_cursor"], Value::Null, "one page holds it all");

    // A page at a time: the pages together are the whole history, in order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(cursor) => format!("/v1/connections/{id}/history?limit=2&cursor={cursor}"),
            None => format!("/v1/connections/{id}/history?limit=2"),
        };
        let page = app.send(Method::GET, path, Some("alice"), None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let events = page.body["events"].as_array().expect("events").clone();
        assert!(events.len() <= 2);
        paged.extend(events.into_iter().map(|e| e["event_type"].as_str().expect("type").to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, types);
    // Another user's cursor walk of alice's history is still a 404.
    let bob_page =
        app.send(Method::GET, format!("/v1/connections/{id}/history?limit=1&cursor=1:1"), Some("bob"), None).await;
    assert_eq!(bob_page.body, bob.body);
    for (query, field) in
        [("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"), ("cursor=x", "cursor"), ("page=2", "page")]
    {
        let answer = app.send(Method::GET, format!("/v1/connections/{id}/history?{query}"), Some("alice"), None).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{query}");
    }
}

#[tokio::test]
async fn a_connection_used_by_more_agents_than_an_answer_lists_says_so() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", None).await;
    let mut answer = None;
    for n in (0..102).rev() {
        let body = json!({"agent_id": format!("agent-{n:03}")});
        let assigned = app.send(Method::POST, format!("/v1/connections/{id}/agents"), Some("alice"), Some(body)).await;
        assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.body);
        answer = Some(assigned.body);
    }
    let expected: Vec<String> = (0..100).map(|n| format!("agent-{n:03}")).collect();
    let listed = |view: &Value| -> Vec<String> {
        view["agents"].as_array().expect("agents").iter().map(|a| a["agent_id"].as_str().expect("id").into()).collect()
    };
    let answer = answer.expect("assigned");
    assert_eq!(listed(&answer), expected, "the first 100 agents by id");
    assert_eq!(answer["agents_truncated"], true);
    let shown = app.send(Method::GET, format!("/v1/connections/{id}"), Some("alice"), None).await;
    assert_eq!((listed(&shown.body), &shown.body["agents_truncated"]), (expected, &json!(true)));
    // 101 left: still more than listed; the 101st moves up into the list.
    let unassigned =
        app.send(Method::DELETE, format!("/v1/connections/{id}/agents/agent-050"), Some("alice"), None).await;
    assert_eq!(unassigned.status, StatusCode::OK, "{}", unassigned.body);
    let mut expected: Vec<String> = (0..101).filter(|n| *n != 50).map(|n| format!("agent-{n:03}")).collect();
    assert_eq!((listed(&unassigned.body), &unassigned.body["agents_truncated"]), (expected.clone(), &json!(true)));
    // 100 left: the answer lists them all, and says nothing more.
    let unassigned =
        app.send(Method::DELETE, format!("/v1/connections/{id}/agents/agent-051"), Some("alice"), None).await;
    expected.retain(|agent| agent != "agent-051");
    expected.push("agent-101".into());
    assert_eq!(listed(&unassigned.body), expected);
    assert!(unassigned.body.get("agents_truncated").is_none(), "{}", unassigned.body);
}
