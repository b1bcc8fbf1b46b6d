//! Why the domain refuses a command.

use crate::ids::ConnectionId;

/// A command the current state does not allow. Each variant maps to one
/// HTTP problem type at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The connection does not exist, or belongs to someone else: the two
    /// are deliberately indistinguishable.
    #[error("connection not found")]
    NotFound,
    /// A connection with this id already exists.
    #[error("connection {0} already exists")]
    AlreadyExists(ConnectionId),
    /// The agent has no connection for the service and the owner has no
    /// default: the owner must create or pick one.
    #[error("authorization required")]
    AuthorizationRequired,
    /// The connection is revoked and can no longer be assigned, made
    /// default or rotated.
    #[error("connection {0} is revoked")]
    Revoked(ConnectionId),
}
