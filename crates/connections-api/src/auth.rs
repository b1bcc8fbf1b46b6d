//! Bearer-token authentication: JWTs signed with HS256 (development) or
//! Ed25519 / RS256 (production, public key from configuration).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use connections_domain::{AgentId, OwnerId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::problem::ApiError;
use crate::state::AppState;

/// The claims Connections reads. `sub` is the user id; `exp` is required.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// `user` (or absent) for people; `agent` for agent runtimes. Other
    /// roles cannot call user endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// For agent tokens: the user the agent acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Why an authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The key material could not be parsed.
    #[error("invalid JWT key: {0}")]
    InvalidKey(#[from] jsonwebtoken::errors::Error),
    /// An HS256 secret shorter than 32 bytes.
    #[error("CONNECTIONS_JWT_SECRET must be at least 32 bytes")]
    WeakSecret,
    /// The claims could not be encoded.
    #[error("claims: {0}")]
    Claims(String),
}

/// Verifies bearer tokens with one configured key.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// HS256 with a shared secret (development).
    pub fn hs256(secret: &[u8]) -> Result<Self, AuthConfigError> {
        if secret.len() < 32 {
            return Err(AuthConfigError::WeakSecret);
        }
        Ok(Self::new(DecodingKey::from_secret(secret), Algorithm::HS256))
    }

    /// EdDSA (Ed25519) with a PEM public key (production).
    pub fn ed25519_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        Ok(Self::new(DecodingKey::from_ed_pem(pem)?, Algorithm::EdDSA))
    }

    /// RS256 with a PEM public key (production).
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        Ok(Self::new(DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        validation.validate_nbf = true;
        // Checked only when configured (`with_audience`).
        validation.validate_aud = false;
        Self { key, validation }
    }

    /// Requires tokens to carry `aud` = `audience` (`CONNECTIONS_JWT_AUDIENCE`),
    /// as tokens from identity providers do.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.require("aud");
        self
    }

    /// Requires tokens to carry `iss` = `issuer` (`CONNECTIONS_JWT_ISSUER`).
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.require("iss");
        self
    }

    fn require(&mut self, claim: &str) {
        let mut required: Vec<String> = self.validation.required_spec_claims.iter().cloned().collect();
        required.push(claim.to_owned());
        self.validation.set_required_spec_claims(&required);
    }

    /// The verified claims of a token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map(|data| data.claims).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => ApiError::Unauthorized("token has expired"),
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                ApiError::Unauthorized("token is not valid yet (nbf)")
            }
            jsonwebtoken::errors::ErrorKind::InvalidAudience => ApiError::Unauthorized("token is for another audience"),
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => ApiError::Unauthorized("token is from another issuer"),
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                ApiError::Unauthorized("token lacks a required claim (exp, sub, and aud or iss when configured)")
            }
            _ => ApiError::Unauthorized("token is invalid"),
        })
    }
}

/// Mints an HS256 token with `claims` plus `aud` and `iss` when given (for
/// `connections token` on a deployment that requires them).
pub fn mint_token(
    secret: &[u8],
    claims: &Claims,
    audience: Option<&str>,
    issuer: Option<&str>,
) -> Result<String, AuthConfigError> {
    let mut value = serde_json::to_value(claims).map_err(|e| AuthConfigError::Claims(e.to_string()))?;
    if let Some(audience) = audience {
        value["aud"] = serde_json::json!(audience);
    }
    if let Some(issuer) = issuer {
        value["iss"] = serde_json::json!(issuer);
    }
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &value, &EncodingKey::from_secret(secret))?)
}

/// Mints an HS256 user token (for `connections token` and tests).
pub fn mint_user_token(secret: &[u8], user: &OwnerId, expires_at: i64) -> Result<String, AuthConfigError> {
    let claims = Claims { sub: user.to_string(), exp: expires_at, role: None, owner: None };
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?)
}

/// Mints an HS256 agent token: `sub` the agent, `owner` the user it acts for.
pub fn mint_agent_token(
    secret: &[u8],
    agent: &AgentId,
    owner: &OwnerId,
    expires_at: i64,
) -> Result<String, AuthConfigError> {
    let claims =
        Claims { sub: agent.to_string(), exp: expires_at, role: Some("agent".into()), owner: Some(owner.to_string()) };
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?)
}

/// The authenticated agent runtime of a request, acting for one owner.
#[derive(Debug, Clone)]
pub struct AuthenticatedAgent {
    /// The agent.
    pub agent: AgentId,
    /// The user it acts for.
    pub owner: OwnerId,
    /// When its token expires (seconds since the epoch): nothing issued to
    /// it outlives the token.
    pub expires_at: i64,
}

