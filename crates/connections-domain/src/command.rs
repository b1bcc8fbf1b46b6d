//! What a user asks of their connections.

use crate::event::UpstreamOutcome;
use crate::ids::{
    AgentId, ConnectionId, ConnectionName, CredentialKind, MasterKeyId, OwnerId, ProblemDetail, Scope, ServiceName,
    SkillName,
};

/// A command together with the user who issued it. Only the owner of the
/// state may act on it; for anyone else the connections do not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The authenticated user issuing the command.
    pub actor: OwnerId,
    /// What they ask for.
    pub command: Command,
}

/// Every change a user can make. Secrets are not part of commands: the
/// credential is sealed at the edge and only its kind reaches the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create a connection (its id minted by the caller), optionally assigning
    /// it at once to the agent whose connector skill is being configured.
    CreateConnection {
        /// The new connection's id.
        connection_id: ConnectionId,
        /// The service it authenticates to.
        service: ServiceName,
        /// Its display name.
        name: ConnectionName,
        /// The shape of its credential.
        credential_kind: CredentialKind,
        /// The agent being configured, if any; it is assigned the connection.
        agent_id: Option<AgentId>,
        /// The connector skill being configured, kept for audit.
        skill: Option<SkillName>,
    },
    /// Create an OAuth 2.0 connection once its provider granted access (the
    /// callback of a connect): a creation that also records the granted
    /// scopes, never the tokens.
    ConnectThroughProvider {
        /// The new connection's id.
        connection_id: ConnectionId,
        /// The service it authenticates to.
        service: ServiceName,
        /// Its display name.
        name: ConnectionName,
        /// The agent being configured, if any; it is assigned the connection.
        agent_id: Option<AgentId>,
        /// The connector skill being configured, kept for audit.
        skill: Option<SkillName>,
        /// The scopes the provider granted.
        scopes: Vec<Scope>,
    },
    /// Bind an agent to a connection, replacing the agent's previous
    /// connection for the same service.
    AssignToAgent {
        /// The connection to bind.
        connection_id: ConnectionId,
        /// The agent that will use it.
        agent_id: AgentId,
    },
    /// End an agent's binding to a connection.
    UnassignFromAgent {
        /// The connection.
        connection_id: ConnectionId,
        /// The agent to unbind.
        agent_id: AgentId,
    },
    /// Revoke a connection for good: its bindings and default end with it.
    RevokeConnection {
        /// The connection to revoke.
        connection_id: ConnectionId,
    },
    /// Make a connection the owner's default for its service.
    SetDefault {
        /// The connection to make default.
        connection_id: ConnectionId,
    },
    /// Remove the owner's default for the service.
    ClearDefault,
    /// An agent asks which connection to use for the service: its binding if
    /// it has one, else the owner's default, which then becomes its binding.
    ResolveForAgent {
        /// The agent asking.
        agent_id: AgentId,
    },
    /// Replace a compromised connection with a new one in one step: the new
    /// connection takes over every agent bound to the old one and, if the
    /// old one was the default, the default; the old one is revoked.
    ReplaceConnection {
        /// The connection to replace.
        connection_id: ConnectionId,
        /// The new connection's id.
        new_connection_id: ConnectionId,
        /// The new connection's name; the old one's when absent.
        name: Option<ConnectionName>,
        /// The shape of the new credential.
        credential_kind: CredentialKind,
    },
    /// An agent runtime reports that the provider rejected the credential
    /// version it was handed (HTTP 401/403), or the provider refused its
    /// refresh token. Issued on the owner's behalf by the server once it has
    /// checked that the agent was handed it.
    ReportRejected {
        /// The connection.
        connection_id: ConnectionId,
        /// The agent reporting; none for the background refresher.
        agent_id: Option<AgentId>,
        /// The credential version it was handed.
        credential_version: u32,
        /// The provider's HTTP status, if given.
        status: Option<u16>,
        /// The runtime's words, if given.
        detail: Option<ProblemDetail>,
    },
    /// Seal the tokens an OAuth provider issued on refresh as the next
    /// version, if the connection is still at `from_version` (otherwise
    /// another refresh or a rotation came first, and nothing changes).
    RefreshCredential {
        /// The connection.
        connection_id: ConnectionId,
        /// The version whose refresh token was used.
        from_version: u32,
    },
    /// Seal the tokens of a new authorization at the provider (the owner
    /// connected again) as the connection's next version: its agents and
    /// default stay, and a `needs attention` mark goes.
    ReconnectThroughProvider {
        /// The connection.
        connection_id: ConnectionId,
        /// The scopes granted.
        scopes: Vec<Scope>,
    },
    /// Record what came of revoking a revoked connection's tokens at its
    /// provider.
    RecordUpstreamRevocation {
        /// The connection (revoked).
        connection_id: ConnectionId,
        /// What came of it.
        outcome: UpstreamOutcome,
        /// How many times the provider was called.
        attempts: u32,
    },
    /// Re-wrap an active connection's data key, wrapped under `from_key_id`,
    /// under the current master key `to_key_id` (a master key rotation).
    RewrapDataKey {
        /// The connection.
        connection_id: ConnectionId,
        /// The master key it is wrapped under.
        from_key_id: MasterKeyId,
        /// The current master key.
        to_key_id: MasterKeyId,
    },
    /// Replace a connection's credential with a new version.
    RotateCredential {
        /// The connection whose credential changes.
        connection_id: ConnectionId,
        /// The shape of the new credential.
        credential_kind: CredentialKind,
    },
}

impl Command {
    /// The command's name in snake case, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateConnection { .. } => "create_connection",
            Command::ConnectThroughProvider { .. } => "connect_through_provider",
            Command::AssignToAgent { .. } => "assign_to_agent",
            Command::UnassignFromAgent { .. } => "unassign_from_agent",
            Command::RevokeConnection { .. } => "revoke_connection",
            Command::SetDefault { .. } => "set_default",
            Command::ClearDefault => "clear_default",
            Command::ResolveForAgent { .. } => "resolve_for_agent",
            Command::ReplaceConnection { .. } => "replace_connection",
            Command::ReportRejected { .. } => "report_rejected",
            Command::RefreshCredential { .. } => "refresh_credential",
            Command::ReconnectThroughProvider { .. } => "reconnect_through_provider",
            Command::RecordUpstreamRevocation { .. } => "record_upstream_revocation",
            Command::RewrapDataKey { .. } => "rewrap_data_key",
            Command::RotateCredential { .. } => "rotate_credential",
        }
    }

    /// Whether deciding this command needs the stream's current state.
    ///
    /// Creating a connection that is not assigned to an agent yields the same
    /// events whatever the stream holds: the id is fresh, the stream is the
    /// actor's own for that service, and nothing else is consulted. Such a
    /// command can be decided on an empty state and appended after whatever
    /// the stream holds, without reading it. Every other command reads.
    pub fn reads_state(&self) -> bool {
        !matches!(
            self,
            Command::CreateConnection { agent_id: None, .. } | Command::ConnectThroughProvider { agent_id: None, .. }
        )
    }
}
