//! The decision function: which events a command produces, or why it is refused.

use crate::command::{Command, Request};
use crate::error::DomainError;
use crate::event::{BindingSource, DefaultClearReason, Event, UnbindReason};
use crate::ids::{AgentId, ConnectionId, ConnectionName, CredentialKind, OwnerId, Scope, ServiceName, SkillName};
use crate::state::{Connection, ConnectionStatus, OwnerService};

/// Decides what `request` changes in `state`.
///
/// Commands that would change nothing (revoking twice, assigning an agent to
/// the connection it already uses, clearing an absent default) succeed with
/// no events, so that retries are harmless and answer the same.
pub fn decide(state: &OwnerService, request: &Request) -> Result<Vec<Event>, DomainError> {
    let actor = &request.actor;
    match &request.command {
        Command::CreateConnection { connection_id, service, name, credential_kind, agent_id, skill } => {
            let created = Created { connection_id, service, name, credential_kind, agent_id, skill };
            create(state, actor, created, None)
        }
        Command::ConnectThroughProvider { connection_id, service, name, agent_id, skill, scopes } => {
            let credential_kind = &CredentialKind::Oauth2;
            let created = Created { connection_id, service, name, credential_kind, agent_id, skill };
            create(state, actor, created, Some(scopes))
        }
        Command::AssignToAgent { connection_id, agent_id } => {
            active(state, request, *connection_id)?;
            Ok(bind(state, *connection_id, agent_id, BindingSource::Assigned))
        }
        Command::UnassignFromAgent { connection_id, agent_id } => {
            existing(state, request, *connection_id)?;
            let bound_here = state.bindings.get(agent_id).is_some_and(|b| b.connection_id == *connection_id);
            if !bound_here {
                return Ok(vec![]);
            }
            Ok(vec![Event::AgentUnassigned {
                connection_id: *connection_id,
                agent_id: agent_id.clone(),
                reason: UnbindReason::Unassigned,
            }])
        }
        Command::RevokeConnection { connection_id } => {
            let connection = existing(state, request, *connection_id)?;
            if matches!(connection.status, ConnectionStatus::Revoked { .. }) {
                return Ok(vec![]);
            }
            // One fact, whatever the number of agents: the revocation itself
            // ends the bindings of the agents it names.
            let affected_agents = state.agents_of(*connection_id);
            let mut events = Vec::with_capacity(2);
            if state.default == Some(*connection_id) {
                events
                    .push(Event::DefaultCleared { connection_id: *connection_id, reason: DefaultClearReason::Revoked });
            }
            events.push(Event::ConnectionRevoked { connection_id: *connection_id, affected_agents, replaced_by: None });
            Ok(events)
        }
        Command::ReplaceConnection { connection_id, new_connection_id, name, credential_kind } => {
            let old = active(state, request, *connection_id)?;
            if state.connections.contains_key(new_connection_id) {
                return Err(DomainError::AlreadyExists(*new_connection_id));
            }
            let (owner, service) = match (&state.owner, &state.service) {
                (Some(owner), Some(service)) => (owner.clone(), service.clone()),
                _ => return Err(DomainError::NotFound),
            };
            let moved = state.agents_of(*connection_id);
            let mut events = Vec::with_capacity(2 * moved.len() + 3);
            events.push(Event::ConnectionCreated {
                connection_id: *new_connection_id,
                owner,
                service,
                name: name.clone().unwrap_or_else(|| old.name.clone()),
                credential_kind: *credential_kind,
                agent_id: None,
                skill: old.skill.clone(),
                replaces: Some(*connection_id),
            });
            if state.default == Some(*connection_id) {
                events.push(Event::DefaultSet { connection_id: *new_connection_id, previous: Some(*connection_id) });
            }
            // Each agent keeps how it came to use the connection (created,
            // assigned, through the default): only the connection changes.
            for agent_id in &moved {
                let source = state.bindings[agent_id].source;
                events.push(Event::AgentUnassigned {
                    connection_id: *connection_id,
                    agent_id: agent_id.clone(),
                    reason: UnbindReason::Replaced,
                });
                events.push(Event::AgentAssigned {
                    connection_id: *new_connection_id,
                    agent_id: agent_id.clone(),
                    source,
                });
            }
            events.push(Event::ConnectionRevoked {
                connection_id: *connection_id,
                affected_agents: moved,
                replaced_by: Some(*new_connection_id),
            });
            Ok(events)
        }
        Command::SetDefault { connection_id } => {
            active(state, request, *connection_id)?;
            if state.default == Some(*connection_id) {
                return Ok(vec![]);
            }
            Ok(vec![Event::DefaultSet { connection_id: *connection_id, previous: state.default }])
        }
        Command::ClearDefault => match state.default {
            Some(connection_id) if state.is_owned_by(actor) => {
                Ok(vec![Event::DefaultCleared { connection_id, reason: DefaultClearReason::Cleared }])
            }
            _ => Ok(vec![]),
        },
        Command::ResolveForAgent { agent_id } => {
            if !state.is_owned_by(actor) {
                return Err(DomainError::AuthorizationRequired);
            }
            if state.bindings.contains_key(agent_id) {
                return Ok(vec![]);
            }
            match state.default {
                Some(connection_id) => Ok(vec![Event::AgentAssigned {
                    connection_id,
                    agent_id: agent_id.clone(),
                    source: BindingSource::Default,
                }]),
                None => Err(DomainError::AuthorizationRequired),
            }
        }
        Command::ReportRejected { connection_id, agent_id, credential_version, status, detail } => {
            let connection = active(state, request, *connection_id)?;
            // A report about an older version is answered by the rotation
            // that followed it; a second report changes nothing.
            if *credential_version != connection.credential_version || connection.needs_attention {
                return Ok(vec![]);
            }
            Ok(vec![Event::CredentialRejected {
                connection_id: *connection_id,
                agent_id: agent_id.clone(),
                credential_version: *credential_version,
                status: *status,
                detail: detail.clone(),
            }])
        }
        Command::RefreshCredential { connection_id, from_version } => {
            let connection = active(state, request, *connection_id)?;
            if connection.credential_version != *from_version || connection.credential_kind != CredentialKind::Oauth2 {
                return Ok(vec![]);
            }
            Ok(vec![Event::CredentialRefreshed { connection_id: *connection_id, credential_version: from_version + 1 }])
        }
        Command::ReconnectThroughProvider { connection_id, scopes } => {
            let connection = active(state, request, *connection_id)?;
            Ok(vec![
                Event::CredentialRotated {
                    connection_id: *connection_id,
                    credential_version: connection.credential_version + 1,
                    credential_kind: CredentialKind::Oauth2,
                },
                Event::OauthGranted { connection_id: *connection_id, scopes: scopes.clone() },
            ])
        }
        Command::RecordUpstreamRevocation { connection_id, outcome, attempts } => {
            let connection = existing(state, request, *connection_id)?;
            // Only a revoked connection's tokens are revoked upstream (a
            // refresh result discarded because of the revocation included).
            if connection.status == ConnectionStatus::Active {
                return Ok(vec![]);
            }
            Ok(vec![Event::UpstreamRevoked { connection_id: *connection_id, outcome: *outcome, attempts: *attempts }])
        }
        Command::RewrapDataKey { connection_id, from_key_id, to_key_id } => {
            // A revoked connection has no data key left to re-wrap.
            active(state, request, *connection_id)?;
            if from_key_id == to_key_id {
                return Ok(vec![]);
            }
            Ok(vec![Event::DataKeyRewrapped {
                connection_id: *connection_id,
                from_key_id: from_key_id.clone(),
                to_key_id: to_key_id.clone(),
            }])
        }
        Command::RotateCredential { connection_id, credential_kind } => {
            let connection = active(state, request, *connection_id)?;
            Ok(vec![Event::CredentialRotated {
                connection_id: *connection_id,
                credential_version: connection.credential_version + 1,
                credential_kind: *credential_kind,
            }])
        }
    }
}

