//! Fan-out: the Postgres log, relayed to NATS JetStream.
//!
//! - [`Names`]: every subject, stream and consumer name, derived from one
//!   configurable prefix so deployments and tests can share a NATS server.
//! - [`Envelope`]: the JSON payload of each event message (never a secret).
//! - [`Announcer`]: tells the relay of commits (at once here, by a
//!   coalesced `NOTIFY` elsewhere).
//! - [`LogListener`]: a dedicated Postgres connection that LISTENs for
//!   appends and projection progress, and can hold leadership (an advisory lock).
//! - [`relay::run`]: follows the log in its gap-safe order and publishes each
//!   event exactly once, in order, fenced by `Nats-Expected-Last-Sequence`,
//!   and, before each event, the [`Notice`] agent runtimes react to.
//! - [`UrgentNotices`]: a command's own, earlier copy of the notices that
//!   make runtimes drop a credential (revocations, rotations).

mod announce;
mod envelope;
mod listener;
pub mod nats;
pub mod relay;
mod restarts;
pub mod roles;
pub mod session;
mod urgent;

pub use announce::Announcer;
pub use connections_wire::{Envelope, EnvelopeCursor, Names, NamesError, Notice, NoticeKind, NoticedEvent};
pub use envelope::{envelope_cursor, envelope_of, log_cursor};
pub use listener::{
    format_cursor, parse_cursor, parse_projected, projected_payload, Changed, LogListener, Signals, EVENTS_CHANNEL,
    PROJECTED_CHANNEL,
};
pub use restarts::Restarts;
pub use roles::{RoleGuard, Roles};
pub use urgent::{Outgoing, Sending, StoredNotices, UrgentNotices};
