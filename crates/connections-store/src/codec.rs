//! The stored form of domain events: stable type names, schema versions and
//! JSON data, documented one file per type in `schemas/events/`.
//!
//! The domain's enums never touch serde's representation of Rust types: the
//! mirrors below are the contract, and renaming a Rust variant cannot change
//! what is stored.

use connections_domain::{
    AgentId, BindingSource, ConnectionId, ConnectionName, CredentialKind, DefaultClearReason, Event, MasterKeyId,
    OwnerId, ProblemDetail, Scope, ServiceName, SkillName, UnbindReason, UpstreamOutcome,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StoreError;

/// Every stored event type name with each schema version written today.
///
/// `connection_created` and `connection_revoked` have a v2 that adds the
/// replacement link (`replaces`, `replaced_by`); it is written only when
/// the link exists, so consumers that know v1 read every other event as
/// before. A plain revoke is `connection_revoked` v3 (the same fields as
/// v1; its bindings end with it, where v1 followed an `agent_unassigned`
/// per agent).
pub const EVENT_TYPES: &[(&str, i32)] = &[
    ("connection_created", 1),
    ("connection_created", 2),
    ("connection_revoked", 2),
    ("agent_assigned", 1),
    ("agent_unassigned", 1),
    ("credential_rotated", 1),
    ("credential_rejected", 1),
    ("credential_rejected", 2),
    ("oauth_granted", 1),
    ("credential_refreshed", 1),
    ("default_set", 1),
    ("default_cleared", 1),
    ("connection_revoked", 3),
    ("upstream_revoked", 1),
    ("data_key_rewrapped", 1),
];

/// Versions no longer written but still read, from logs written before.
pub const WRITTEN_BEFORE: &[(&str, i32)] = &[("connection_revoked", 1)];

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionCreatedV1 {
    connection_id: ConnectionId,
    owner: OwnerId,
    service: ServiceName,
    name: ConnectionName,
    credential_kind: CredentialKind,
    agent_id: Option<AgentId>,
    skill: Option<SkillName>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentAssignedV1 {
    connection_id: ConnectionId,
    agent_id: AgentId,
    source: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentUnassignedV1 {
    connection_id: ConnectionId,
    agent_id: AgentId,
    reason: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRotatedV1 {
    connection_id: ConnectionId,
    credential_version: u32,
    credential_kind: CredentialKind,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRejectedV1 {
    connection_id: ConnectionId,
    agent_id: AgentId,
    credential_version: u32,
    status: Option<u16>,
    detail: Option<ProblemDetail>,
}

/// Version 2 of `credential_rejected` is version 1 without the reporting
/// agent: the server's refresher found the refresh token refused. Written
/// only then.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRejectedV2 {
    connection_id: ConnectionId,
    credential_version: u32,
    status: Option<u16>,
    detail: Option<ProblemDetail>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataKeyRewrappedV1 {
    connection_id: ConnectionId,
    from_key_id: MasterKeyId,
    to_key_id: MasterKeyId,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamRevokedV1 {
    connection_id: ConnectionId,
    outcome: String,
    attempts: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialRefreshedV1 {
    connection_id: ConnectionId,
    credential_version: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OauthGrantedV1 {
    connection_id: ConnectionId,
    scopes: Vec<Scope>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultSetV1 {
    connection_id: ConnectionId,
    previous: Option<ConnectionId>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultClearedV1 {
    connection_id: ConnectionId,
    reason: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionRevokedV1 {
    connection_id: ConnectionId,
    affected_agents: Vec<AgentId>,
}

/// Version 2 of `connection_created` and `connection_revoked` is version 1
/// with one more field, the replacement link: written only when the link
/// exists.
fn with_link(mut data: Value, field: &str, link: ConnectionId) -> Value {
    data[field] = serde_json::to_value(link).expect("an id serializes");
    data
}

/// The data of a v1 or v2 event without its link, and the link (v2 only;
/// required there).
fn without_link<'d>(
    event_type: &str,
    schema_version: i32,
    data: &'d Value,
    field: &str,
) -> Result<(std::borrow::Cow<'d, Value>, Option<ConnectionId>), StoreError> {
    if schema_version == 1 {
        return Ok((std::borrow::Cow::Borrowed(data), None));
    }
    let mut data = data.clone();
    let link = data
        .as_object_mut()
        .and_then(|object| object.remove(field))
        .ok_or_else(|| StoreError::Corrupt(format!("{event_type} v{schema_version}: {field} is missing")))?;
    let link = ConnectionId::deserialize(link).map_err(|e| StoreError::Corrupt(format!("{event_type}: {e}")))?;
    Ok((std::borrow::Cow::Owned(data), Some(link)))
}

/// The stored type name, schema version and data of a domain event.
pub fn encode(event: &Event) -> (&'static str, i32, Value) {
    let to_value = |v: Result<Value, serde_json::Error>| v.expect("event data always serializes");
    match event {
        Event::ConnectionCreated {
            connection_id,
            owner,
            service,
            name,
            credential_kind,
            agent_id,
            skill,
            replaces,
        } => {
            let v1 = to_value(serde_json::to_value(ConnectionCreatedV1 {
                connection_id: *connection_id,
                owner: owner.clone(),
                service: service.clone(),
                name: name.clone(),
                credential_kind: *credential_kind,
                agent_id: agent_id.clone(),
                skill: skill.clone(),
            }));
            match replaces {
                None => ("connection_created", 1, v1),
                Some(replaces) => ("connection_created", 2, with_link(v1, "replaces", *replaces)),
            }
        }
        Event::AgentAssigned { connection_id, agent_id, source } => (
            "agent_assigned",
            1,
            to_value(serde_json::to_value(AgentAssignedV1 {
                connection_id: *connection_id,
                agent_id: agent_id.clone(),
                source: binding_source_name(*source).into(),
            })),
        ),
        Event::AgentUnassigned { connection_id, agent_id, reason } => (
            "agent_unassigned",
            1,
            to_value(serde_json::to_value(AgentUnassignedV1 {
                connection_id: *connection_id,
                agent_id: agent_id.clone(),
                reason: unbind_reason_name(*reason).into(),
            })),
        ),
        Event::CredentialRotated { connection_id, credential_version, credential_kind } => (
            "credential_rotated",
            1,
            to_value(serde_json::to_value(CredentialRotatedV1 {
                connection_id: *connection_id,
                credential_version: *credential_version,
                credential_kind: *credential_kind,
            })),
        ),
        Event::CredentialRejected { connection_id, agent_id: Some(agent_id), credential_version, status, detail } => (
            "credential_rejected",
            1,
            to_value(serde_json::to_value(CredentialRejectedV1 {
                connection_id: *connection_id,
                agent_id: agent_id.clone(),
                credential_version: *credential_version,
                status: *status,
                detail: detail.clone(),
            })),
        ),
        Event::CredentialRejected { connection_id, agent_id: None, credential_version, status, detail } => (
            "credential_rejected",
            2,
            to_value(serde_json::to_value(CredentialRejectedV2 {
                connection_id: *connection_id,
                credential_version: *credential_version,
                status: *status,
                detail: detail.clone(),
            })),
        ),
        Event::DataKeyRewrapped { connection_id, from_key_id, to_key_id } => (
            "data_key_rewrapped",
            1,
            to_value(serde_json::to_value(DataKeyRewrappedV1 {
                connection_id: *connection_id,
                from_key_id: from_key_id.clone(),
                to_key_id: to_key_id.clone(),
            })),
        ),
        Event::UpstreamRevoked { connection_id, outcome, attempts } => (
            "upstream_revoked",
            1,
            to_value(serde_json::to_value(UpstreamRevokedV1 {
                connection_id: *connection_id,
                outcome: upstream_outcome_name(*outcome).to_owned(),
                attempts: *attempts,
            })),
        ),
        Event::CredentialRefreshed { connection_id, credential_version } => (
            "credential_refreshed",
            1,
            to_value(serde_json::to_value(CredentialRefreshedV1 {
                connection_id: *connection_id,
                credential_version: *credential_version,
            })),
        ),
        Event::OauthGranted { connection_id, scopes } => (
            "oauth_granted",
            1,
            to_value(serde_json::to_value(OauthGrantedV1 { connection_id: *connection_id, scopes: scopes.clone() })),
        ),
        Event::DefaultSet { connection_id, previous } => (
            "default_set",
            1,
            to_value(serde_json::to_value(DefaultSetV1 { connection_id: *connection_id, previous: *previous })),
        ),
        Event::DefaultCleared { connection_id, reason } => (
            "default_cleared",
            1,
            to_value(serde_json::to_value(DefaultClearedV1 {
                connection_id: *connection_id,
                reason: default_clear_reason_name(*reason).into(),
            })),
        ),
        Event::ConnectionRevoked { connection_id, affected_agents, replaced_by } => {
            let v1 = to_value(serde_json::to_value(ConnectionRevokedV1 {
                connection_id: *connection_id,
                affected_agents: affected_agents.clone(),
            }));
            // v3: a revoke whose bindings end with it (v1, written before,
            // followed an `agent_unassigned` per agent). Same fields as v1.
            match replaced_by {
                None => ("connection_revoked", 3, v1),
                Some(replaced_by) => ("connection_revoked", 2, with_link(v1, "replaced_by", *replaced_by)),
            }
        }
    }
}

/// The domain event stored as (type, schema version, data). Older schema
/// versions are upcast here when they exist.
pub fn decode(event_type: &str, schema_version: i32, data: &Value) -> Result<Event, StoreError> {
    fn parse<T: for<'de> Deserialize<'de>>(event_type: &str, data: &Value) -> Result<T, StoreError> {
        T::deserialize(data).map_err(|e| StoreError::Corrupt(format!("{event_type}: {e}")))
    }
    let unknown = || StoreError::Corrupt(format!("unknown event {event_type} v{schema_version}"));
    let event = match (event_type, schema_version) {
        ("connection_created", 1 | 2) => {
            let (data, replaces) = without_link(event_type, schema_version, data, "replaces")?;
            let d: ConnectionCreatedV1 = parse(event_type, &data)?;
            Event::ConnectionCreated {
                connection_id: d.connection_id,
                owner: d.owner,
                service: d.service,
                name: d.name,
                credential_kind: d.credential_kind,
                agent_id: d.agent_id,
                skill: d.skill,
                replaces,
            }
        }
        ("agent_assigned", 1) => {
            let d: AgentAssignedV1 = parse(event_type, data)?;
            let source = binding_source_from_name(&d.source).ok_or_else(unknown)?;
            Event::AgentAssigned { connection_id: d.connection_id, agent_id: d.agent_id, source }
        }
        ("agent_unassigned", 1) => {
            let d: AgentUnassignedV1 = parse(event_type, data)?;
            let reason = match d.reason.as_str() {
                "unassigned" => UnbindReason::Unassigned,
                "replaced" => UnbindReason::Replaced,
                "revoked" => UnbindReason::Revoked,
                _ => return Err(unknown()),
            };
            Event::AgentUnassigned { connection_id: d.connection_id, agent_id: d.agent_id, reason }
        }
        ("credential_rotated", 1) => {
            let d: CredentialRotatedV1 = parse(event_type, data)?;
            Event::CredentialRotated {
                connection_id: d.connection_id,
                credential_version: d.credential_version,
                credential_kind: d.credential_kind,
            }
        }
        ("credential_rejected", 1) => {
            let d: CredentialRejectedV1 = parse(event_type, data)?;
            Event::CredentialRejected {
                connection_id: d.connection_id,
                agent_id: Some(d.agent_id),
                credential_version: d.credential_version,
                status: d.status,
                detail: d.detail,
            }
        }
        ("credential_rejected", 2) => {
            let d: CredentialRejectedV2 = parse(event_type, data)?;
            Event::CredentialRejected {
                connection_id: d.connection_id,
                agent_id: None,
                credential_version: d.credential_version,
                status: d.status,
                detail: d.detail,
            }
        }
        ("data_key_rewrapped", 1) => {
            let d: DataKeyRewrappedV1 = parse(event_type, data)?;
            Event::DataKeyRewrapped {
                connection_id: d.connection_id,
                from_key_id: d.from_key_id,
                to_key_id: d.to_key_id,
            }
        }
        ("upstream_revoked", 1) => {
            let d: UpstreamRevokedV1 = parse(event_type, data)?;
            let outcome = match d.outcome.as_str() {
                "revoked" => UpstreamOutcome::Revoked,
                "gave_up" => UpstreamOutcome::GaveUp,
                _ => return Err(unknown()),
            };
            Event::UpstreamRevoked { connection_id: d.connection_id, outcome, attempts: d.attempts }
        }
        ("credential_refreshed", 1) => {
            let d: CredentialRefreshedV1 = parse(event_type, data)?;
            Event::CredentialRefreshed { connection_id: d.connection_id, credential_version: d.credential_version }
        }
        ("oauth_granted", 1) => {
            let d: OauthGrantedV1 = parse(event_type, data)?;
            Event::OauthGranted { connection_id: d.connection_id, scopes: d.scopes }
        }
        ("default_set", 1) => {
            let d: DefaultSetV1 = parse(event_type, data)?;
            Event::DefaultSet { connection_id: d.connection_id, previous: d.previous }
        }
        ("default_cleared", 1) => {
            let d: DefaultClearedV1 = parse(event_type, data)?;
            let reason = match d.reason.as_str() {
                "cleared" => DefaultClearReason::Cleared,
                "revoked" => DefaultClearReason::Revoked,
                _ => return Err(unknown()),
            };
            Event::DefaultCleared { connection_id: d.connection_id, reason }
        }
        ("connection_revoked", 1..=3) => {
            let link_version = if schema_version == 3 { 1 } else { schema_version };
            let (data, replaced_by) = without_link(event_type, link_version, data, "replaced_by")?;
            let d: ConnectionRevokedV1 = parse(event_type, &data)?;
            Event::ConnectionRevoked { connection_id: d.connection_id, affected_agents: d.affected_agents, replaced_by }
        }
        _ => return Err(unknown()),
    };
    Ok(event)
}

/// The stored name of a binding source.
pub fn binding_source_name(source: BindingSource) -> &'static str {
    match source {
        BindingSource::Created => "created",
        BindingSource::Assigned => "assigned",
        BindingSource::Default => "default",
    }
}

/// Events in their stored form, each with a new id, ready to append.
pub fn new_events(events: &[Event]) -> Vec<crate::NewEvent> {
    events
        .iter()
        .map(|event| {
            let (event_type, schema_version, data) = encode(event);
            crate::NewEvent { event_id: uuid::Uuid::now_v7(), event_type, schema_version, data }
        })
        .collect()
}

/// A binding source from its stored name.
pub fn binding_source_from_name(name: &str) -> Option<BindingSource> {
    match name {
        "created" => Some(BindingSource::Created),
        "assigned" => Some(BindingSource::Assigned),
        "default" => Some(BindingSource::Default),
        _ => None,
    }
}

fn unbind_reason_name(reason: UnbindReason) -> &'static str {
    match reason {
        UnbindReason::Unassigned => "unassigned",
        UnbindReason::Replaced => "replaced",
        UnbindReason::Revoked => "revoked",
    }
}

/// The stored name of an upstream revocation's outcome.
pub fn upstream_outcome_name(outcome: UpstreamOutcome) -> &'static str {
    match outcome {
        UpstreamOutcome::Revoked => "revoked",
        UpstreamOutcome::GaveUp => "gave_up",
    }
}

fn default_clear_reason_name(reason: DefaultClearReason) -> &'static str {
    match reason {
        DefaultClearReason::Cleared => "cleared",
        DefaultClearReason::Revoked => "revoked",
    }
}
