//! The one HTTP error type, rendered as `application/problem+json` (RFC 9457).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use connections_domain::DomainError;
use connections_store::StoreError;
use connections_wire::problem;
use serde_json::json;

/// Every way a request can fail, each with one status and one stable type.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter is malformed or invalid; names the field.
    #[error("{field} {reason}")]
    InvalidInput {
        /// The field, parameter or header at fault.
        field: String,
        /// What is wrong with it (never its value).
        reason: String,
    },
    /// The body is not JSON at all.
    #[error("request body is not valid JSON")]
    MalformedJson,
    /// No usable bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Absent or not the caller's: deliberately the same answer.
    #[error("not found")]
    NotFound,
    /// The connection's OAuth access token expired and the provider refused
    /// to refresh it: the owner must reconnect.
    #[error("the connection's OAuth tokens expired and the provider refused to refresh them; the owner must reconnect or replace it")]
    CredentialExpired,
    /// The connection's OAuth access token expired and the provider could
    /// not be reached to refresh it; nothing was handed out.
    #[error("the connection's OAuth tokens expired and could not be refreshed just now; retry")]
    RefreshUnavailable,
    /// No OAuth 2.0 provider is configured for the service.
    #[error("no OAuth provider is configured for this service; create the connection with a credential instead")]
    NoProvider,
    /// The connection's service has no OAuth 2.0 provider to reconnect through.
    #[error("no OAuth provider is configured for this connection's service; rotate its credential instead")]
    NotReconnectable,
    /// A data key re-wrap found the key already moved (another rewrapper,
    /// or a server with another current master key).
    #[error("the data key is no longer wrapped under the master key named; run the rewrap again")]
    RewrapStale,
    /// No such route.
    #[error("no such route")]
    NoRoute,
    /// The connection is revoked.
    #[error("connection is revoked")]
    Revoked,
    /// The agent has nothing to use for the service: the owner must create
    /// or pick a connection (or set a default).
    #[error("authorization required for service {0}")]
    AuthorizationRequired(String),
    /// The connection id is taken.
    #[error("connection already exists")]
    AlreadyExists,
    /// Concurrent commands kept winning; the client may retry.
    #[error("the resource kept changing concurrently; retry")]
    ConcurrencyExhausted,
    /// The Idempotency-Key was used for a different request.
    #[error("Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// The body is larger than allowed.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// The body is not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The user has as many change streams open as allowed.
    #[error("at most {0} change streams may be open at once; close one first")]
    TooManyStreams(usize),
    /// A runtime sent more problem reports for one connection than allowed
    /// in a minute; the seconds until it may report again.
    #[error("too many reports for this connection; retry in {0} s")]
    TooManyReports(u64),
    /// The read model has not caught up with the requested position in time.
    #[error("the read model has not reached position {0} yet; retry")]
    NotYetProjected(i64),
    /// The database could not be reached, or kept failing transiently (for
    /// a command: on every attempt, and nothing was stored); the client may
    /// retry.
    #[error("the database is unavailable; retry")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database went away while the command committed: it may or may
    /// not have taken effect. A retry with the same `Idempotency-Key`
    /// answers with its outcome (the key's record commits with the
    /// command's events, or not at all).
    #[error(
        "the database went away while committing: whether the command took effect is unknown; retry with the same \
         Idempotency-Key to learn its outcome, or read the resource"
    )]
    OutcomeUnknown(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Something broke on our side; details go to the log only.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// An invalid field with a reason.
    pub fn invalid(field: impl Into<String>, reason: impl ToString) -> Self {
        ApiError::InvalidInput { field: field.into(), reason: reason.to_string() }
    }

    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidInput { .. } => (StatusCode::BAD_REQUEST, "invalid-input"),
            ApiError::MalformedJson => (StatusCode::BAD_REQUEST, "malformed-json"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, problem::UNAUTHORIZED),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::NoProvider => (StatusCode::NOT_FOUND, "no-provider"),
            ApiError::NotReconnectable => (StatusCode::CONFLICT, "not-reconnectable"),
            ApiError::RewrapStale => (StatusCode::CONFLICT, "rewrap-stale"),
            ApiError::CredentialExpired => (StatusCode::CONFLICT, "credential-expired"),
            ApiError::RefreshUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "refresh-unavailable"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no-such-route"),
            ApiError::Revoked => (StatusCode::CONFLICT, problem::CONNECTION_REVOKED),
            ApiError::AlreadyExists => (StatusCode::CONFLICT, "already-exists"),
            ApiError::AuthorizationRequired(_) => (StatusCode::CONFLICT, problem::AUTHORIZATION_REQUIRED),
            ApiError::ConcurrencyExhausted => (StatusCode::CONFLICT, "concurrency-conflict"),
            ApiError::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
            ApiError::TooManyStreams(_) => (StatusCode::TOO_MANY_REQUESTS, "too-many-streams"),
            ApiError::TooManyReports(_) => (StatusCode::TOO_MANY_REQUESTS, problem::TOO_MANY_REPORTS),
            ApiError::NotYetProjected(_) => (StatusCode::SERVICE_UNAVAILABLE, "not-yet-projected"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, problem::UNAVAILABLE),
            ApiError::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome-unknown"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The outcome label of an answer in metrics: `refused` for a 4xx,
    /// `failed` for a 5xx.
    pub fn outcome(&self) -> &'static str {
        if self.status_and_type().0.is_server_error() {
            "failed"
        } else {
            "refused"
        }
    }

    /// The problem body and status, for storing as an idempotent answer too.
    pub fn to_problem(&self) -> (StatusCode, serde_json::Value) {
        let (status, slug) = self.status_and_type();
        let mut body = json!({
            "type": problem::type_of(slug),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let ApiError::InvalidInput { field, .. } = self {
            body["field"] = json!(field);
        }
        if let ApiError::AuthorizationRequired(service) = self {
            body["service"] = json!(service);
        }
        (status, body)
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::NotFound => ApiError::NotFound,
            DomainError::Revoked(_) => ApiError::Revoked,
            DomainError::AlreadyExists(_) => ApiError::AlreadyExists,
            // Only resolution refuses this way; its handler names the service.
            DomainError::AuthorizationRequired => ApiError::AuthorizationRequired(String::new()),
        }
    }
}

impl From<StoreError> for ApiError {
    /// A transient failure (see [`StoreError::is_transient`]) is 503: the
    /// client may retry. Where a failure leaves the outcome unknown (a failed
    /// COMMIT), callers use [`ApiError::outcome_unknown`] instead.
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            ApiError::Unavailable(Box::new(error))
        } else {
            ApiError::Internal(Box::new(error))
        }
    }
}

impl ApiError {
    /// A failed COMMIT: whether it took effect is unknown, so it is never
    /// reported as "retry, nothing was stored".
    pub fn outcome_unknown(error: StoreError) -> Self {
        ApiError::OutcomeUnknown(Box::new(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) | ApiError::Unavailable(cause) | ApiError::OutcomeUnknown(cause) = &self {
            tracing::error!(error = %cause, cause = ?std::error::Error::source(&**cause), "request failed");
        }
        let (status, body) = self.to_problem();
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::TooManyReports(seconds) = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
