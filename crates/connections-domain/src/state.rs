//! The state of one owner's connections for one service, folded from events.

use std::collections::BTreeMap;

use crate::event::{BindingSource, Event};
use crate::ids::{AgentId, ConnectionId, ConnectionName, CredentialKind, OwnerId, ServiceName, SkillName};

/// Whether a connection can still be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// Usable.
    Active,
    /// Revoked for good; the agents that were using it at that moment.
    Revoked {
        /// Agents bound to the connection when it was revoked.
        affected_agents: Vec<AgentId>,
        /// The connection that replaced it, if a replacement revoked it.
        replaced_by: Option<ConnectionId>,
    },
}

/// One connection as the domain sees it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Its id.
    pub connection_id: ConnectionId,
    /// Its display name.
    pub name: ConnectionName,
    /// The shape of its current credential.
    pub credential_kind: CredentialKind,
    /// The current credential version (1 at creation).
    pub credential_version: u32,
    /// The skill it was created for.
    pub skill: Option<SkillName>,
    /// Active or revoked.
    pub status: ConnectionStatus,
    /// The connection this one replaced, if it was created by a replacement.
    pub replaces: Option<ConnectionId>,
    /// A runtime reported that the provider rejected the current credential
    /// (cleared by a rotation; a revocation ends the question).
    pub needs_attention: bool,
}

impl Connection {
    /// Whether it can still be used (not revoked).
    pub fn is_active(&self) -> bool {
        self.status == ConnectionStatus::Active
    }
}

/// An agent's binding to a connection for this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The connection the agent uses.
    pub connection_id: ConnectionId,
    /// How the binding came about.
    pub source: BindingSource,
}

/// All of one owner's connections for one service: the consistency boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerService {
    /// The owner, once the first connection exists.
    pub owner: Option<OwnerId>,
    /// The service, once the first connection exists.
    pub service: Option<ServiceName>,
    /// Every connection ever created here, by id.
    pub connections: BTreeMap<ConnectionId, Connection>,
    /// The current binding of each agent for this service.
    pub bindings: BTreeMap<AgentId, Binding>,
    /// The owner's default connection for this service.
    pub default: Option<ConnectionId>,
}

impl OwnerService {
    /// Folds one event into the state.
    pub fn evolve(mut self, event: &Event) -> Self {
        self.apply(event);
        self
    }

    /// Folds one event into the state in place.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::ConnectionCreated {
                connection_id, owner, service, name, credential_kind, skill, replaces, ..
            } => {
                self.owner.get_or_insert_with(|| owner.clone());
                self.service.get_or_insert_with(|| service.clone());
                self.connections.insert(
                    *connection_id,
                    Connection {
                        connection_id: *connection_id,
                        name: name.clone(),
                        credential_kind: *credential_kind,
                        credential_version: 1,
                        skill: skill.clone(),
                        status: ConnectionStatus::Active,
                        replaces: *replaces,
                        needs_attention: false,
                    },
                );
            }
            Event::AgentAssigned { connection_id, agent_id, source } => {
                self.bindings.insert(agent_id.clone(), Binding { connection_id: *connection_id, source: *source });
            }
            Event::AgentUnassigned { connection_id, agent_id, .. } => {
                if self.bindings.get(agent_id).is_some_and(|b| b.connection_id == *connection_id) {
                    self.bindings.remove(agent_id);
                }
            }
            Event::CredentialRotated { connection_id, credential_version, credential_kind } => {
                if let Some(connection) = self.connections.get_mut(connection_id) {
                    connection.credential_version = *credential_version;
                    connection.credential_kind = *credential_kind;
                    connection.needs_attention = false;
                }
            }
            Event::OauthGranted { .. } | Event::UpstreamRevoked { .. } | Event::DataKeyRewrapped { .. } => {}
            Event::CredentialRefreshed { connection_id, credential_version } => {
                if let Some(connection) = self.connections.get_mut(connection_id) {
                    connection.credential_version = *credential_version;
                    connection.needs_attention = false;
                }
            }
            Event::CredentialRejected { connection_id, credential_version, .. } => {
                if let Some(connection) = self.connections.get_mut(connection_id) {
                    if connection.credential_version == *credential_version {
                        connection.needs_attention = true;
                    }
                }
            }
            Event::DefaultSet { connection_id, .. } => self.default = Some(*connection_id),
            Event::DefaultCleared { connection_id, .. } => {
                if self.default == Some(*connection_id) {
                    self.default = None;
                }
            }
            Event::ConnectionRevoked { connection_id, affected_agents, replaced_by } => {
                // A revoke's bindings end with it (logs written before
                // ended each one with `agent_unassigned` first; a replace
                // moves them first: either way none is left here then).
                for agent_id in affected_agents {
                    if self.bindings.get(agent_id).is_some_and(|b| b.connection_id == *connection_id) {
                        self.bindings.remove(agent_id);
                    }
                }
                if let Some(connection) = self.connections.get_mut(connection_id) {
                    connection.status = ConnectionStatus::Revoked {
                        affected_agents: affected_agents.clone(),
                        replaced_by: *replaced_by,
                    };
                    connection.needs_attention = false;
                }
            }
        }
    }

    /// Whether `actor` owns this state. An empty state is owned by nobody.
    pub fn is_owned_by(&self, actor: &OwnerId) -> bool {
        self.owner.as_ref() == Some(actor)
    }

    /// The agents currently bound to `connection_id`, in id order.
    pub fn agents_of(&self, connection_id: ConnectionId) -> Vec<AgentId> {
        self.bindings
            .iter()
            .filter(|(_, binding)| binding.connection_id == connection_id)
            .map(|(agent, _)| agent.clone())
            .collect()
    }

    /// The connection, if it exists here and `actor` owns it.
    pub fn connection_for(&self, actor: &OwnerId, connection_id: ConnectionId) -> Option<&Connection> {
        if !self.is_owned_by(actor) {
            return None;
        }
        self.connections.get(&connection_id)
    }
}
