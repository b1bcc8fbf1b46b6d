//! The dashboard read API: cards, the connection list, usage overviews, the
//! live change stream, and projection status. Reads come from the read models
//! under row-level security; `min_position` gives read-your-writes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use connections_domain::{ConnectionId, ServiceName};
use connections_fanout::{parse_cursor, Changed};
use connections_projections::queries::{self, PositionStatus, StatusFilter};
use connections_store::{EventLog, StoreError};
use serde_json::json;

use crate::auth::{AuthenticatedUser, UserSession};
use crate::body::path_param;
use crate::problem::ApiError;
use crate::state::{AppState, StreamPermit};

/// How long a read waits for `min_position` before answering 503.
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(2);

/// Query parameters, parsed strictly: unknown names are refused.
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub(crate) fn parse(
        query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Self, ApiError> {
        let Query(map) = query.map_err(|_| ApiError::invalid("query", "is malformed"))?;
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            let name: String = unknown.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect();
            return Err(ApiError::invalid(name, "is not a known query parameter"));
        }
        Ok(Self(map))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `limit`: an integer from 1 to `max`, `default` when absent.
    pub(crate) fn limit(&self, default: u32, max: u32) -> Result<i64, ApiError> {
        self.bounded("limit", default, 1, max).map(i64::from)
    }

    /// An integer parameter from `min` to `max`, `default` when absent.
    pub(crate) fn bounded(&self, name: &str, default: u32, min: u32, max: u32) -> Result<u32, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| ApiError::invalid(name, format!("must be an integer from {min} to {max}"))),
        }
    }

    /// `min_position`: a non-negative integer.
    pub(crate) fn min_position(&self) -> Result<Option<i64>, ApiError> {
        self.get("min_position")
            .map(|raw| {
                raw.parse::<i64>()
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| ApiError::invalid("min_position", "must be a non-negative integer"))
            })
            .transpose()
    }
}

/// Waits (bounded) until the dashboard projection has applied `position`.
/// One look at the database; then the wait follows the projector's
/// announcements (no polling), and a position no answer can have named is
/// refused at once.
pub async fn wait_for_position(app: &AppState, position: Option<i64>) -> Result<(), ApiError> {
    let Some(position) = position.filter(|p| *p > 0) else { return Ok(()) };
    let mut projected = app.signals.projected.subscribe();
    let target = match queries::position_status(&app.reads, position).await? {
        PositionStatus::Applied => return Ok(()),
        PositionStatus::Pending { target } => target,
        PositionStatus::BeyondHead => {
            return Err(ApiError::invalid("min_position", "is beyond the end of the log: no answer carried it"))
        }
        PositionStatus::NoSuchEvent => {
            return Err(ApiError::invalid("min_position", "is not the position of any event: no answer carried it"))
        }
    };
    let deadline = tokio::time::Instant::now() + MIN_POSITION_WAIT;
    loop {
        if projected.borrow_and_update().is_some_and(|cursor| cursor >= target) {
            return Ok(());
        }
        tokio::select! {
            changed = projected.changed() => {
                if changed.is_err() {
                    return Err(ApiError::NotYetProjected(position));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Err(ApiError::NotYetProjected(position)),
        }
    }
}

/// Parses the `min_position` parameter of an otherwise parameterless read and waits for it.
pub async fn min_position_only(
    app: &AppState,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<(), ApiError> {
    let params = Params::parse(query, &["min_position"])?;
    wait_for_position(app, params.min_position()?).await
}

/// `GET /v1/services`: the cards.
pub async fn services(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(owner): AuthenticatedUser,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    min_position_only(&app, query).await?;
    let cards = queries::services(&app.reads, owner.as_str()).await?;
    Ok(Json(json!({ "services": cards })).into_response())
}

/// `GET /v1/connections?service=S&status=active|revoked|all&limit=N&cursor=C&min_position=P`.
pub async fn list(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(owner): AuthenticatedUser,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["service", "status", "limit", "cursor", "min_position"])?;
    let service = params
        .get("service")
        .map(|raw| ServiceName::parse(raw).map_err(|e| ApiError::invalid("service", e)))
        .transpose()?;
    let status = match params.get("status") {
        None | Some("active") => StatusFilter::Active,
        Some("revoked") => StatusFilter::Revoked,
        Some("all") => StatusFilter::All,
        Some(_) => return Err(ApiError::invalid("status", "must be one of active, revoked, all")),
    };
    let limit = params.limit(50, 200)?;
    let after = params
        .get("cursor")
        .map(|raw| {
            ConnectionId::parse(raw).map_err(|_| ApiError::invalid("cursor", "is not a cursor from a previous page"))
        })
        .transpose()?;
    wait_for_position(&app, params.min_position()?).await?;
    let page = queries::connections(
        &app.reads,
        owner.as_str(),
        service.as_ref().map(ServiceName::as_str),
        status,
        after.map(|id| id.as_uuid()),
        limit + 1,
    )
    .await?;
    let more = page.len() as i64 > limit;
    let page: Vec<_> = page.into_iter().take(limit as usize).collect();
    let next_cursor = if more { page.last().map(|c| c.connection_id.to_string()) } else { None };
    Ok(Json(json!({ "connections": page, "next_cursor": next_cursor })).into_response())
}

/// `GET /v1/connections/{id}/agents`: the usage overview.
pub async fn agents(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(owner): AuthenticatedUser,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = id.map_err(|_| ApiError::invalid("id", "is malformed"))?;
    let connection_id = path_param("id", &raw, ConnectionId::parse)?;
    min_position_only(&app, query).await?;
    let (connection, agents) = queries::connection_usage(&app.reads, owner.as_str(), connection_id.as_uuid())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(json!({ "connection": connection, "agents": agents })).into_response())
}

/// `GET /v1/status`: the log head and the projection's lag.
pub async fn status(
    State(app): State<Arc<AppState>>,
    AuthenticatedUser(_): AuthenticatedUser,
) -> Result<Response, ApiError> {
    let client = app.reads.pool().get().await.map_err(StoreError::from)?;
    let head = EventLog::head_position(&client).await?;
    let lag = queries::lag(&app.reads).await?;
    Ok(Json(json!({ "log_head_position": head, "projections": { "dashboard": lag } })).into_response())
}

/// `GET /v1/stream`: Server-Sent Events of the caller's own read-model
/// changes, resumable with `Last-Event-ID` (or `?after=`). At most
/// `CONNECTIONS_STREAMS_PER_USER` open at once per user (429 beyond); a
/// stream ends when its token expires. A stream reads the database only when
/// the projector announces a change of its owner's read models (and every
/// 30 s in case an announcement was missed), never on a timer per change.
pub async fn stream(
    State(app): State<Arc<AppState>>,
    session: UserSession,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["after"])?;
    let resume = headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(parse_cursor)
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "is not an event id from this stream"))
        })
        .transpose()?;
    let after = params
        .get("after")
        .map(|raw| parse_cursor(raw).ok_or_else(|| ApiError::invalid("after", "is not an event id from this stream")))
        .transpose()?;
    let start = resume.or(after).unwrap_or_default();
    let owner = session.owner;
    let permit = app.settings.streams.open(owner.as_str())?;
    // Check the read side works before committing to a 200 stream.
    queries::changes_after(&app.reads, owner.as_str(), start, 1).await?;
    let ends = tokio::time::Instant::now()
        + Duration::from_secs(session.expires_at.saturating_sub(chrono::Utc::now().timestamp()).max(0) as u64);
    let state = StreamState {
        app: app.clone(),
        owner,
        cursor: start,
        changed: app.signals.changed.subscribe(),
        queue: std::collections::VecDeque::new(),
        dirty: true,
        ends,
        _permit: permit,
    };
    let events = futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok::<_, Infallible>(event), state))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// One open change stream.
