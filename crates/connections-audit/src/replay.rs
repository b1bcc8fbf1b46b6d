//! Replaying the log: the state as it was at an instant, and who could use
//! a connection when. Both fold events, never read current tables.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use connections_domain::{AgentId, ConnectionStatus, Event, OwnerService};
use connections_store::{codec, LogCursor};
use serde::Serialize;
use uuid::Uuid;

use crate::event::AuditEvent;
use crate::record::{AccessRecord, At};
use crate::time::Window;
use crate::{AuditError, Sink};

/// The owner of an owner-service stream, from its stored id.
pub fn stream_owner(stream_id: &str) -> Option<&str> {
    connections_store::StreamId::split(stream_id).map(|(owner, _)| owner)
}

/// The connection an event is about, read from its stored data.
pub fn event_connection(event: &AuditEvent<'_>) -> Option<Uuid> {
    event.data.string_field("connection_id")?.parse().ok()
}

fn decode(at: At, event: &AuditEvent<'_>) -> Result<Event, AuditError> {
    let data = event.data.value().map_err(|e| AuditError::Malformed { at, message: e.to_string() })?;
    Ok(codec::decode(event.event_type, event.schema_version, &data)?)
}

/// Folds one owner's streams up to an instant. Each stream is replayed as its
/// longest prefix recorded at or before the instant (within a stream,
/// recording times never go backwards; a prefix keeps the state one the
/// owner could have observed even if they did).
pub struct AsOf {
    owner: String,
    at: DateTime<Utc>,
    streams: BTreeMap<String, (OwnerService, bool)>,
}

impl AsOf {
    /// The state of `owner`'s connections at `at`.
    pub fn new(owner: impl Into<String>, at: DateTime<Utc>) -> Self {
        Self { owner: owner.into(), at, streams: BTreeMap::new() }
    }

    /// The folded state, per service.
    pub fn state(&self) -> AsOfState {
        let services = self
            .streams
            .values()
            .filter_map(|(state, _)| {
                let service = state.service.as_ref()?.to_string();
                let connections = state
                    .connections
                    .values()
                    .map(|c| ConnectionAsOf {
                        connection_id: c.connection_id.as_uuid(),
                        name: c.name.to_string(),
                        status: match c.status {
                            ConnectionStatus::Active => "active",
                            ConnectionStatus::Revoked { .. } => "revoked",
                        },
                        credential_version: c.credential_version,
                        agents: state.agents_of(c.connection_id).iter().map(AgentId::to_string).collect(),
                    })
                    .collect();
                Some(ServiceAsOf { service, default: state.default.map(|d| d.as_uuid()), connections })
            })
            .collect();
        AsOfState { owner: self.owner.clone(), at: self.at, services }
    }
}

impl Sink for AsOf {
    fn event(&mut self, at: At, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        if stream_owner(event.stream_id) != Some(self.owner.as_str()) {
            return Ok(());
        }
        if !self.streams.contains_key(event.stream_id) {
            self.streams.insert(event.stream_id.to_owned(), Default::default());
        }
        let (state, stopped) = self.streams.get_mut(event.stream_id).expect("inserted above");
        *stopped |= event.recorded_at > self.at;
        if !*stopped {
            state.apply(&decode(at, event)?);
        }
        Ok(())
    }

    fn access(&mut self, _at: At, _access: &AccessRecord) -> Result<(), AuditError> {
        Ok(())
    }
}

/// An owner's connections at an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsOfState {
    /// The owner.
    pub owner: String,
    /// The instant.
    pub at: DateTime<Utc>,
    /// Per service, by name.
    pub services: Vec<ServiceAsOf>,
}

/// One service of an owner at an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceAsOf {
    /// The service.
    pub service: String,
    /// Its default connection then.
    pub default: Option<Uuid>,
    /// Every connection created by then.
    pub connections: Vec<ConnectionAsOf>,
}

