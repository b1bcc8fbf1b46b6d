//! The Postgres side of Connections.
//!
//! - [`EventLog`]: the append-only event log, with optimistic concurrency per
//!   stream, atomic multi-stream appends and a gap-safe reader of the global
//!   order ([`EventLog::read_after`]).
//! - [`codec`]: the stored form of domain events (stable type names and
//!   schema versions), kept apart from the domain.
//! - Side tables written in the same transaction as the events they go with:
//!   the connection locator, data keys and sealed credentials, idempotency keys.

mod access_log;
mod bystanders;
pub mod chain;
pub mod codec;
mod database;
mod error;
pub mod history;
mod hygiene;
mod idempotency;
mod locator;
mod log;
mod migrate;
mod oauth_state;
mod recent;
mod seal;
mod secrets;
mod state_cache;
mod stream_state;
mod transaction;
mod upkeep;

pub use access_log::Access;
pub use bystanders::{Bystanders, Registered};
pub use database::{connect_named_pool, connect_pool, default_pool_size, ensure_database, Database};
pub use error::StoreError;
pub use hygiene::CredentialHygiene;
pub use idempotency::{IdempotencyClaim, StoredResponse};
pub use locator::{ConnectionLocation, LocationCache, LockedStream};
pub use log::{
    recorded as event_from_row, stored_hash, EventLog, Following, LogCursor, Metadata, NewEvent, RecordedEvent,
    StreamAppend, StreamId, StreamVersion, COLUMNS as EVENT_COLUMNS,
};
pub use migrate::{is_current as migrations_current, migrate};
pub use oauth_state::{Consumed, PendingFlow};
pub use secrets::StoredCredential;
pub use state_cache::StateCache;
pub use stream_state::{fold, LoadSource, Loaded, StreamState, READ_WHOLE_UP_TO};
pub use transaction::PipelinedTransaction;
pub use upkeep::{PendingRevocation, RefreshDue, RefreshSchedule, UpstreamRevocations};
