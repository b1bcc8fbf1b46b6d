//! `connections-agent`: what an agent runtime links to use Connections.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use connections_agent::{AgentClient, AgentConfig};
//! let client = AgentClient::connect(AgentConfig::new("http://127.0.0.1:8080", "<agent token>")).await?;
//! let credential = client.resolve("google-calendar").await?;
//! let _plaintext = credential.expose(); // {"kind": "oauth2", "access_token": …}
//! # Ok(()) }
//! ```
//!
//! NATS: the client obtains credentials for its own notices with the agent
//! token (`POST /v1/runtime/nats-credentials`, presenting a user key whose
//! seed never leaves the process), and renews them at two thirds of their
//! life on a new connection that takes over every subscription before the
//! old one closes, so a renewal does not empty the cache.
//!
//! Guarantees:
//! - A cached credential is dropped as soon as a notice says its connection
//!   was revoked or rotated, or the agent's binding changed.
//! - Fail closed: the cache is used only while the NATS connection is up
//!   (the client pings every `heartbeat`, default 1 s, instead of the default
//!   60 s). On disconnect, or when NATS reports it dropped notices (a slow
//!   consumer), the cache is emptied and nothing is cached until the client
//!   is back in sync; then everything is resolved afresh.
//! - A newly seen connection is subscribed to before its credential is
//!   cached (and resolved again after subscribing; if that answer names yet
//!   another connection, that one too), so a revocation between the answer
//!   and the subscription cannot be missed.
//! - The lease from the server bounds every cache entry.

mod client;
mod config;
mod credential;

pub use client::{
    AgentClient, ConnectError, Invalidation, InvalidationReason, ReportError, ReportOutcome, ResolveError,
};
pub use config::AgentConfig;
pub use connections_wire::NoticeKind;
pub use credential::ResolvedCredential;
