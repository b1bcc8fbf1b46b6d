//! How a runtime reaches Connections.

use std::fmt;
use std::time::Duration;

/// Where Connections is and who this runtime is. Everything else (the NATS
/// servers, the subject prefix, the owner and agent) comes from the server,
/// with the NATS credentials this token obtains.
#[derive(Clone)]
pub struct AgentConfig {
    /// The HTTP API, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// An agent token (`connections token --agent A --owner U`). Redacted in `Debug`.
    pub token: String,
    /// How often the NATS connection is confirmed alive (at most 1 s).
    pub heartbeat: Duration,
    /// Messages a notice subscription buffers before NATS drops them (a
    /// slow consumer; the client then fails closed and resynchronises).
    pub subscription_capacity: usize,
    /// Use this NATS URL instead of the ones the server hands out (for a
    /// runtime that reaches NATS through another address).
    pub nats_url: Option<String>,
}

impl AgentConfig {
    /// A configuration with a 1-second heartbeat.
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            token: token.into(),
            heartbeat: Duration::from_secs(1),
            subscription_capacity: 4096,
            nats_url: None,
        }
    }
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("base_url", &self.base_url)
            .field("token", &"[REDACTED]")
            .field("heartbeat", &self.heartbeat)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("nats_url", &self.nats_url)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let printed = format!("{:?}", AgentConfig::new("http://x", "eyJhbGciOiJIUzI1NiJ9.secret.sig"));
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("REDACTED"));
    }
}
