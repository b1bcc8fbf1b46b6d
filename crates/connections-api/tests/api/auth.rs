//! Every endpoint needs a valid, unexpired user token.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use connections_api::auth::Claims;
use jsonwebtoken::{EncodingKey, Header};

use crate::TestApp;

fn request(path: &str, authorization: Option<String>) -> Request<Body> {
    let mut builder = Request::builder().method(Method::GET).uri(path);
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(Body::empty()).expect("request")
}

#[tokio::test]
async fn missing_malformed_forged_expired_and_agent_tokens_are_refused() {
    let app = TestApp::new().await;
    let path = format!("/v1/connections/{}", uuid::Uuid::now_v7());
    let sign = |claims: &Claims, secret: &[u8]| {
        jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(secret)).expect("sign")
    };
    let now = chrono::Utc::now().timestamp();
    let cases = [
        ("missing", None),
        ("not bearer", Some(format!("Basic {}", "YWxpY2U6cGFzcw=="))),
        ("garbage", Some("Bearer not.a.jwt".to_owned())),
        (
            "forged",
            Some(format!(
                "Bearer {}",
                sign(
                    &Claims { sub: "alice".into(), exp: now + 60, role: None, owner: None },
                    b"another-secret-of-at-least-32-bytes!!"
                )
            )),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign(&Claims { sub: "alice".into(), exp: now - 600, role: None, owner: None }, app.secret())
            )),
        ),
        (
            "agent role",
            Some(format!(
                "Bearer {}",
                sign(
                    &Claims {
                        sub: "agent-1".into(),
                        exp: now + 60,
                        role: Some("agent".into()),
                        owner: Some("alice".into())
                    },
                    app.secret()
                )
            )),
        ),
        (
            "invalid subject",
            Some(format!(
                "Bearer {}",
                sign(&Claims { sub: "al ice".into(), exp: now + 60, role: None, owner: None }, app.secret())
            )),
        ),
    ];
    for (case, authorization) in cases {
        let answer = app.raw(request(&path, authorization)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{case}");
        answer.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(answer.headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"), "{case}");
    }
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let app = TestApp::new().await;
    #[derive(serde::Serialize)]
    struct NoExp {
        sub: String,
    }
    let token = jsonwebtoken::encode(
        &Header::default(),
        &NoExp { sub: "alice".into() },
        &EncodingKey::from_secret(app.secret()),
    )
    .expect("sign");
    let answer = app.raw(request("/v1/connections/x", Some(format!("Bearer {token}")))).await;
    answer.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

/// Behind an identity provider: with an audience and an issuer configured,
/// tokens must carry both; `nbf` is honoured either way.
#[tokio::test]
async fn audience_issuer_and_not_before_are_enforced_when_configured() {
    let mut app = TestApp::new().await;
    let secret = app.secret().to_vec();
    app.router = connections_api::router(connections_api::AppState {
        database: app.db.database.clone(),
        reads: app.db.database.clone(),
        master_key: app.master_key.clone(),
        authenticator: std::sync::Arc::new(
            connections_api::auth::Authenticator::hs256(&secret)
                .expect("secret")
                .with_audience("connections")
                .with_issuer("https://idp.example"),
        ),
        signals: connections_fanout::Signals::new(),
        runtime_nats: crate::runtime_nats(),
        settings: Default::default(),
        lifecycle: Default::default(),
    });
    let now = chrono::Utc::now().timestamp();
    let token = |extra: serde_json::Value| {
        let mut claims = serde_json::json!({"sub": "alice", "exp": now + 60});
        for (key, value) in extra.as_object().expect("object") {
            claims[key] = value.clone();
        }
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(&secret)).expect("sign")
    };
    let path = format!("/v1/connections/{}", uuid::Uuid::now_v7());
    let good = serde_json::json!({"aud": "connections", "iss": "https://idp.example"});
    // A valid token reaches the handler (a 404 for an unknown connection).
    let answer = app.raw(request(&path, Some(format!("Bearer {}", token(good.clone()))))).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    let minted = connections_api::auth::mint_token(
        &secret,
        &Claims { sub: "alice".into(), exp: now + 60, role: None, owner: None },
        Some("connections"),
        Some("https://idp.example"),
    )
    .expect("mint");
    assert_eq!(app.raw(request(&path, Some(format!("Bearer {minted}")))).await.status, StatusCode::NOT_FOUND);
    for (case, claims) in [
        ("no audience", serde_json::json!({"iss": "https://idp.example"})),
        ("another audience", serde_json::json!({"aud": "other", "iss": "https://idp.example"})),
        ("no issuer", serde_json::json!({"aud": "connections"})),
        ("another issuer", serde_json::json!({"aud": "connections", "iss": "https://evil.example"})),
        ("not yet valid", serde_json::json!({"aud": "connections", "iss": "https://idp.example", "nbf": now + 600})),
    ] {
        let answer = app.raw(request(&path, Some(format!("Bearer {}", token(claims))))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{case}: {}", answer.body);
        answer.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused_without_configuration_too() {
    let app = TestApp::new().await;
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now + 300});
    let token =
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(app.secret())).expect("sign");
    let answer =
        app.raw(request(&format!("/v1/connections/{}", uuid::Uuid::now_v7()), Some(format!("Bearer {token}")))).await;
    answer.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(answer.body["detail"].as_str().is_some_and(|d| d.contains("nbf")), "{}", answer.body);
    // A token with an `aud` is accepted when no audience is configured.
    let claims = serde_json::json!({"sub": "alice", "exp": now + 600, "aud": "anything"});
    let token =
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(app.secret())).expect("sign");
    let answer =
        app.raw(request(&format!("/v1/connections/{}", uuid::Uuid::now_v7()), Some(format!("Bearer {token}")))).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}
