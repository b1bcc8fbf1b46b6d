//! NATS authentication for Connections, in nats-server's decentralized JWT
//! mode (works on nats-server 2.9 and later):
//!
//! - [`Setup`]: an operator, a system account and the service's account,
//!   and the nats-server configuration that trusts them
//!   (`connections nats init`).
//! - [`Issuer`]: the account signing key the service holds; it signs user
//!   JWTs for itself, for agent runtimes and for read-only consumers.
//! - [`Grant`]: what each of those identities may publish and subscribe.

mod grant;
mod issuer;
pub mod jwt;
mod setup;

pub use grant::{Grant, Permission};
pub use issuer::{check_user_key, creds_file, new_user_key, Issuer, IssuerFile};
pub use setup::Setup;

/// Why a key, a file or a JWT was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed input; says what is wrong, never shows key material.
    #[error("{0}")]
    Malformed(&'static str),
    /// A key operation failed.
    #[error("nkey: {0}")]
    Key(String),
    /// JSON encoding failed.
    #[error("JSON: {0}")]
    Json(String),
}

impl AuthError {
    fn json(error: serde_json::Error) -> Self {
        AuthError::Json(error.to_string())
    }
}
