//! Master key rotation against the real database: a keyring unwraps under
//! old and new ids; `rekey::rewrap_all` moves every live data key to the
//! current key while commands and resolves run, beside revokes and a second
//! rewrapper, recording `data_key_rewrapped`; afterwards the old key can be
//! removed and every active connection still resolves; derived keys
//! (idempotency) keep working; an unknown key id fails closed.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use connections_api::rekey;
use connections_sealing::MasterKey;
use serde_json::json;

use crate::TestApp;

fn key(id: &str) -> MasterKey {
    MasterKey::from_base64(id, &MasterKey::generate_base64().expect("random")).expect("valid key")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.db.client().await.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Alice's connections on `services` services, each bound to agent `a<n>`.
async fn connections(app: &TestApp, services: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..services {
        ids.push(app.create("alice", &format!("svc-{n}"), Some(&format!("a{n}"))).await);
    }
    ids
}

fn keyed_create(app: &TestApp, key: &str) -> Request<Body> {
    let body = json!({"service": "keyed", "name": "K", "credential": {"kind": "api_key", "key": "k"}});
    Request::builder()
        .method(Method::POST)
        .uri("/v1/connections")
        .header("authorization", format!("Bearer {}", app.token("alice")))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_moves_every_live_key_and_the_old_key_can_then_be_removed() {
    let mut app = TestApp::new().await;
    let old = (*app.master_key).clone();
    let ids = connections(&app, 12).await;
    let first = app.raw(keyed_create(&app, "rotation-key")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    app.send(Method::DELETE, format!("/v1/connections/{}", ids[0]), Some("alice"), None).await;

    // The keyring: k2 current, the old key still unwrapping, purpose keys
    // derived from the old material.
    let new = key("k2");
    let ring = new.clone().with_previous(vec![old.clone()]).expect("distinct").deriving_from(&old);
    app.use_master_key(Arc::new(ring));
    let answer = app.resolve("a3", "alice", "svc-3").await;
    assert_eq!(answer.status, StatusCode::OK, "old keys unwrap before the rewrap: {}", answer.body);
    let created = app.create("alice", "svc-new", Some("a-new")).await;
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM data_keys WHERE master_key_id = 'k2' AND connection_id = '{created}'")
        )
        .await,
        1
    );

    let report = rekey::rewrap_all(&app.state, 5, 4).await.expect("rewrap");
    assert_eq!(report.rewrapped, 12, "11 active + the keyed one; the revoked one has no key: {report:?}");
    assert_eq!(report.remaining, vec![("k2".to_owned(), 13)]);
    assert_eq!(count(&app, "SELECT count(*) FROM events WHERE event_type = 'data_key_rewrapped'").await, 12);
    let actor: String = app
        .db
        .client()
        .await
        .query_one("SELECT metadata->>'actor' FROM events WHERE event_type = 'data_key_rewrapped' LIMIT 1", &[])
        .await
        .expect("event")
        .get(0);
    assert_eq!(actor, "service:rekey");
    let again = rekey::rewrap_all(&app.state, 5, 4).await.expect("rewrap again");
    assert_eq!((again.rewrapped, again.skipped), (0, 0), "nothing left: running it again is harmless");

    // The old key removed: every active connection resolves; the derived
    // idempotency key still recognizes a retry made before the rotation.
    app.use_master_key(Arc::new(new.deriving_from(&old)));
    for n in 1..12 {
        let answer = app.resolve(&format!("a{n}"), "alice", &format!("svc-{n}")).await;
        assert_eq!(answer.status, StatusCode::OK, "svc-{n}: {}", answer.body);
    }
    let retry = app.raw(keyed_create(&app, "rotation-key")).await;
    assert_eq!(
        (retry.status, retry.body["connection_id"].clone()),
        (StatusCode::CREATED, first.body["connection_id"].clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rewrappers_beside_commands_resolves_and_revokes_move_each_key_once_and_nothing_fails() {
    let mut app = TestApp::new().await;
    let old = (*app.master_key).clone();
    let ids = connections(&app, 40).await;
    app.use_master_key(Arc::new(key("k2").with_previous(vec![old.clone()]).expect("distinct").deriving_from(&old)));

    let load = async {
        let mut statuses = Vec::new();
        for n in 0..40 {
            let resolved = app.resolve(&format!("a{n}"), "alice", &format!("svc-{n}")).await;
            assert_eq!(resolved.status, StatusCode::OK, "a resolve during the rewrap: {}", resolved.body);
            if n % 4 == 0 {
                let revoked =
                    app.send(Method::DELETE, format!("/v1/connections/{}", ids[n]), Some("alice"), None).await;
                statuses.push(revoked.status);
            }
            let assigned = app
                .send(
                    Method::POST,
                    format!("/v1/connections/{}/agents", ids[(n + 1) % 40]),
                    Some("alice"),
                    Some(json!({"agent_id": format!("b{n}")})),
                )
                .await;
            statuses.push(assigned.status);
        }
        statuses
    };
    let (first, second, statuses) =
        tokio::join!(rekey::rewrap_all(&app.state, 7, 4), rekey::rewrap_all(&app.state, 7, 4), load);
    let (first, second) = (first.expect("first rewrapper"), second.expect("second rewrapper"));
    for status in &statuses {
        assert!(
            matches!(*status, StatusCode::OK | StatusCode::CONFLICT),
            "a command or resolve failed during the rewrap: {status}"
        );
    }
    // Only an assignment to a connection revoked earlier in the run is refused.
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 1, "{statuses:?}");
    // Every live key is under k2, each moved exactly once; revoked ones are gone.
    assert_eq!(count(&app, "SELECT count(*) FROM data_keys WHERE master_key_id <> 'k2'").await, 0);
    let moved = count(&app, "SELECT count(*) FROM events WHERE event_type = 'data_key_rewrapped'").await;
    let distinct = count(
        &app,
        "SELECT count(DISTINCT data->>'connection_id') FROM events WHERE event_type = 'data_key_rewrapped'",
    )
    .await;
    assert_eq!(moved, distinct, "no key moved twice");
    assert_eq!(moved as usize, first.rewrapped + second.rewrapped);
    let revoked_with_key = count(
        &app,
        "SELECT count(*) FROM data_keys d JOIN events e ON e.data->>'connection_id' = d.connection_id::text \
         WHERE e.event_type = 'connection_revoked'",
    )
    .await;
    assert_eq!(revoked_with_key, 0, "a revoked connection's key stays destroyed");
    assert_eq!(count(&app, "SELECT count(*) FROM data_keys").await, 30);
}

#[tokio::test]
async fn a_data_key_under_a_key_the_keyring_does_not_hold_fails_closed() {
    let mut app = TestApp::new().await;
    app.create("alice", "github", Some("a1")).await;
    app.use_master_key(Arc::new(key("k3")));
    let answer = app.resolve("a1", "alice", "github").await;
    answer.assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(answer.body.get("credential").is_none());
    let report = rekey::rewrap_all(&app.state, 10, 2).await.expect("rewrap");
    assert_eq!(report.rewrapped, 0, "keys under an unknown id are left alone");
    assert_eq!(report.remaining, vec![("test".to_owned(), 1)], "and reported");
}
