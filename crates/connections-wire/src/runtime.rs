//! What an agent runtime obtains to reach NATS
//! (`POST /v1/runtime/nats-credentials`; `RuntimeCredentials` in `schemas/openapi.json`).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The request: optionally the runtime's own NATS user public key (an nkey
/// starting with `U`). With one, the seed never leaves the runtime; without,
/// the server makes a key pair and returns its seed once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeCredentialsRequest {
    /// The runtime's NATS user public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// The answer: a NATS user JWT allowing exactly the subscriptions of one
/// (owner, agent), and where to use it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeCredentials {
    /// The NATS user JWT; `None` when the deployment runs NATS without
    /// authentication (an explicit development mode).
    pub jwt: Option<String>,
    /// The user seed, only when the request gave no public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// When the JWT expires (never after the agent token); renew before.
    pub expires_at: Option<DateTime<Utc>>,
    /// The NATS servers to connect to.
    pub nats_urls: Vec<String>,
    /// The deployment's subject prefix.
    pub prefix: String,
    /// The user the runtime acts for (from its token).
    pub owner: String,
    /// The agent (from its token).
    pub agent: String,
    /// The subjects the runtime may subscribe to (NATS wildcards); it may
    /// publish only to the last of them, its own echo subject.
    pub subscribe: Vec<String>,
}

impl fmt::Debug for RuntimeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeCredentials")
            .field("jwt", &self.jwt.as_ref().map(|_| "[REDACTED]"))
            .field("seed", &self.seed.as_ref().map(|_| "[REDACTED]"))
            .field("expires_at", &self.expires_at)
            .field("nats_urls", &self.nats_urls)
            .field("prefix", &self.prefix)
            .field("owner", &self.owner)
            .field("agent", &self.agent)
            .field("subscribe", &self.subscribe)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_jwt_and_the_seed() {
        let credentials = RuntimeCredentials {
            jwt: Some("eyJ.secret-jwt.sig".into()),
            seed: Some("SUAsecretseed".into()),
            expires_at: None,
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            prefix: "connections".into(),
            owner: "alice".into(),
            agent: "agent-1".into(),
            subscribe: vec![],
        };
        let printed = format!("{credentials:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("REDACTED"));
    }
}
