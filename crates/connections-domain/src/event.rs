//! What happened to a user's connections. Events are plain values; their
//! stored form (type names, schema versions) lives in the store crate and in
//! `schemas/events/`.

use crate::ids::{
    AgentId, ConnectionId, ConnectionName, CredentialKind, MasterKeyId, OwnerId, ProblemDetail, Scope, ServiceName,
    SkillName,
};

/// How an agent came to be bound to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingSource {
    /// The connection was created while configuring this agent's skill.
    Created,
    /// The owner assigned the connection to the agent.
    Assigned,
    /// The agent asked for authorization and was given the owner's default.
    Default,
}

/// Why an agent's binding ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnbindReason {
    /// The owner unassigned the agent.
    Unassigned,
    /// The agent was assigned another connection for the same service.
    Replaced,
    /// The connection was revoked.
    Revoked,
}

/// Why a service's default was cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultClearReason {
    /// The owner cleared it.
    Cleared,
    /// The default connection was revoked.
    Revoked,
}

/// What came of revoking a connection's tokens at its OAuth provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// The provider's revocation endpoint accepted every token (RFC 7009).
    Revoked,
    /// The attempts ran out; the tokens were destroyed here without the
    /// provider confirming (they die at their own expiry there).
    GaveUp,
}

/// A fact about one owner's connections for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection was created; its sealed credential is version 1.
    ConnectionCreated {
        /// The new connection.
        connection_id: ConnectionId,
        /// Its owner.
        owner: OwnerId,
        /// The service it authenticates to.
        service: ServiceName,
        /// Its display name.
        name: ConnectionName,
        /// The shape of its credential.
        credential_kind: CredentialKind,
        /// The agent being configured when it was created.
        agent_id: Option<AgentId>,
        /// The connector skill being configured when it was created.
        skill: Option<SkillName>,
        /// The connection this one replaced, when created by a replacement.
        replaces: Option<ConnectionId>,
    },
    /// An OAuth 2.0 provider granted a new connection these scopes (its
    /// tokens are sealed like any credential, never in an event).
    OauthGranted {
        /// The connection.
        connection_id: ConnectionId,
        /// The granted scopes.
        scopes: Vec<Scope>,
    },
    /// An agent was bound to a connection.
    AgentAssigned {
        /// The connection.
        connection_id: ConnectionId,
        /// The agent now using it.
        agent_id: AgentId,
        /// How the binding came about.
        source: BindingSource,
    },
    /// An agent's binding to a connection ended.
    AgentUnassigned {
        /// The connection.
        connection_id: ConnectionId,
        /// The agent no longer using it.
        agent_id: AgentId,
        /// Why.
        reason: UnbindReason,
    },
    /// A connection's credential was replaced by a new version.
    CredentialRotated {
        /// The connection.
        connection_id: ConnectionId,
        /// The new credential version (the first is 1).
        credential_version: u32,
        /// The shape of the new credential.
        credential_kind: CredentialKind,
    },
    /// The connection's OAuth tokens were refreshed at the provider: a new
    /// sealed version (runtimes holding the old one drop it).
    CredentialRefreshed {
        /// The connection.
        connection_id: ConnectionId,
        /// The new credential version.
        credential_version: u32,
    },
    /// A runtime reported that the provider rejected the connection's
    /// current credential, or the provider refused to refresh it: it needs
    /// the owner's attention until it is rotated, reconnected, replaced or
    /// revoked. Resolving it keeps working (until an OAuth token expires).
    CredentialRejected {
        /// The connection.
        connection_id: ConnectionId,
        /// The agent that reported it, or none when the background
        /// refresher found the refresh token refused.
        agent_id: Option<AgentId>,
        /// The credential version rejected (the current one).
        credential_version: u32,
        /// The provider's HTTP status, if given.
        status: Option<u16>,
        /// The runtime's words, if given.
        detail: Option<ProblemDetail>,
    },
    /// A connection became the default for its service.
    DefaultSet {
        /// The new default.
        connection_id: ConnectionId,
        /// The default it replaced, if any.
        previous: Option<ConnectionId>,
    },
    /// The service's default was cleared.
    DefaultCleared {
        /// The connection that was the default.
        connection_id: ConnectionId,
        /// Why.
        reason: DefaultClearReason,
    },
    /// A connection was revoked; its data key is destroyed in the same
    /// transaction, and the bindings of `affected_agents` to it end with
    /// this event (no `AgentUnassigned` per agent: one fact, however many
    /// agents used it).
    ConnectionRevoked {
        /// The connection.
        connection_id: ConnectionId,
        /// The agents that were using it at the moment of revocation (for a
        /// replacement: the agents moved to the new connection).
        affected_agents: Vec<AgentId>,
        /// The connection that replaced it, when revoked by a replacement.
        replaced_by: Option<ConnectionId>,
    },
    /// The connection's data key was re-wrapped under another master key (a
    /// master key rotation): no key material, only the ids.
    DataKeyRewrapped {
        /// The connection.
        connection_id: ConnectionId,
        /// The master key it was wrapped under.
        from_key_id: MasterKeyId,
        /// The master key it is wrapped under now.
        to_key_id: MasterKeyId,
    },
    /// The revoked connection's tokens were revoked at its OAuth provider,
    /// or the server gave up trying (after the revocation here, which did
    /// not wait for it).
    UpstreamRevoked {
        /// The connection.
        connection_id: ConnectionId,
        /// What came of it.
        outcome: UpstreamOutcome,
        /// How many times the provider was called.
        attempts: u32,
    },
}

impl Event {
    /// The connection this event is about (every event is about one).
    pub fn connection_id(&self) -> ConnectionId {
        match self {
            Event::ConnectionCreated { connection_id, .. }
            | Event::AgentAssigned { connection_id, .. }
            | Event::AgentUnassigned { connection_id, .. }
            | Event::CredentialRotated { connection_id, .. }
            | Event::CredentialRejected { connection_id, .. }
            | Event::OauthGranted { connection_id, .. }
            | Event::CredentialRefreshed { connection_id, .. }
            | Event::DefaultSet { connection_id, .. }
            | Event::DefaultCleared { connection_id, .. }
            | Event::ConnectionRevoked { connection_id, .. }
            | Event::UpstreamRevoked { connection_id, .. }
            | Event::DataKeyRewrapped { connection_id, .. } => *connection_id,
        }
    }
}
