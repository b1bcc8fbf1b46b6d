//! `connections-agent`: what an agent runtime links to use Connections.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use connections_agent::{AgentClient, AgentConfig};
//! let client = AgentClient::connect(AgentConfig::new(
//!     "http://127.0.0.1:8080", "<agent token>", "nats://127.0.0.1:4222", "connections", "alice", "agent-1",
//! )).await?;
//! let credential = client.resolve("google-calendar").await?;
//! let _plaintext = credential.expose(); // {"kind": "oauth2", "access_token": …}
//! # Ok(()) }
//! ```
//!
//! Guarantees:
//! - A cached credential is dropped as soon as a notice says its connection
//!   was revoked or rotated, or the agent's binding changed.
//! - Fail closed: the cache is used only while the NATS connection is up
//!   (the client pings every `heartbeat`, default 1 s, instead of the default
//!   60 s). On disconnect the cache is emptied; nothing is cached while
//!   disconnected; after reconnecting everything is resolved afresh.
//! - A newly seen connection is subscribed to before its credential is
//!   cached (and resolved again after subscribing), so a revocation between
//!   the answer and the subscription cannot be missed.
//! - The lease from the server bounds every cache entry.

mod client;
mod credential;

pub use client::{AgentClient, AgentConfig, ConnectError, Invalidation, ResolveError};
pub use connections_fanout::NoticeKind;
pub use credential::ResolvedCredential;
