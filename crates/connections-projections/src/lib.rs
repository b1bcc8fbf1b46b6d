//! The dashboard read models and everything that keeps them current.
//!
//! - `model`: the read models in memory and the one fold of events into them.
//! - [`dashboard`]: a batch of events applied to the live read models.
//! - [`projector::run`]: a durable JetStream consumer applying events in log
//!   order, with its checkpoint in the same transaction as its writes.
//! - [`rebuild`]: the same read models from the start of the log, folded in
//!   memory into fresh tables, then swapped in while readers keep reading.
//! - [`queries`]: owner-scoped reads under row-level security.

pub mod checkpoint;
pub mod dashboard;
mod model;
pub mod projector;
pub mod queries;
pub mod rebuild;
pub mod review;

/// The name of the dashboard projection (checkpoint row and consumer name).
pub const DASHBOARD: &str = "dashboard";
