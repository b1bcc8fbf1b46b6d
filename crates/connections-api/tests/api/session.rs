//! The page's session: a user token becomes an HttpOnly, SameSite=Strict
//! cookie; the cookie authenticates user endpoints, commands only with the
//! page's header (CSRF), never agent endpoints; the page and its assets are
//! served with a strict CSP.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::{Answer, TestApp};

async fn with_cookie(app: &TestApp, method: Method, path: &str, cookie: &str, page_header: bool) -> Answer {
    let mut request = Request::builder().method(method).uri(path).header("cookie", cookie);
    if page_header {
        request = request.header("x-connections-page", "1");
    }
    app.raw(request.body(Body::empty()).expect("request")).await
}

async fn session_cookie(app: &TestApp, user: &str) -> String {
    let answer = app.send(Method::POST, "/v1/session", Some(user), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    crate::openapi::assert_documented(&crate::openapi::document(), "post", "/v1/session", &answer);
    assert_eq!(answer.body["user"], user);
    let cookie = answer.headers["set-cookie"].to_str().expect("ascii").to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/;"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: no Secure attribute");
    cookie.split(';').next().expect("pair").to_owned()
}

#[tokio::test]
async fn a_session_cookie_reads_and_commands_only_with_the_page_header() {
    let app = TestApp::new().await;
    let id = app.create("alice", "github", None).await;
    let cookie = session_cookie(&app, "alice").await;
    let shown = with_cookie(&app, Method::GET, "/v1/session", &cookie, false).await;
    assert_eq!(shown.body["user"], "alice");
    let read = with_cookie(&app, Method::GET, &format!("/v1/connections/{id}"), &cookie, false).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);

    let fingerprint = app.fingerprint().await;
    let forged = with_cookie(&app, Method::DELETE, &format!("/v1/connections/{id}"), &cookie, false).await;
    forged.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(forged.body["detail"].as_str().expect("detail").contains("X-Connections-Page"), "{}", forged.body);
    assert_eq!(app.fingerprint().await, fingerprint, "nothing revoked");
    let revoked = with_cookie(&app, Method::DELETE, &format!("/v1/connections/{id}"), &cookie, true).await;
    assert_eq!((revoked.status, revoked.body["status"].clone()), (StatusCode::OK, json!("revoked")));

    // Bob's cookie: alice's connection does not exist for him.
    let bob = session_cookie(&app, "bob").await;
    let foreign = with_cookie(&app, Method::GET, &format!("/v1/connections/{id}"), &bob, false).await;
    foreign.assert_problem(StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn a_session_needs_a_valid_user_token_and_never_serves_agents() {
    let app = TestApp::new().await;
    app.send(Method::POST, "/v1/session", None, None).await.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let agent = Request::builder()
        .method(Method::POST)
        .uri("/v1/session")
        .header("authorization", format!("Bearer {}", app.agent_token("a1", "alice")))
        .body(Body::empty())
        .expect("request");
    app.raw(agent).await.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let garbage = with_cookie(&app, Method::GET, "/v1/session", "connections_session=not-a-token", false).await;
    garbage.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    // An agent endpoint ignores the cookie.
    let cookie = session_cookie(&app, "alice").await;
    let resolve = Request::builder()
        .method(Method::POST)
        .uri("/v1/resolve")
        .header("cookie", &cookie)
        .header("x-connections-page", "1")
        .header("content-type", "application/json")
        .body(Body::from(json!({"service": "github"}).to_string()))
        .expect("request");
    app.raw(resolve).await.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let signed_out = with_cookie(&app, Method::DELETE, "/v1/session", &cookie, true).await;
    assert_eq!(signed_out.status, StatusCode::NO_CONTENT);
    assert!(signed_out.headers["set-cookie"].to_str().expect("ascii").contains("Max-Age=0"));
}

#[tokio::test]
async fn the_page_and_its_assets_carry_a_strict_content_security_policy() {
    let app = TestApp::new().await;
    for (path, media) in [
        ("/", "text/html"),
        ("/sign-in", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/sign-in.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let answer = app.send(Method::GET, path, None, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert!(answer.headers["content-type"].to_str().expect("ascii").starts_with(media), "{path}");
        let csp = answer.headers["content-security-policy"].to_str().expect("ascii");
        assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'") && !csp.contains("unsafe"));
        assert_eq!(answer.headers["x-content-type-options"], "nosniff");
    }
    let missing = app.send(Method::GET, "/assets/../Cargo.toml", None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    app.send(Method::GET, "/assets/nothing.js", None, None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "no-such-route");
}
