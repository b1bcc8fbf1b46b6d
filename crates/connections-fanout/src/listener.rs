//! A dedicated Postgres connection that LISTENs for log activity and can
//! hold an advisory lock (leadership) for as long as it lives.

use std::str::FromStr;
use std::sync::Arc;

use connections_store::LogCursor;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel notified after commits that appended events (see [`crate::Announcer`]).
pub const EVENTS_CHANNEL: &str = "connections_events";
/// The channel projectors signal with their new cursor (`tx:position`).
pub const PROJECTED_CHANNEL: &str = "connections_projected";

/// What the listener tells the rest of the process.
#[derive(Clone)]
pub struct Signals {
    /// Woken (one permit kept) when events were appended.
    pub appended: Arc<Notify>,
    /// The newest projected cursor announced by any projector.
    pub projected: watch::Sender<Option<LogCursor>>,
    /// Whose read models each projected batch changed (`Changed::All` when
    /// the projector did not say, or too many to name).
    pub changed: broadcast::Sender<Changed>,
    /// The single-leader roles this instance holds.
    pub roles: crate::Roles,
    /// Urgent notices this instance's commands put on the notices stream
    /// (the relay does not send them again).
    pub stored_notices: crate::StoredNotices,
    /// Tells the relay, here and on other instances, of commits (see
    /// [`Signals::committed`]).
    pub announcer: crate::Announcer,
    /// How many commits this instance has announced: a benchmark notes
    /// when it changes, the moment of a commit.
    pub commits: watch::Sender<u64>,
    /// This instance's running transactions that never append events (the
    /// projector's batches): the relay does not wait for them.
    pub bystanders: connections_store::Bystanders,
}

/// The owners a projected batch touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// These owners.
    Owners(Arc<Vec<String>>),
    /// Possibly anyone.
    All,
}

impl Changed {
    /// Whether `owner`'s read models may have changed.
    pub fn concerns(&self, owner: &str) -> bool {
        match self {
            Changed::Owners(owners) => owners.binary_search_by(|o| o.as_str().cmp(owner)).is_ok(),
            Changed::All => true,
        }
    }
}

impl Signals {
    /// Fresh signals.
    pub fn new() -> Self {
        Self {
            appended: Arc::new(Notify::new()),
            projected: watch::channel(None).0,
            changed: broadcast::channel(1024).0,
            roles: crate::Roles::default(),
            stored_notices: crate::StoredNotices::default(),
            announcer: crate::Announcer::default(),
            commits: watch::channel(0).0,
            bystanders: connections_store::Bystanders::default(),
        }
    }

    /// After a commit on `database` that appended events: wakes this
    /// instance's relay at once and, unless that relay leads, every
    /// instance's listener through a `NOTIFY` that may cover several
    /// commits (see [`crate::Announcer`]).
    pub fn committed(&self, database: &connections_store::Database) {
        let relay_elsewhere = !self.roles.holds(crate::roles::RELAY);
        self.announcer.committed(database, &self.appended, relay_elsewhere);
        // Only a benchmark watches: without one, an atomic load and no lock.
        if self.commits.receiver_count() > 0 {
            self.commits.send_modify(|commits| *commits += 1);
        }
    }
}

/// The projector's notification: `tx:position` then the changed owners,
/// space-separated (ids cannot hold spaces), or `*` when there are too many
/// for a notification.
pub fn projected_payload<'a>(cursor: LogCursor, owners: impl IntoIterator<Item = &'a str>) -> String {
    let mut payload = format_cursor(cursor);
    let start = payload.len();
    for owner in owners {
        if payload.len() + owner.len() + 1 > 7_000 {
            payload.truncate(start);
            payload.push_str(" *");
            return payload;
        }
        payload.push(' ');
        payload.push_str(owner);
    }
    payload
}