struct StreamState {
    app: Arc<AppState>,
    owner: connections_domain::OwnerId,
    cursor: connections_store::LogCursor,
    changed: tokio::sync::broadcast::Receiver<Changed>,
    queue: std::collections::VecDeque<queries::Change>,
    /// Whether the owner's read models may have changed since the last read.
    dirty: bool,
    /// When the token expires: the stream ends.
    ends: tokio::time::Instant,
    _permit: StreamPermit,
}

impl StreamState {
    /// The next event, or `None` when the token has expired or the
    /// instance is shutting down (the client reconnects, to another
    /// instance, with `Last-Event-ID`).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if tokio::time::Instant::now() >= self.ends || self.app.lifecycle.is_stopping() {
                return None;
            }
            if let Some(change) = self.queue.pop_front() {
                return Some(
                    Event::default()
                        .id(change.id.clone())
                        .event(change.event_type.clone())
                        .json_data(&change)
                        .unwrap_or_else(|_| Event::default().comment("unserializable change")),
                );
            }
            if self.dirty {
                match queries::changes_after(&self.app.reads, self.owner.as_str(), self.cursor, 100).await {
                    Ok(changes) if !changes.is_empty() => {
                        if let Some(last) = changes.last().and_then(|c| parse_cursor(&c.id)) {
                            self.cursor = last;
                        }
                        self.queue.extend(changes);
                        continue; // more may follow a full page
                    }
                    Ok(_) => self.dirty = false,
                    Err(error) => {
                        tracing::warn!(%error, "change stream read failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                changed = self.changed.recv() => match changed {
                    Ok(changed) => self.dirty = changed.concerns(self.owner.as_str()),
                    // Missed announcements: whoever they were for, look.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.dirty = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(Duration::from_secs(30)) => self.dirty = true,
                _ = tokio::time::sleep_until(self.ends) => return None,
                _ = self.app.lifecycle.stopped() => return None,
            }
        }
    }
}
