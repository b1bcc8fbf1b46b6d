//! Problem types of HTTP errors (`application/problem+json`, RFC 9457): each
//! error's `type` is `urn:connections:problem:<slug>`.

/// The start of every problem type.
pub const TYPE_PREFIX: &str = "urn:connections:problem:";

/// The agent has nothing to use for the service (409).
pub const AUTHORIZATION_REQUIRED: &str = "authorization-required";
/// The connection is revoked (409).
pub const CONNECTION_REVOKED: &str = "connection-revoked";
/// A runtime reported problems with one connection too often (429).
pub const TOO_MANY_REPORTS: &str = "too-many-reports";
/// No usable bearer token (401).
pub const UNAUTHORIZED: &str = "unauthorized";
/// The database (or a read model) is not available yet; retry (503).
pub const UNAVAILABLE: &str = "unavailable";

/// The full `type` of a slug.
pub fn type_of(slug: &str) -> String {
    format!("{TYPE_PREFIX}{slug}")
}

/// The slug of a full `type`, if it is one of ours.
pub fn slug_of(problem_type: &str) -> Option<&str> {
    problem_type.strip_prefix(TYPE_PREFIX)
}