/// Parses [`projected_payload`]: the cursor, and whose models changed.
pub fn parse_projected(payload: &str) -> Option<(LogCursor, Changed)> {
    let mut parts = payload.split(' ');
    let cursor = parse_cursor(parts.next()?)?;
    let rest: Vec<&str> = parts.collect();
    let changed = if rest.is_empty() || rest.contains(&"*") {
        Changed::All
    } else {
        let mut owners: Vec<String> = rest.into_iter().map(str::to_owned).collect();
        owners.sort_unstable();
        owners.dedup();
        Changed::Owners(Arc::new(owners))
    };
    Some((cursor, changed))
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

/// A LISTENing connection. Dropping it closes the connection, which also
/// releases any advisory lock it holds.
pub struct LogListener {
    client: tokio_postgres::Client,
    alive: watch::Receiver<bool>,
}

impl LogListener {
    /// Connects to `url` and listens on both channels.
    pub async fn connect(url: &str, signals: Signals) -> Result<Self, tokio_postgres::Error> {
        let config = tokio_postgres::Config::from_str(url)?;
        let (client, mut connection) = config.connect(NoTls).await?;
        let (alive_tx, alive) = watch::channel(true);
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) if n.channel() == EVENTS_CHANNEL => signals.appended.notify_one(),
                    Ok(AsyncMessage::Notification(n)) if n.channel() == PROJECTED_CHANNEL => {
                        if let Some((cursor, changed)) = parse_projected(n.payload()) {
                            let _ = signals.changed.send(changed);
                            signals.projected.send_if_modified(|current| {
                                let newer = current.is_none_or(|c| cursor > c);
                                if newer {
                                    *current = Some(cursor);
                                }
                                newer
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "log listener connection failed");
                        break;
                    }
                }
            }
            let _ = alive_tx.send(false);
        });
        client.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}; LISTEN {PROJECTED_CHANNEL}")).await?;
        Ok(Self { client, alive })
    }

    /// Waits until this listener holds the session-level advisory lock
    /// `key`, then records `role` as held in `roles` (until the guard is
    /// dropped), or returns `None` at shutdown. The lock is held until this
    /// listener is dropped or its connection breaks.
    ///
    /// The wait is a blocking `pg_advisory_lock` in slices of half a second
    /// (`lock_timeout`), not a poll: when the holder lets go (shutdown) or
    /// dies (its connection closes), a waiter takes over within
    /// milliseconds.
    pub async fn lead(
        &self,
        key: i64,
        role: &str,
        roles: &crate::Roles,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<crate::RoleGuard>, tokio_postgres::Error> {
        self.client.batch_execute("SET lock_timeout = '500ms'").await?;
        loop {
            if *shutdown.borrow() {
                return Ok(None);
            }
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
            tokio::select! {
                locked = self.client.execute("SELECT pg_advisory_lock($1)", &params) => match locked {
                    Ok(_) => break,
                    Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {}
                    Err(error) => return Err(error),
                },
                // The caller drops this listener, which closes the connection
                // and with it the pending wait.
                _ = shutdown.changed() => return Ok(None),
            }
        }
        self.client.batch_execute("RESET lock_timeout").await?;
        Ok(Some(roles.hold(role)))
    }

    /// Whether the connection (and so any lock it holds) is still up.
    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// Resolves when the connection breaks.
    pub async fn closed(&mut self) {
        let _ = self.alive.wait_for(|alive| !alive).await;
    }
}

/// Parses a `tx:position` cursor.
pub fn parse_cursor(raw: &str) -> Option<LogCursor> {
    let (transaction_id, position) = raw.split_once(':')?;
    Some(LogCursor { transaction_id: transaction_id.parse().ok()?, position: position.parse().ok()? })
}

/// Formats a cursor as `tx:position`.
pub fn format_cursor(cursor: LogCursor) -> String {
    format!("{}:{}", cursor.transaction_id, cursor.position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projected_payloads_name_the_owners_or_everyone() {
        let cursor = LogCursor { transaction_id: 7, position: 42 };
        let payload = projected_payload(cursor, ["bob", "alice"]);
        assert_eq!(payload, "7:42 bob alice");
        let (parsed, changed) = parse_projected(&payload).expect("parses");
        assert_eq!(parsed, cursor);
        assert!(changed.concerns("alice") && changed.concerns("bob") && !changed.concerns("carol"));
        // An older projector's payload (a cursor alone) wakes everyone.
        assert_eq!(parse_projected("7:42").expect("parses").1, Changed::All);
        let many: Vec<String> = (0..100).map(|n| format!("{n:0>100}")).collect();
        let payload = projected_payload(cursor, many.iter().map(String::as_str));
        assert!(payload.len() < 8_000, "fits a notification");
        assert_eq!(parse_projected(&payload).expect("parses").1, Changed::All);
        assert!(parse_projected("not a cursor").is_none());
    }
}
