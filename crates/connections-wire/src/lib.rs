//! `connections-wire`: the contract between Connections and everything that
//! talks to it over the wire — NATS subject, stream and consumer names
//! ([`Names`]), the event [`Envelope`], runtime [`Notice`]s, the
//! [`RuntimeCredentials`] a runtime obtains for NATS, and the
//! [`problem`] types of HTTP errors.
//!
//! It does no I/O and pulls in nothing but serde, so an agent runtime can
//! depend on it without the server's Postgres or HTTP stack. The documents
//! behind it are in `schemas/` (`schemas/nats/subjects.md`,
//! `notice.v1.json`, `envelope.v1.json`; `RuntimeCredentials` in `openapi.json`).

mod envelope;
mod names;
mod notice;
pub mod problem;
mod runtime;

pub use envelope::{Envelope, EnvelopeCursor};
pub use names::{Names, NamesError};
pub use notice::{Notice, NoticeKind, NoticedEvent};
pub use runtime::{RuntimeCredentials, RuntimeCredentialsRequest};
