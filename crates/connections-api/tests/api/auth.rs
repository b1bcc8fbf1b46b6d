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