/// One connection at an instant (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionAsOf {
    /// Its id.
    pub connection_id: Uuid,
    /// Its name.
    pub name: String,
    /// `active` or `revoked`.
    pub status: &'static str,
    /// Its credential version then.
    pub credential_version: u32,
    /// The agents bound to it then.
    pub agents: Vec<String>,
}

/// Who could use one connection during a window, and who did.
pub struct WhoCouldUse {
    connection: Uuid,
    window: Window,
    open: HashMap<String, (DateTime<Utc>, String)>,
    intervals: Vec<BindingInterval>,
    handouts: Vec<Handout>,
    created_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    replaces: Option<Uuid>,
    replaced_by: Option<Uuid>,
}

impl WhoCouldUse {
    /// Ends `agent_id`'s open binding, if it has one, at `until`.
    fn end_binding(&mut self, agent_id: &str, until: DateTime<Utc>, ended_by: &str) {
        if let Some((from, source)) = self.open.remove(agent_id) {
            self.intervals.push(BindingInterval {
                agent_id: agent_id.to_owned(),
                from,
                until: Some(until),
                source,
                ended_by: Some(ended_by.to_owned()),
            });
        }
    }

    /// For `connection` within `window`.
    pub fn new(connection: Uuid, window: Window) -> Self {
        Self {
            connection,
            window,
            open: HashMap::new(),
            intervals: Vec::new(),
            handouts: Vec::new(),
            created_at: None,
            revoked_at: None,
            replaces: None,
            replaced_by: None,
        }
    }

    /// The answer: bindings overlapping the window (clipped to it), and the
    /// hand-outs inside it, each marked with whether a binding covered it.
    pub fn usage(mut self) -> Usage {
        for (agent_id, (from, source)) in self.open.drain() {
            self.intervals.push(BindingInterval { agent_id, from, until: None, source, ended_by: None });
        }
        let window = self.window;
        let mut intervals: Vec<BindingInterval> = self
            .intervals
            .into_iter()
            .filter(|i| {
                window.to.is_none_or(|to| i.from <= to)
                    && window.from.is_none_or(|from| i.until.is_none_or(|u| u >= from))
            })
            .collect();
        intervals.sort_by(|a, b| (a.agent_id.as_str(), a.from).cmp(&(b.agent_id.as_str(), b.from)));
        let mut handouts = self.handouts;
        for handout in &mut handouts {
            handout.while_bound = intervals.iter().any(|i| {
                i.agent_id == handout.agent_id && i.from <= handout.at && i.until.is_none_or(|u| handout.at <= u)
            });
        }
        Usage {
            connection_id: self.connection,
            window_from: window.from,
            window_to: window.to,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            replaces: self.replaces,
            replaced_by: self.replaced_by,
            bindings: intervals,
            handouts,
        }
    }
}

impl Sink for WhoCouldUse {
    fn event(&mut self, at: At, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        if event_connection(event) != Some(self.connection) {
            return Ok(());
        }
        match decode(at, event)? {
            Event::ConnectionCreated { replaces, .. } => {
                self.created_at = Some(event.recorded_at);
                self.replaces = replaces.map(|c| c.as_uuid());
            }
            Event::ConnectionRevoked { replaced_by, affected_agents, .. } => {
                self.revoked_at = Some(event.recorded_at);
                self.replaced_by = replaced_by.map(|c| c.as_uuid());
                // Since `connection_revoked` v3 a revoke ends its bindings
                // itself (before, each ended with an `agent_unassigned`).
                for agent_id in &affected_agents {
                    self.end_binding(agent_id.as_str(), event.recorded_at, "revoked");
                }
            }
            Event::AgentAssigned { agent_id, source, .. } => {
                self.open
                    .entry(agent_id.to_string())
                    .or_insert((event.recorded_at, codec::binding_source_name(source).to_string()));
            }
            Event::AgentUnassigned { agent_id, reason, .. } => {
                self.end_binding(agent_id.as_str(), event.recorded_at, &format!("{reason:?}").to_lowercase());
            }
            _ => {}
        }
        Ok(())
    }

