//! The dashboard read models in memory, and the one fold that changes them:
//! the live projector loads the rows a batch touches, folds the batch and
//! writes those rows back ([`crate::dashboard`]); a rebuild folds the whole
//! log from nothing and bulk-loads the result ([`crate::rebuild`]).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use connections_domain::Event;
use connections_store::codec::binding_source_name;
use connections_store::LogCursor;
use uuid::Uuid;

/// A row of `rm_connections`, keyed by (owner, connection).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ConnectionRow {
    pub service: String,
    pub name: String,
    pub skill: Option<String>,
    pub credential_kind: String,
    pub credential_version: i32,
    pub status: String,
    pub is_default: bool,
    pub needs_attention: bool,
    pub agent_count: i32,
    pub created_at: DateTime<Utc>,
    pub last_changed_at: DateTime<Utc>,
    pub last_position: i64,
}

/// A row of `rm_services`, keyed by (owner, service).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServiceRow {
    pub active_connections: i32,
    pub default_connection_id: Option<Uuid>,
    pub agent_count: i32,
}

/// A row of `rm_connection_agents`, keyed by (owner, connection, agent).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentRow {
    pub service: String,
    pub source: String,
    pub since: DateTime<Utc>,
}

/// A row of `rm_changes`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChangeRow {
    pub owner: String,
    pub cursor: LogCursor,
    pub event_type: String,
    pub connection_id: Uuid,
    pub service: String,
    pub occurred_at: DateTime<Utc>,
}

pub(crate) type ConnectionKey = (String, Uuid);
pub(crate) type ServiceKey = (String, String);
pub(crate) type AgentKey = (String, Uuid, String);

/// One event as the fold needs it.
pub(crate) struct Fact<'a> {
    pub owner: &'a str,
    pub service: &'a str,
    pub cursor: LogCursor,
    pub recorded_at: DateTime<Utc>,
    pub event_type: &'a str,
    pub event: &'a Event,
}

impl Fact<'_> {
    /// The rows this event may change (besides the change feed's new row).
    pub fn keys(&self) -> (Vec<ConnectionKey>, ServiceKey, Vec<AgentKey>) {
        let id = self.event.connection_id().as_uuid();
        let mut connections = vec![(self.owner.to_owned(), id)];
        if let Event::DefaultSet { previous: Some(previous), .. } = self.event {
            connections.push((self.owner.to_owned(), previous.as_uuid()));
        }
        let agent_key = |agent_id: &connections_domain::AgentId| (self.owner.to_owned(), id, agent_id.to_string());
        let agents = match self.event {
            Event::AgentAssigned { agent_id, .. } | Event::AgentUnassigned { agent_id, .. } => {
                vec![agent_key(agent_id)]
            }
            // A revoke's bindings end with it (since `connection_revoked` v3).
            Event::ConnectionRevoked { affected_agents, .. } => affected_agents.iter().map(agent_key).collect(),
            _ => Vec::new(),
        };
        (connections, (self.owner.to_owned(), self.service.to_owned()), agents)
    }
}

/// The dashboard read models (or the part of them a batch touches).
#[derive(Debug, Default)]
pub(crate) struct Model {
    pub connections: HashMap<ConnectionKey, ConnectionRow>,
    pub services: HashMap<ServiceKey, ServiceRow>,
    pub agents: BTreeMap<AgentKey, AgentRow>,
    pub changes: Vec<ChangeRow>,
}