impl FromRequestParts<Arc<AppState>> for AuthenticatedAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let claims = state.authenticator.verify(bearer(parts)?)?;
        if claims.role.as_deref() != Some("agent") {
            return Err(ApiError::Unauthorized("this endpoint needs an agent token"));
        }
        let agent =
            AgentId::parse(claims.sub).map_err(|_| ApiError::Unauthorized("token subject is not a valid agent id"))?;
        let owner = claims
            .owner
            .and_then(|owner| OwnerId::parse(owner).ok())
            .ok_or(ApiError::Unauthorized("agent token has no valid owner"))?;
        Ok(AuthenticatedAgent { agent, owner, expires_at: claims.exp })
    }
}

/// The bearer token of a request.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized("missing Authorization header"))?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized("Authorization must be 'Bearer <token>'"))
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser(pub OwnerId);

impl FromRequestParts<Arc<AppState>> for AuthenticatedUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        Ok(AuthenticatedUser(UserSession::from_request_parts(parts, state).await?.owner))
    }
}

/// The authenticated user of a request and when its token expires (for
/// what outlives one answer, such as a change stream).
#[derive(Debug, Clone)]
pub struct UserSession {
    /// The user.
    pub owner: OwnerId,
    /// When the token expires (seconds since the epoch).
    pub expires_at: i64,
}

/// The page's session cookie (`POST /v1/session`): the user token, HttpOnly
/// and SameSite=Strict.
pub const SESSION_COOKIE: &str = "connections_session";

/// The header the page sends with every request. A command authenticated by
/// the session cookie must carry it: a cross-site form cannot add a header,
/// and a cross-origin script that tries is stopped by the CORS preflight
/// this server never approves.
pub const PAGE_HEADER: &str = "x-connections-page";

/// The user token of a request: the bearer token, or else the session
/// cookie (then a command must carry [`PAGE_HEADER`]).
fn user_token(parts: &Parts) -> Result<&str, ApiError> {
    if parts.headers.contains_key(axum::http::header::AUTHORIZATION) {
        return bearer(parts);
    }
    let cookie = parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value)
        .ok_or(ApiError::Unauthorized("missing Authorization header"))?;
    let safe = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD);
    if !safe && parts.headers.get(PAGE_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Err(ApiError::Unauthorized(
            "a command authenticated by the session cookie must carry X-Connections-Page: 1",
        ));
    }
    Ok(cookie)
}

impl FromRequestParts<Arc<AppState>> for UserSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let claims = state.authenticator.verify(user_token(parts)?)?;
        if claims.role.as_deref().is_some_and(|role| role != "user") {
            return Err(ApiError::Unauthorized("this endpoint needs a user token"));
        }
        let owner =
            OwnerId::parse(claims.sub).map_err(|_| ApiError::Unauthorized("token subject is not a valid user id"))?;
        Ok(UserSession { owner, expires_at: claims.exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A key pair made for this test only (`openssl genpkey -algorithm ed25519`).
    const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEID3KhBVWfr0la/y89VLajef5KVNBRDsVUOkbCfZ7pvyk\n-----END PRIVATE KEY-----";
    const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAbHNQmS0FkLRVTZdCc9fZan+Td+Bp5dLey4x9gCROigA=\n-----END PUBLIC KEY-----";

    fn claims(sub: &str, exp_in: i64) -> Claims {
        Claims { sub: sub.into(), exp: chrono::Utc::now().timestamp() + exp_in, role: None, owner: None }
    }

    #[test]
    fn ed25519_tokens_verify_with_the_public_key_only() {
        let authenticator = Authenticator::ed25519_pem(ED25519_PUBLIC.as_bytes()).expect("public key");
        let key = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).expect("private key");
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims("alice", 60), &key).expect("sign");
        assert_eq!(authenticator.verify(&token).expect("valid token").sub, "alice");

        // A token signed with a shared secret must not pass an asymmetric verifier.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("alice", 60),
            &EncodingKey::from_secret(ED25519_PUBLIC.as_bytes()),
        )
        .expect("sign");
        assert!(authenticator.verify(&forged).is_err());
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims("alice", -600), &key).expect("sign");
        assert!(matches!(authenticator.verify(&expired), Err(ApiError::Unauthorized("token has expired"))));
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        assert!(matches!(Authenticator::hs256(b"short"), Err(AuthConfigError::WeakSecret)));
    }
}
