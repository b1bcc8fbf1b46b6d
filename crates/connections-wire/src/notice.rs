//! Notices for agent runtimes (`schemas/nats/notice.v1.json`): what a
//! runtime holding a credential must react to, derived from committed events.
//! They carry ids, versions and the log cursor, never secrets.

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, EnvelopeCursor};
use crate::names::Names;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The connection was revoked: drop it, never use it again.
    Revoked,
    /// The connection's credential was rotated: drop it, resolve again.
    Rotated,
    /// The agent's binding for a service changed: resolve again.
    BindingChanged,
    /// A runtime reported that the provider rejected the connection's
    /// current credential: stop retrying it; resolving it still works until
    /// the owner rotates, replaces or revokes it.
    Rejected,
}

/// One notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Always 1 for this layout.
    pub notice_version: u32,
    /// What happened.
    pub kind: NoticeKind,
    /// The event it comes from (also the `Nats-Msg-Id`).
    pub event_id: uuid::Uuid,
    /// Where that event is in the log.
    pub cursor: EnvelopeCursor,
    /// The owner.
    pub owner: String,
    /// The service.
    pub service: String,
    /// The connection concerned.
    pub connection_id: String,
    /// For rotations: the new credential version; for rejections: the
    /// version rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_version: Option<u64>,
    /// For binding changes: the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// For binding changes: true when the agent was bound to the connection,
    /// false when its binding to it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<bool>,
}

impl Notice {
    /// The notice an event calls for, with its subject; `None` for events
    /// runtimes need not hear about.
    pub fn for_event(envelope: &Envelope, names: &Names) -> Option<(String, Notice)> {
        let connection_id = envelope.data.get("connection_id")?.as_str()?.to_owned();
        let agent_id = envelope.data.get("agent_id").and_then(|a| a.as_str()).map(str::to_owned);
        let (kind, subject) = match envelope.event_type.as_str() {
            "connection_revoked" => (NoticeKind::Revoked, names.connection_notices(&envelope.owner, &connection_id)),
            "credential_rotated" | "credential_refreshed" => {
                (NoticeKind::Rotated, names.connection_notices(&envelope.owner, &connection_id))
            }
            "credential_rejected" => (NoticeKind::Rejected, names.connection_notices(&envelope.owner, &connection_id)),
            "agent_assigned" | "agent_unassigned" => {
                (NoticeKind::BindingChanged, names.agent_notices(&envelope.owner, agent_id.as_deref()?))
            }
            _ => return None,
        };
        let notice = Notice {
            notice_version: 1,
            kind,
            event_id: envelope.event_id,
            cursor: envelope.cursor,
            owner: envelope.owner.clone(),
            service: envelope.service.clone(),
            connection_id,
            credential_version: envelope.data.get("credential_version").and_then(|v| v.as_u64()),
            bound: (kind == NoticeKind::BindingChanged).then(|| envelope.event_type == "agent_assigned"),
            agent_id: if kind == NoticeKind::BindingChanged { agent_id } else { None },
        };
        Some((subject, notice))
    }
}
