//! The HTTP API of Connections.
//!
//! Requests are authenticated ([`auth`]), parsed into domain types at the
//! edge ([`body`]), and turned into commands run by the command handler
//! ([`commands`]): load the stream, decide, write side tables, append, all in
//! one transaction, retried on a lost optimistic-concurrency race. Every
//! error is an RFC 9457 problem ([`problem`]).

mod attempts;
pub mod auth;
pub mod body;
pub mod commands;
pub mod groups;
pub mod oauth;
pub mod problem;
pub mod providers;
pub mod refresh;
pub mod rekey;
pub mod resolution;
pub mod routes;
pub mod runtime_nats;
pub mod state;
pub mod telemetry;
pub mod upkeep;
pub mod upstream;
mod views;

pub use routes::{router, ROUTES};
pub use state::{AppState, Lifecycle, ReportLimit, Settings, StreamLimit, UpkeepSettings};