/// What a creation names.
struct Created<'c> {
    connection_id: &'c ConnectionId,
    service: &'c ServiceName,
    name: &'c ConnectionName,
    credential_kind: &'c CredentialKind,
    agent_id: &'c Option<AgentId>,
    skill: &'c Option<SkillName>,
}

/// A new connection (with the scopes a provider granted, for OAuth), bound
/// to the agent being configured if any.
fn create(
    state: &OwnerService,
    actor: &OwnerId,
    c: Created<'_>,
    granted: Option<&Vec<Scope>>,
) -> Result<Vec<Event>, DomainError> {
    let foreign = state.owner.as_ref().is_some_and(|owner| owner != actor)
        || state.service.as_ref().is_some_and(|known| known != c.service);
    if foreign {
        return Err(DomainError::NotFound);
    }
    if state.connections.contains_key(c.connection_id) {
        return Err(DomainError::AlreadyExists(*c.connection_id));
    }
    let mut events = vec![Event::ConnectionCreated {
        connection_id: *c.connection_id,
        owner: actor.clone(),
        service: c.service.clone(),
        name: c.name.clone(),
        credential_kind: *c.credential_kind,
        agent_id: c.agent_id.clone(),
        skill: c.skill.clone(),
        replaces: None,
    }];
    if let Some(scopes) = granted {
        events.push(Event::OauthGranted { connection_id: *c.connection_id, scopes: scopes.clone() });
    }
    if let Some(agent_id) = c.agent_id {
        events.extend(bind(state, *c.connection_id, agent_id, BindingSource::Created));
    }
    Ok(events)
}

/// The connection, if it exists and the actor owns it; otherwise `NotFound`.
fn existing<'s>(
    state: &'s OwnerService,
    request: &Request,
    connection_id: ConnectionId,
) -> Result<&'s Connection, DomainError> {
    state.connection_for(&request.actor, connection_id).ok_or(DomainError::NotFound)
}

/// The connection, if it exists, the actor owns it, and it is not revoked.
fn active<'s>(
    state: &'s OwnerService,
    request: &Request,
    connection_id: ConnectionId,
) -> Result<&'s Connection, DomainError> {
    let connection = existing(state, request, connection_id)?;
    match connection.status {
        ConnectionStatus::Active => Ok(connection),
        ConnectionStatus::Revoked { .. } => Err(DomainError::Revoked(connection_id)),
    }
}

/// The events that bind `agent_id` to `connection_id`, ending the agent's
/// previous binding for this service if it had one.
fn bind(
    state: &OwnerService,
    connection_id: ConnectionId,
    agent_id: &crate::ids::AgentId,
    source: BindingSource,
) -> Vec<Event> {
    match state.bindings.get(agent_id) {
        Some(current) if current.connection_id == connection_id => vec![],
        Some(current) => vec![
            Event::AgentUnassigned {
                connection_id: current.connection_id,
                agent_id: agent_id.clone(),
                reason: UnbindReason::Replaced,
            },
            Event::AgentAssigned { connection_id, agent_id: agent_id.clone(), source },
        ],
        None => vec![Event::AgentAssigned { connection_id, agent_id: agent_id.clone(), source }],
    }
}
