//! The OAuth 2.0 authorization-code flow with PKCE (RFC 6749 §4.1, RFC 7636),
//! as a client of the configured providers: what is derived from the master
//! key, the authorization URL, and the code exchange.
//!
//! Nothing secret is stored for a pending flow: the `state` and the browser
//! cookie are kept as keyed fingerprints, and the PKCE verifier is derived
//! from the state under the master key when the callback comes.

use std::time::Duration;

use base64::Engine;
use connections_sealing::{MasterKey, Secret};
use reqwest::Url;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::providers::Provider;

/// How long a connect's `state` may be used.
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// The cookie that binds a flow to the browser that started it.
pub const BROWSER_COOKIE: &str = "connections_oauth";

/// How long the token endpoint may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a `state`.
pub fn state_hash(master_key: &MasterKey, state: &str) -> Vec<u8> {
    master_key.fingerprint_key("oauth-state").fingerprint(&[state.as_bytes()]).to_vec()
}

/// The stored form of a browser cookie.
pub fn browser_hash(master_key: &MasterKey, cookie: &str) -> Vec<u8> {
    master_key.fingerprint_key("oauth-browser").fingerprint(&[cookie.as_bytes()]).to_vec()
}

/// The PKCE verifier of a flow: 43 base64url characters derived from its
/// state under the master key (RFC 7636 §4.1 allows 43–128 unreserved).
pub fn verifier(master_key: &MasterKey, state: &str) -> Secret {
    Secret::new(b64(&master_key.fingerprint_key("oauth-pkce").fingerprint(&[state.as_bytes()])))
}

/// The S256 challenge of a verifier.
pub fn challenge(verifier: &Secret) -> String {
    b64(&Sha256::digest(verifier.expose().as_bytes()))
}

/// The provider's authorization URL for one flow.
pub fn authorize_url(
    provider: &Provider,
    redirect_uri: &Url,
    state: &str,
    scopes: &[String],
    challenge: Option<&str>,
) -> Url {
    let mut url = provider.authorization_endpoint.clone();
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("state", state);
        if !scopes.is_empty() {
            query.append_pair("scope", &scopes.join(" "));
        }
        if let Some(challenge) = challenge {
            query.append_pair("code_challenge", challenge).append_pair("code_challenge_method", "S256");
        }
    }
    url
}

/// Why a callback did not produce a connection. Each has a stable code
/// (sent to the return URL as `error`) and words for the page; none carries
/// a code, token or secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `state` in the callback.
    MissingState,
    /// No flow has this state.
    UnknownState,
    /// The state was used before.
    UsedState,
    /// The state expired.
    ExpiredState,
    /// The callback came from another browser than the one that started it.
    OtherBrowser,
    /// The provider said no (`error=access_denied`, …); the code is sanitized.
    Provider(String),
    /// No `code` in the callback.
    MissingCode,
    /// The token endpoint could not be reached, or answered an HTTP error
    /// without an OAuth error.
    TokenEndpoint,
    /// The token endpoint asked us to slow down (HTTP 429), for this many
    /// seconds if it said (`Retry-After`).
    Throttled(Option<u64>),
    /// The token endpoint refused the code (`invalid_grant`, …).
    TokenRefused(String),
    /// The token endpoint answered something that is not a token response.
    Garbage,
    /// The provider granted fewer scopes than were asked for.
    NarrowScopes,
    /// The connection being reconnected was revoked meanwhile.
    Revoked,
    /// The provider is no longer configured, or our side failed.
    Internal,
}

impl Refusal {
    /// The stable code.
    pub fn code(&self) -> &str {
        match self {
            Refusal::MissingState => "missing_state",
            Refusal::UnknownState => "unknown_state",
            Refusal::UsedState => "state_already_used",
            Refusal::ExpiredState => "state_expired",
            Refusal::OtherBrowser => "other_browser",
            Refusal::Provider(code) => code,
            Refusal::MissingCode => "missing_code",
            Refusal::TokenEndpoint => "token_endpoint_failed",
            Refusal::Throttled(_) => "token_endpoint_throttled",
            Refusal::TokenRefused(code) => code,
            Refusal::Garbage => "token_endpoint_garbage",
            Refusal::NarrowScopes => "insufficient_scope",
            Refusal::Revoked => "connection_revoked",
            Refusal::Internal => "internal",
        }
    }

