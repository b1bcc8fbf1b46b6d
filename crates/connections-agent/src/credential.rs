//! A resolved credential, redacted in `Debug`.

use std::fmt;
use std::time::Instant;

/// A credential handed to this agent. The plaintext is reachable only
/// through [`ResolvedCredential::expose`].
pub struct ResolvedCredential {
    /// The connection it belongs to.
    pub connection_id: String,
    /// Its version.
    pub credential_version: u64,
    /// `assigned` or `default`.
    pub via: String,
    /// Whether a runtime reported that the provider rejected this version
    /// (the owner has not rotated, replaced or revoked it yet).
    pub needs_attention: bool,
    /// The service.
    pub service: String,
    pub(crate) credential: serde_json::Value,
    pub(crate) expires: Instant,
}

impl ResolvedCredential {
    /// The plaintext credential, `{"kind": …, …}`.
    pub fn expose(&self) -> &serde_json::Value {
        &self.credential
    }
}

impl fmt::Debug for ResolvedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedCredential")
            .field("connection_id", &self.connection_id)
            .field("credential_version", &self.credential_version)
            .field("via", &self.via)
            .field("needs_attention", &self.needs_attention)
            .field("service", &self.service)
            .field("credential", &"[REDACTED]")
            .finish()
    }
}
