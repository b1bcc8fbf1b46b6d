//! `POST /v1/runtime/nats-credentials`: only a valid agent token obtains
//! NATS credentials, and they cover exactly its own (owner, agent).

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use connections_api::auth::Claims;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use crate::{Answer, TestApp};

const PATH: &str = "/v1/runtime/nats-credentials";

async fn ask(app: &TestApp, authorization: Option<String>, body: &str) -> Answer {
    let mut builder = Request::builder().method(Method::POST).uri(PATH).header("content-type", "application/json");
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    app.raw(builder.body(Body::from(body.to_owned())).expect("request")).await
}

/// The answer's schema in `schemas/openapi.json`.
fn answer_schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/openapi.json");
    let document: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON");
    jsonschema::validator_for(&document["components"]["schemas"]["RuntimeCredentials"]).expect("schema compiles")
}

fn claims_of(jwt: &Value) -> Value {
    connections_natsauth::jwt::decode(jwt.as_str().expect("a JWT")).expect("a JWT that verifies")
}

#[tokio::test]
async fn an_agent_token_obtains_credentials_for_its_own_notices_only() {
    let app = TestApp::new().await;
    let (public_key, _) = connections_natsauth::new_user_key();
    let token = format!("Bearer {}", app.agent_token("agent-1", "alice"));
    let answer = ask(&app, Some(token.clone()), &json!({ "public_key": public_key }).to_string()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    let schema = answer_schema();
    assert!(schema.is_valid(&answer.body), "{}", answer.body);
    assert_eq!((answer.body["owner"].clone(), answer.body["agent"].clone()), (json!("alice"), json!("agent-1")));
    assert!(answer.body.get("seed").is_none(), "a runtime that brings its key gets no seed");
    let claims = claims_of(&answer.body["jwt"]);
    assert_eq!(claims["sub"], public_key);
    assert_eq!(
        claims["nats"]["pub"],
        json!({"allow": ["connections.v2.sync.alice.agent-1"]}),
        "runtimes publish only to their own echo subject"
    );
    assert_eq!(
        claims["nats"]["sub"]["allow"],
        json!([
            "connections.v2.notices.alice.agent.agent-1",
            "connections.v2.notices.alice.connection.*",
            "connections.v2.sync.alice.agent-1"
        ])
    );
    assert_eq!(answer.body["subscribe"], claims["nats"]["sub"]["allow"]);
    let expires = claims["exp"].as_i64().expect("exp");
    let now = chrono::Utc::now().timestamp();
    assert!((now + 290..=now + 310).contains(&expires), "5-minute credentials, got {}", expires - now);

    // Without a key, the server makes one and hands its seed out once.
    let answer = ask(&app, Some(token), "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(schema.is_valid(&answer.body), "{}", answer.body);
    let seed = answer.body["seed"].as_str().expect("a seed");
    assert!(seed.starts_with("SU"));
    assert_eq!(claims_of(&answer.body["jwt"])["sub"], nkeys::KeyPair::from_seed(seed).expect("seed").public_key());

    // Bob's runtime gets bob's subjects, whatever it asks.
    let answer = ask(&app, Some(format!("Bearer {}", app.agent_token("agent-1", "bob"))), "{}").await;
    let allowed = claims_of(&answer.body["jwt"])["nats"]["sub"]["allow"].to_string();
    assert!(allowed.contains(".bob.") && !allowed.contains("alice"), "{allowed}");
}

#[tokio::test]
async fn credentials_never_outlive_the_agent_token() {
    let app = TestApp::new().await;
    let exp = chrono::Utc::now().timestamp() + 30;
    let claims = Claims { sub: "agent-1".into(), exp, role: Some("agent".into()), owner: Some("alice".into()) };
    let token =
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(app.secret())).expect("sign");
    let answer = ask(&app, Some(format!("Bearer {token}")), "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(claims_of(&answer.body["jwt"])["exp"], exp);
}

#[tokio::test]
async fn expired_forged_malformed_and_user_tokens_obtain_nothing() {
    let app = TestApp::new().await;
    let now = chrono::Utc::now().timestamp();
    let agent =
        |exp: i64| Claims { sub: "agent-1".into(), exp, role: Some("agent".into()), owner: Some("alice".into()) };
    let sign = |claims: &Claims, secret: &[u8]| {
        jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(secret)).expect("sign")
    };
    let cases = [
        ("missing", None),
        ("garbage", Some("Bearer not.a.jwt".to_owned())),
        ("expired", Some(format!("Bearer {}", sign(&agent(now - 600), app.secret())))),
        ("wrong key", Some(format!("Bearer {}", sign(&agent(now + 60), b"another-secret-of-at-least-32-bytes!!")))),
        ("user token", Some(format!("Bearer {}", app.token("alice")))),
        (
            "agent token without owner",
            Some(format!(
                "Bearer {}",
                sign(
                    &Claims { sub: "agent-1".into(), exp: now + 60, role: Some("agent".into()), owner: None },
                    app.secret()
                )
            )),
        ),
    ];
    for (case, authorization) in cases {
        let answer = ask(&app, authorization, "{}").await;
        answer.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(answer.body.get("jwt").is_none(), "{case}: {}", answer.body);
    }
}

#[tokio::test]
async fn bad_requests_name_the_problem_and_issue_nothing() {
    let app = TestApp::new().await;
    let bearer = format!("Bearer {}", app.agent_token("agent-1", "alice"));
    let token = Some(bearer.clone());
    let account_key = nkeys::KeyPair::new_account().public_key();
    for (body, field) in [
        (json!({"public_key": "UNOTAKEY"}), "public_key"),
        (json!({"public_key": account_key}), "public_key"),
        (json!({"public_key": 42}), "public_key"),
        (json!({"owner": "bob"}), "owner"),
        (json!({"agent_id": "agent-2"}), "agent_id"),
    ] {
        let answer = ask(&app, token.clone(), &body.to_string()).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
        assert_eq!(answer.body["field"], field, "{body}");
        assert!(answer.body.get("jwt").is_none());
    }
    ask(&app, token.clone(), "{not json").await.assert_problem(StatusCode::BAD_REQUEST, "malformed-json");
    ask(&app, token.clone(), "[]").await.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    let request = Request::builder()
        .method(Method::POST)
        .uri(PATH)
        .header("authorization", bearer)
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .expect("request");
    app.raw(request).await.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
}

/// Without NATS authentication (development) the answer carries no JWT, and
/// a malformed key is still refused: the contract does not change with the mode.
#[tokio::test]
async fn the_insecure_mode_answers_without_a_jwt_and_still_checks_the_key() {
    let mut app = TestApp::new().await;
    let runtime_nats = connections_api::runtime_nats::RuntimeNats { issuer: None, ..(*crate::runtime_nats()).clone() };
    app.router = connections_api::router(connections_api::AppState {
        database: app.db.database.clone(),
        reads: app.db.database.clone(),
        master_key: app.master_key.clone(),
        authenticator: std::sync::Arc::new(
            connections_api::auth::Authenticator::hs256(app.secret()).expect("valid secret"),
        ),
        signals: connections_fanout::Signals::new(),
        runtime_nats: std::sync::Arc::new(runtime_nats),
        settings: Default::default(),
        lifecycle: Default::default(),
    });
    let token = Some(format!("Bearer {}", app.agent_token("agent-1", "alice")));
    let answer = ask(&app, token.clone(), "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!((answer.body["jwt"].clone(), answer.body["expires_at"].clone()), (Value::Null, Value::Null));
    assert!(answer_schema().is_valid(&answer.body), "{}", answer.body);
    let refused = ask(&app, token, &json!({"public_key": "not-a-key"}).to_string()).await;
    refused.assert_problem(StatusCode::BAD_REQUEST, "invalid-input");
    assert_eq!(refused.body["field"], "public_key");
}