    /// The words on the page.
    pub fn message(&self) -> String {
        match self {
            Refusal::MissingState | Refusal::UnknownState => "this sign-in link is not one we issued".into(),
            Refusal::UsedState => "this sign-in link was already used".into(),
            Refusal::ExpiredState => "this sign-in link expired (after 10 minutes); start again".into(),
            Refusal::OtherBrowser => "this sign-in was started in another browser".into(),
            Refusal::Provider(code) => format!("the provider did not grant access ({code})"),
            Refusal::MissingCode => "the provider sent no authorization code".into(),
            Refusal::TokenEndpoint => "the provider's token endpoint failed; try again".into(),
            Refusal::Throttled(_) => "the provider is busy; try again in a moment".into(),
            Refusal::TokenRefused(code) => format!("the provider refused the authorization code ({code})"),
            Refusal::Garbage => "the provider's token endpoint answered something unexpected".into(),
            Refusal::NarrowScopes => "the provider granted fewer permissions than the connection needs".into(),
            Refusal::Revoked => "this connection was revoked meanwhile; connect anew".into(),
            Refusal::Internal => "something went wrong on our side; try again".into(),
        }
    }

    /// Whether the provider, not the request, is at fault (502 rather than 400).
    pub fn is_upstream(&self) -> bool {
        matches!(self, Refusal::TokenEndpoint | Refusal::Throttled(_) | Refusal::Garbage)
    }
}

/// An error code from a provider, kept only if it has the RFC 6749 shape.
pub fn sanitized_code(raw: &str) -> String {
    let ok = !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if ok {
        raw.to_owned()
    } else {
        "invalid_error".to_owned()
    }
}

/// What the token endpoint granted. `Debug` shows no token.
#[derive(Debug)]
pub struct Tokens {
    /// The access token.
    pub access_token: Secret,
    /// The refresh token, if any.
    pub refresh_token: Option<Secret>,
    /// Seconds until the access token expires, if said.
    pub expires_in: Option<u64>,
    /// The granted scopes, if the answer names them (else: as asked).
    pub scopes: Option<Vec<String>>,
}

fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(TOKEN_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client")
    })
}

/// Exchanges an authorization code at the token endpoint. The scopes asked
/// for are sent along (providers that ignore them answer their grant in
/// `scope`).
pub async fn exchange(
    provider: &Provider,
    redirect_uri: &Url,
    code: &str,
    verifier: Option<&Secret>,
    scopes: &[String],
) -> Result<Tokens, Refusal> {
    let mut form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", redirect_uri.to_string()),
        ("client_id", provider.client_id.clone()),
    ];
    if let Some(verifier) = verifier {
        form.push(("code_verifier", verifier.expose().to_owned()));
    }
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    token_request(provider, &form).await
}

/// Uses a refresh token (RFC 6749 §6), asking for the same scopes.
pub async fn refresh(provider: &Provider, refresh_token: &Secret, scopes: &[String]) -> Result<Tokens, Refusal> {
    let mut form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.expose().to_owned()),
        ("client_id", provider.client_id.clone()),
    ];
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    token_request(provider, &form).await
}

/// One request to the token endpoint (client authentication: HTTP Basic,
/// RFC 6749 §2.3.1).
async fn token_request(provider: &Provider, form: &[(&str, String)]) -> Result<Tokens, Refusal> {
    let body = form.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect::<Vec<_>>().join("&");
    let response = http()
        .post(provider.token_endpoint.clone())
        .basic_auth(urlencode(&provider.client_id), Some(urlencode(provider.client_secret.expose())))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|error| {
            tracing::warn!(service = %provider.service, error = %error.without_url(), "token endpoint unreachable");
            Refusal::TokenEndpoint
        })?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        tracing::warn!(service = %provider.service, "the token endpoint is throttling");
        return Err(Refusal::Throttled(retry_after(response.headers())));
    }
    let bytes = response.bytes().await.map_err(|_| Refusal::TokenEndpoint)?;
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        tracing::warn!(service = %provider.service, %status, "the token endpoint refused");
        return match json.as_ref().and_then(|v| v["error"].as_str()) {
            Some(code) if status.is_client_error() => Err(Refusal::TokenRefused(sanitized_code(code))),
            _ => Err(Refusal::TokenEndpoint),
        };
    }
    parse_tokens(&json.ok_or(Refusal::Garbage)?)
}

/// `Retry-After` in seconds (RFC 9110 §10.2.3; an HTTP date is not
/// followed: the caller's own backoff applies), at most a day.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let seconds: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(seconds.min(86_400))
}

