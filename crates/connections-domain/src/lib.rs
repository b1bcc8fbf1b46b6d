//! The pure decision core of Connections.
//!
//! Everything a connection can go through is decided here: a [`Command`] is
//! checked against the current [`OwnerService`] state by [`decide`], which
//! answers the [`Event`]s to append; [`OwnerService::evolve`] folds events back
//! into state. There is no I/O, no clock and no randomness in this crate: ids
//! and times arrive on the command, and the store records when things happened.
//!
//! The consistency boundary is one owner's connections for one service (see
//! `ARCHITECTURE.md`): every invariant the product promises (one binding per
//! agent and service, at most one default per service, nothing bound to or
//! defaulting to a revoked connection) is local to that boundary, so a single
//! optimistic-concurrency check on one stream keeps them all under concurrency.

mod command;
mod decide;
mod error;
mod event;
mod focus;
mod ids;
mod state;

pub use command::{Command, Request};
pub use decide::decide;
pub use error::DomainError;
pub use event::{BindingSource, DefaultClearReason, Event, UnbindReason, UpstreamOutcome};
pub use focus::{Focus, StateChanges, AGENTS_LISTED, AGENT_SAMPLE};
pub use ids::{
    AgentId, ConnectionId, ConnectionName, CredentialKind, IdError, MasterKeyId, OwnerId, ProblemDetail, Scope,
    ServiceName, SkillName,
};
pub use state::{Binding, Connection, ConnectionStatus, OwnerService};
