//! The JSON shapes of connections in answers (never a secret).

use connections_domain::{BindingSource, ConnectionId};
use connections_domain::{ConnectionStatus, OwnerService};
use connections_store::codec::binding_source_name;
use connections_store::RecordedEvent;
use serde_json::{json, Value};

/// A connection with its status, default flag and (the first
/// [`connections_domain::AGENTS_LISTED`] of its) agents. With `history`,
/// agents carry the time they were bound and the connection its creation time.
pub fn connection(state: &OwnerService, connection_id: ConnectionId, history: Option<&[RecordedEvent]>) -> Value {
    let Some(connection) = state.connections.get(&connection_id) else {
        return Value::Null;
    };
    // One pass over the history: the latest binding of each (agent, source)
    // to this connection. O(events + agents), not O(events × agents).
    let connection_json = json!(connection_id);
    let mut latest: std::collections::HashMap<(&str, &str), &RecordedEvent> = std::collections::HashMap::new();
    for event in history.unwrap_or_default() {
        if event.event_type == "agent_assigned" && event.data["connection_id"] == connection_json {
            if let (Some(agent), Some(source)) = (event.data["agent_id"].as_str(), event.data["source"].as_str()) {
                latest.insert((agent, source), event);
            }
        }
    }
    let since = |agent: &str, source: BindingSource| -> Option<String> {
        latest.get(&(agent, binding_source_name(source))).map(|e| e.recorded_at.to_rfc3339())
    };
    // The first agents in id order: a command is decided on a part of the
    // state that holds those (see `connections_domain::Focus`), and
    // `/usage` lists them all.
    let (listed, more) = state.agents_listed(connection_id);
    let agents: Vec<Value> = listed
        .into_iter()
        .map(|(agent, binding)| {
            let mut value = json!({ "agent_id": agent, "source": binding_source_name(binding.source) });
            if let Some(since) = since(agent.as_str(), binding.source) {
                value["since"] = json!(since);
            }
            value
        })
        .collect();
    let (status, affected, replaced_by) = match &connection.status {
        ConnectionStatus::Active => ("active", None, None),
        ConnectionStatus::Revoked { affected_agents, replaced_by } => ("revoked", Some(affected_agents), *replaced_by),
    };
    let mut value = json!({
        "connection_id": connection_id,
        "service": state.service,
        "name": connection.name,
        "credential_kind": connection.credential_kind.as_str(),
        "credential_version": connection.credential_version,
        "skill": connection.skill,
        "status": status,
        "is_default": state.default == Some(connection_id),
        "needs_attention": connection.needs_attention,
        "agents": agents,
    });
    if more {
        value["agents_truncated"] = json!(true);
    }
    if let Some(affected) = affected {
        value["affected_agents"] = json!(affected);
    }
    if let Some(replaced_by) = replaced_by {
        value["replaced_by"] = json!(replaced_by);
    }
    if let Some(replaces) = connection.replaces {
        value["replaces"] = json!(replaces);
    }
    if let Some(created) = history.and_then(|h| {
        h.iter().find(|e| e.event_type == "connection_created" && e.data["connection_id"] == json!(connection_id))
    }) {
        value["created_at"] = json!(created.recorded_at.to_rfc3339());
    }
    value
}