/// Which token an RFC 7009 revocation names.
#[derive(Debug, Clone, Copy)]
pub enum TokenKind {
    /// `refresh_token`: revoking it also ends the grant at most providers.
    Refresh,
    /// `access_token`.
    Access,
}

/// Why a revocation request must be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationFailed {
    /// Seconds the provider asked to wait (HTTP 429/503 `Retry-After`).
    pub retry_after: Option<u64>,
}

/// Revokes one token at the provider's revocation endpoint (RFC 7009 §2.1,
/// client authentication as at the token endpoint). 200 means revoked (also
/// for a token the provider no longer knows, §2.2); 400
/// `unsupported_token_type` means this kind cannot be revoked there, which
/// is final too. Anything else is retried.
pub async fn revoke(
    provider: &Provider,
    endpoint: &Url,
    token: &Secret,
    kind: TokenKind,
) -> Result<(), RevocationFailed> {
    let hint = match kind {
        TokenKind::Refresh => "refresh_token",
        TokenKind::Access => "access_token",
    };
    let body = format!("token={}&token_type_hint={hint}", urlencode(token.expose()));
    let response = http()
        .post(endpoint.clone())
        .basic_auth(urlencode(&provider.client_id), Some(urlencode(provider.client_secret.expose())))
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|error| {
            tracing::warn!(service = %provider.service, error = %error.without_url(), "revocation endpoint unreachable");
            RevocationFailed { retry_after: None }
        })?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    if status.is_success() {
        return Ok(());
    }
    if status == reqwest::StatusCode::BAD_REQUEST {
        let bytes = response.bytes().await.unwrap_or_default();
        let error = serde_json::from_slice::<Value>(&bytes).ok();
        if error.as_ref().and_then(|v| v["error"].as_str()) == Some("unsupported_token_type") {
            return Ok(());
        }
    }
    tracing::warn!(service = %provider.service, %status, "the revocation endpoint failed");
    Err(RevocationFailed { retry_after })
}

/// A successful token response (RFC 6749 §5.1), or `Garbage`.
pub fn parse_tokens(value: &Value) -> Result<Tokens, Refusal> {
    let text = |field: &str| value.get(field).and_then(Value::as_str).filter(|s| !s.is_empty());
    let access_token = text("access_token").ok_or(Refusal::Garbage)?;
    if !text("token_type").is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
        return Err(Refusal::Garbage);
    }
    let expires_in = match value.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|n| *n <= 10 * 365 * 86_400).ok_or(Refusal::Garbage)?),
    };
    let scopes = text("scope").map(|s| s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect());
    Ok(Tokens {
        access_token: Secret::new(access_token.to_owned()),
        refresh_token: text("refresh_token").map(|t| Secret::new(t.to_owned())),
        expires_in,
        scopes,
    })
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_responses_are_parsed_strictly_and_never_shown() {
        let tokens = parse_tokens(&json!({"access_token": "at-canary", "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "rt-canary", "scope": "a b"}))
        .expect("valid");
        assert_eq!((tokens.expires_in, tokens.scopes.clone()), (Some(3600), Some(vec!["a".into(), "b".into()])));
        assert!(!format!("{tokens:?}").contains("canary"));
        for garbage in [
            json!({}),
            json!({"access_token": "t"}),
            json!({"access_token": "t", "token_type": "mac"}),
            json!({"access_token": "", "token_type": "bearer"}),
            json!({"access_token": "t", "token_type": "bearer", "expires_in": "soon"}),
            json!("a string"),
        ] {
            assert_eq!(parse_tokens(&garbage).map(|_| ()), Err(Refusal::Garbage), "{garbage}");
        }
    }

    #[test]
    fn pkce_follows_rfc_7636_and_provider_codes_are_sanitized() {
        // RFC 7636 appendix B.
        let verifier = Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(challenge(&verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let master = MasterKey::from_base64("k", &MasterKey::generate_base64().expect("key")).expect("key");
        let derived = verifier_of(&master);
        assert_eq!(derived.len(), 43);
        assert_eq!(sanitized_code("access_denied"), "access_denied");
        assert_eq!(sanitized_code("<script>"), "invalid_error");
        assert_eq!(urlencode("a b&c=é"), "a%20b%26c%3D%C3%A9");
    }

    fn verifier_of(master: &MasterKey) -> String {
        super::verifier(master, "some-state").expose().to_owned()
    }
}