impl Model {
    /// Folds one event in. An event about a row the model does not hold
    /// changes nothing there (as an UPDATE of a missing row would not).
    pub fn apply(&mut self, fact: &Fact<'_>) {
        let (owner, service, at) = (fact.owner, fact.service, fact.recorded_at);
        let id = fact.event.connection_id().as_uuid();
        let key = (owner.to_owned(), id);
        let service_key = (owner.to_owned(), service.to_owned());
        match fact.event {
            Event::ConnectionCreated { name, credential_kind, skill, .. } => {
                self.connections.entry(key.clone()).or_insert_with(|| ConnectionRow {
                    service: service.to_owned(),
                    name: name.to_string(),
                    skill: skill.as_ref().map(|s| s.to_string()),
                    credential_kind: credential_kind.as_str().to_owned(),
                    credential_version: 1,
                    status: "active".to_owned(),
                    created_at: at,
                    ..Default::default()
                });
                self.services.entry(service_key).or_default().active_connections += 1;
            }
            Event::AgentAssigned { agent_id, source, .. } => {
                self.agents.insert(
                    (owner.to_owned(), id, agent_id.to_string()),
                    AgentRow {
                        service: service.to_owned(),
                        source: binding_source_name(*source).to_owned(),
                        since: at,
                    },
                );
                self.bump_agents(&key, &service_key, 1);
            }
            Event::AgentUnassigned { agent_id, .. } => {
                self.agents.remove(&(owner.to_owned(), id, agent_id.to_string()));
                self.bump_agents(&key, &service_key, -1);
            }
            Event::CredentialRotated { credential_version, credential_kind, .. } => {
                if let Some(row) = self.connections.get_mut(&key) {
                    row.credential_version = *credential_version as i32;
                    row.credential_kind = credential_kind.as_str().to_owned();
                    row.needs_attention = false;
                }
            }
            // The scopes live in the log (and the sealed credential); the
            // dashboard shows none of them yet.
            Event::OauthGranted { .. } | Event::UpstreamRevoked { .. } | Event::DataKeyRewrapped { .. } => {}
            Event::CredentialRefreshed { credential_version, .. } => {
                if let Some(row) = self.connections.get_mut(&key) {
                    row.credential_version = *credential_version as i32;
                    row.needs_attention = false;
                }
            }
            Event::CredentialRejected { .. } => {
                if let Some(row) = self.connections.get_mut(&key) {
                    row.needs_attention = true;
                }
            }
            Event::DefaultSet { previous, .. } => {
                if let Some(previous) = previous {
                    if let Some(row) = self.connections.get_mut(&(owner.to_owned(), previous.as_uuid())) {
                        row.is_default = false;
                        row.last_changed_at = at;
                        row.last_position = fact.cursor.position;
                    }
                }
                if let Some(row) = self.connections.get_mut(&key) {
                    row.is_default = true;
                }
                if let Some(row) = self.services.get_mut(&service_key) {
                    row.default_connection_id = Some(id);
                }
            }
            Event::DefaultCleared { .. } => {
                if let Some(row) = self.connections.get_mut(&key) {
                    row.is_default = false;
                }
                if let Some(row) = self.services.get_mut(&service_key) {
                    row.default_connection_id = None;
                }
            }
            Event::ConnectionRevoked { affected_agents, .. } => {
                // The bindings it ends (none left when each ended with its
                // own `agent_unassigned` before it, as in logs before v3).
                for agent_id in affected_agents {
                    if self.agents.remove(&(owner.to_owned(), id, agent_id.to_string())).is_some() {
                        self.bump_agents(&key, &service_key, -1);
                    }
                }
                if let Some(row) = self.connections.get_mut(&key) {
                    row.status = "revoked".to_owned();
                    row.needs_attention = false;
                }
                if let Some(row) = self.services.get_mut(&service_key) {
                    row.active_connections -= 1;
                }
            }
        }
        if let Some(row) = self.connections.get_mut(&key) {
            row.last_changed_at = at;
            row.last_position = fact.cursor.position;
        }
        self.changes.push(ChangeRow {
            owner: owner.to_owned(),
            cursor: fact.cursor,
            event_type: fact.event_type.to_owned(),
            connection_id: id,
            service: service.to_owned(),
            occurred_at: at,
        });
    }

    fn bump_agents(&mut self, key: &ConnectionKey, service_key: &ServiceKey, delta: i32) {
        if let Some(row) = self.connections.get_mut(key) {
            row.agent_count += delta;
        }
        if let Some(row) = self.services.get_mut(service_key) {
            row.agent_count += delta;
        }
    }
}
