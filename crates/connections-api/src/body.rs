//! Request bodies and parameters: parsed into domain types at the edge, with
//! problems that name the field and never echo a value.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use connections_domain::IdError;
use serde_json::{Map, Value};

use crate::problem::ApiError;

/// The largest request body accepted (credentials are capped at 16 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON object body: `Content-Type: application/json`, at most
/// [`MAX_BODY_BYTES`], syntactically valid, an object. Keeps the raw bytes
/// for idempotency hashing.
pub struct JsonObject {
    /// The parsed object.
    pub fields: Map<String, Value>,
    /// The raw body.
    pub raw: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let raw = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::MalformedJson
            }
        })?;
        let value: Value = serde_json::from_slice(&raw).map_err(|_| ApiError::MalformedJson)?;
        match value {
            Value::Object(fields) => Ok(JsonObject { fields, raw }),
            _ => Err(ApiError::invalid("body", "must be a JSON object")),
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

impl JsonObject {
    /// Refuses any field not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.fields.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(unknown) => Err(ApiError::invalid(printable(unknown), "is not a known field")),
            None => Ok(()),
        }
    }

    /// A required string field parsed by `parse`.
    pub fn required<T>(&self, field: &str, parse: impl FnOnce(String) -> Result<T, IdError>) -> Result<T, ApiError> {
        self.optional(field, parse)?.ok_or_else(|| ApiError::invalid(field, "is required"))
    }

    /// An optional string field (absent or null) parsed by `parse`.
    pub fn optional<T>(
        &self,
        field: &str,
        parse: impl FnOnce(String) -> Result<T, IdError>,
    ) -> Result<Option<T>, ApiError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(raw)) => parse(raw.clone()).map(Some).map_err(|e| ApiError::invalid(field, e)),
            Some(_) => Err(ApiError::invalid(field, "must be a string")),
        }
    }

    /// An optional integer field (absent or null) from `min` to `max`.
    pub fn optional_integer(&self, field: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .filter(|n| (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| ApiError::invalid(field, format!("must be an integer from {min} to {max}"))),
        }
    }

    /// A required field of any JSON type.
    pub fn value(&self, field: &str) -> Result<&Value, ApiError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Err(ApiError::invalid(field, "is required")),
            Some(value) => Ok(value),
        }
    }
}

/// A path parameter parsed by `parse`; a malformed one is a 400 naming it.
pub fn path_param<T>(name: &str, raw: &str, parse: impl FnOnce(&str) -> Result<T, IdError>) -> Result<T, ApiError> {
    parse(raw).map_err(|e| ApiError::invalid(name, e))
}

/// An attacker-chosen name made safe to print in a problem.
fn printable(name: &str) -> String {
    name.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect()
}