    fn access(&mut self, _at: At, access: &AccessRecord) -> Result<(), AuditError> {
        if access.connection_id == self.connection && self.window.contains(access.accessed_at) {
            self.handouts.push(Handout {
                at: access.accessed_at,
                agent_id: access.agent_id.clone(),
                credential_version: access.credential_version,
                request_id: access.request_id,
                access_id: access.access_id,
                while_bound: false,
            });
        }
        Ok(())
    }
}

/// The answer of `who-could-use`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The connection.
    pub connection_id: Uuid,
    /// The window's start, if bounded.
    pub window_from: Option<DateTime<Utc>>,
    /// The window's end, if bounded.
    pub window_to: Option<DateTime<Utc>>,
    /// When it was created (if the history holds it).
    pub created_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The connection it replaced, if a replacement created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Uuid>,
    /// The connection that replaced it, if a replacement revoked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<Uuid>,
    /// Each agent's binding intervals that overlap the window.
    pub bindings: Vec<BindingInterval>,
    /// The hand-outs inside the window, in order.
    pub handouts: Vec<Handout>,
}

/// An interval during which an agent was bound to the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingInterval {
    /// The agent.
    pub agent_id: String,
    /// Bound since.
    pub from: DateTime<Utc>,
    /// Bound until; `None` if still bound at the end of the history.
    pub until: Option<DateTime<Utc>>,
    /// How it was bound: created, assigned, default.
    pub source: String,
    /// How it ended: unassigned, replaced, revoked.
    pub ended_by: Option<String>,
}

/// One hand-out of the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handout {
    /// When.
    pub at: DateTime<Utc>,
    /// To which agent.
    pub agent_id: String,
    /// Which credential version.
    pub credential_version: i32,
    /// The resolve request.
    pub request_id: Uuid,
    /// The access record's id.
    pub access_id: i64,
    /// Whether one of the agent's binding intervals covers it.
    pub while_bound: bool,
}

/// Hands every event of an owner, or about a connection, to a callback in
/// order (the `history` command).
pub struct History<F: FnMut(&AuditEvent<'_>)> {
    owner: Option<String>,
    connection: Option<Uuid>,
    each: F,
    /// Only events after this cursor.
    after: Option<LogCursor>,
    /// At most this many events.
    limit: Option<u64>,
    /// How many events matched (and were handed to `each`).
    pub count: u64,
    /// When the limit cut the history short: the cursor to continue after.
    pub next: Option<LogCursor>,
    last: Option<LogCursor>,
}

impl<F: FnMut(&AuditEvent<'_>)> History<F> {
    /// Events of `owner`'s streams, or about `connection`.
    pub fn new(owner: Option<String>, connection: Option<Uuid>, each: F) -> Self {
        Self { owner, connection, each, after: None, limit: None, count: 0, next: None, last: None }
    }

    /// One page: at most `limit` events after `after`.
    pub fn page(mut self, after: Option<LogCursor>, limit: Option<u64>) -> Self {
        self.after = after;
        self.limit = limit;
        self
    }
}

impl<F: FnMut(&AuditEvent<'_>)> Sink for History<F> {
    fn event(&mut self, _at: At, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        let matches = self.owner.as_deref().is_none_or(|owner| stream_owner(event.stream_id) == Some(owner))
            && self.connection.is_none_or(|c| event_connection(event) == Some(c))
            && self.after.is_none_or(|after| event.cursor() > after);
        if !matches || self.next.is_some() {
            return Ok(());
        }
        if self.limit.is_some_and(|limit| self.count >= limit) {
            // One more exists: the page ends at the last event handed out.
            self.next = self.last;
            return Ok(());
        }
        self.count += 1;
        self.last = Some(event.cursor());
        (self.each)(event);
        Ok(())
    }

    fn access(&mut self, _at: At, _access: &AccessRecord) -> Result<(), AuditError> {
        Ok(())
    }
}
