//! The Connections page (`/`, `/sign-in`, `/assets/…`): static files
//! embedded in the binary, served with a strict Content-Security-Policy,
//! and the session endpoints that turn a user token into an HttpOnly cookie.
//!
//! Plain HTML, CSS and one script module, no build step: the page is a thin
//! client of the documented API (read models, commands, SSE), small enough
//! to read in one sitting, and the binary builds without node.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::{UserSession, SESSION_COOKIE};
use crate::problem::ApiError;

/// What the page may load and do: only this server's own scripts, styles,
/// connections and images; no inline script or style, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../../page/index.html");
const SIGN_IN: &str = include_str!("../../page/sign-in.html");
const APP_JS: &str = include_str!("../../page/app.js");
const SIGN_IN_JS: &str = include_str!("../../page/sign-in.js");
const APP_CSS: &str = include_str!("../../page/app.css");

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the page.
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /sign-in`: takes a token from the URL fragment (or a pasted one)
/// and signs in.
pub async fn sign_in() -> Response {
    file("text/html; charset=utf-8", SIGN_IN)
}

/// `GET /assets/{name}`.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(match name.as_str() {
        "app.js" => file("text/javascript; charset=utf-8", APP_JS),
        "sign-in.js" => file("text/javascript; charset=utf-8", SIGN_IN_JS),
        "app.css" => file("text/css; charset=utf-8", APP_CSS),
        _ => return Err(ApiError::NoRoute),
    })
}

/// `POST /v1/session` (bearer user token): sets the session cookie for the
/// page, valid as long as the token.
pub async fn create(session: UserSession, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized("POST /v1/session needs the token in the Authorization header"))?;
    let max_age = (session.expires_at - chrono::Utc::now().timestamp()).max(0);
    let cookie =
        format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}", secure(&headers));
    let mut response = Json(json!({"user": session.owner, "expires_at": session.expires_at})).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(Box::new(e)))?);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /v1/session`: who is signed in, and until when.
pub async fn show(session: UserSession) -> Response {
    Json(json!({"user": session.owner, "expires_at": session.expires_at})).into_response()
}

/// `DELETE /v1/session`: signs out (the cookie is cleared; the token itself
/// stays valid until it expires, as bearer tokens do).
pub async fn delete(headers: HeaderMap) -> Response {
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", secure(&headers));
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `; Secure` when the request reached us over TLS (a TLS-terminating proxy
/// says so in `X-Forwarded-Proto`).
fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    if https {
        "; Secure"
    } else {
        ""
    }
}
