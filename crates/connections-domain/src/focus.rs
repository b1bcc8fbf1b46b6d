//! What of a stream's state a command reads: its focus.
//!
//! A stream (one owner's connections for one service) can hold a long
//! history and bind many agents. A command decides on a few entries of its
//! state: the connections it names, the bindings of the agents it names, the
//! default. [`Command::focus`] says which; [`OwnerService::restricted_to`]
//! is the state a command is decided on, and the store loads exactly that
//! from its keyed copy of the state, so a command's cost does not grow with
//! the stream.
//!
//! The invariant that makes this sound, checked by property tests: for any
//! state and request, [`crate::decide`] on the restricted state answers what
//! it answers on the whole state, and every entry its events change is in
//! the restricted state (so the change can be written back entry by entry).

use std::collections::BTreeSet;

use crate::command::Command;
use crate::ids::{AgentId, ConnectionId};
use crate::state::OwnerService;

/// How many agents of a named connection a restricted state carries beyond
/// those in focus, in agent-id order: enough for an answer to list the first
/// [`AGENTS_LISTED`] after a command that removes one, and to tell whether
/// there are more.
pub const AGENT_SAMPLE: usize = AGENTS_LISTED + 2;

/// How many agents a command's answer lists for a connection.
pub const AGENTS_LISTED: usize = 100;

/// The entries of a stream's state a command reads or changes. Always in
/// focus besides: the owner, the service, the default connection, and the
/// connection each focused agent is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Focus {
    /// The connections the command names.
    pub connections: BTreeSet<ConnectionId>,
    /// The agents whose binding the command reads or changes.
    pub agents: BTreeSet<AgentId>,
    /// A connection every binding of which the command reads (a revoke or a
    /// replacement ends or moves them all).
    pub every_agent_of: Option<ConnectionId>,
}

impl Command {
    /// The entries of the state this command reads or changes.
    pub fn focus(&self) -> Focus {
        let mut focus = Focus::default();
        match self {
            Command::CreateConnection { connection_id, agent_id, .. }
            | Command::ConnectThroughProvider { connection_id, agent_id, .. } => {
                focus.connections.insert(*connection_id);
                focus.agents.extend(agent_id.iter().cloned());
            }
            Command::AssignToAgent { connection_id, agent_id }
            | Command::UnassignFromAgent { connection_id, agent_id } => {
                focus.connections.insert(*connection_id);
                focus.agents.insert(agent_id.clone());
            }
            Command::RevokeConnection { connection_id } => {
                focus.connections.insert(*connection_id);
                focus.every_agent_of = Some(*connection_id);
            }
            Command::ReplaceConnection { connection_id, new_connection_id, .. } => {
                focus.connections.extend([*connection_id, *new_connection_id]);
                focus.every_agent_of = Some(*connection_id);
            }
            Command::ResolveForAgent { agent_id } => {
                focus.agents.insert(agent_id.clone());
            }
            Command::ClearDefault => {}
            Command::SetDefault { connection_id }
            | Command::ReportRejected { connection_id, .. }
            | Command::RefreshCredential { connection_id, .. }
            | Command::ReconnectThroughProvider { connection_id, .. }
            | Command::RecordUpstreamRevocation { connection_id, .. }
            | Command::RewrapDataKey { connection_id, .. }
            | Command::RotateCredential { connection_id, .. } => {
                focus.connections.insert(*connection_id);
            }
        }
        focus
    }
}

impl OwnerService {
    /// The part of this state a command with `focus` is decided on: what
    /// the store loads for it. Besides the focus, it carries the first
    /// [`AGENT_SAMPLE`] agents (by id) of each named connection, for answers.
    pub fn restricted_to(&self, focus: &Focus) -> OwnerService {
        let mut agents: BTreeSet<&AgentId> = focus.agents.iter().collect();
        if let Some(every) = focus.every_agent_of {
            agents.extend(self.bindings.iter().filter(|(_, b)| b.connection_id == every).map(|(agent, _)| agent));
        }
        for named in &focus.connections {
            agents.extend(
                self.bindings
                    .iter()
                    .filter(|(_, b)| b.connection_id == *named)
                    .map(|(agent, _)| agent)
                    .take(AGENT_SAMPLE),
            );
        }
        let bindings: std::collections::BTreeMap<_, _> =
            agents.into_iter().filter_map(|agent| Some((agent.clone(), *self.bindings.get(agent)?))).collect();
        let mut connections: BTreeSet<ConnectionId> = focus.connections.clone();
        connections.extend(self.default);
        connections.extend(focus.agents.iter().filter_map(|agent| Some(self.bindings.get(agent)?.connection_id)));
        OwnerService {
            owner: self.owner.clone(),
            service: self.service.clone(),
            connections: connections
                .into_iter()
                .filter_map(|id| Some((id, self.connections.get(&id)?.clone())))
                .collect(),
            bindings,
            default: self.default,
        }
    }

    /// The first [`AGENTS_LISTED`] agents bound to `connection_id` in this
    /// (possibly restricted) state, in id order, and whether more are bound.
    pub fn agents_listed(&self, connection_id: ConnectionId) -> (Vec<(&AgentId, &crate::state::Binding)>, bool) {
        let mut bound = self.bindings.iter().filter(|(_, b)| b.connection_id == connection_id);
        let listed: Vec<_> = bound.by_ref().take(AGENTS_LISTED).collect();
        (listed, bound.next().is_some())
    }
}

/// What a command changed in a stream's state, entry by entry: what the
/// store writes back to its keyed copy of the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// Connections created or changed, as they are now.
    pub connections: Vec<crate::state::Connection>,
    /// Agents bound, or bound differently, with their binding now.
    pub bound: Vec<(AgentId, crate::state::Binding)>,
    /// Agents no longer bound.
    pub unbound: Vec<AgentId>,
    /// The default, if it changed.
    pub default: Option<Option<ConnectionId>>,
}

impl StateChanges {
    /// The changes from `before` to `after` (two states of one stream).
    pub fn between(before: &OwnerService, after: &OwnerService) -> Self {
        StateChanges {
            connections: after
                .connections
                .iter()
                .filter(|(id, connection)| before.connections.get(id) != Some(connection))
                .map(|(_, connection)| connection.clone())
                .collect(),
            bound: after
                .bindings
                .iter()
                .filter(|(agent, binding)| before.bindings.get(agent) != Some(binding))
                .map(|(agent, binding)| (agent.clone(), *binding))
                .collect(),
            unbound: before.bindings.keys().filter(|agent| !after.bindings.contains_key(agent)).cloned().collect(),
            default: (before.default != after.default).then_some(after.default),
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty() && self.bound.is_empty() && self.unbound.is_empty() && self.default.is_none()
    }
}

impl OwnerService {
    /// Writes `changes` into this state (what the store does to its copy).
    pub fn apply_changes(
        &mut self,
        owner: &crate::ids::OwnerId,
        service: &crate::ids::ServiceName,
        changes: &StateChanges,
    ) {
        if !changes.connections.is_empty() {
            self.owner.get_or_insert_with(|| owner.clone());
            self.service.get_or_insert_with(|| service.clone());
        }
        for connection in &changes.connections {
            self.connections.insert(connection.connection_id, connection.clone());
        }
        for agent in &changes.unbound {
            self.bindings.remove(agent);
        }
        for (agent, binding) in &changes.bound {
            self.bindings.insert(agent.clone(), *binding);
        }
        if let Some(default) = changes.default {
            self.default = default;
        }
    }
}
