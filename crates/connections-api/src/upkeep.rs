//! Background token upkeep: one instance at a time (the holder of a
//! session-level advisory lock, like the relay) refreshes OAuth connections
//! when the schedule says (before their access tokens expire, and at least
//! daily) and revokes revoked connections' tokens at their providers.
//!
//! Transient failures (network, 5xx, 429 with `Retry-After`) postpone the
//! connection with a doubling backoff and change nothing else; a refused
//! refresh token marks the connection `credential_rejected` and takes it off
//! the schedule until the owner reconnects.

use std::time::Duration;

use chrono::Utc;
use connections_domain::{OwnerId, ServiceName};
use connections_fanout::{LogListener, Signals};
use connections_store::{ConnectionLocation, RefreshDue, RefreshSchedule, StoreError, UpstreamRevocations};
use futures::StreamExt;
use tokio::sync::watch;

use crate::refresh::{self, Outcome};
use crate::state::AppState;
use crate::upstream;

/// How often the leader looks for work when nothing is due sooner (a
/// revoke queued by another instance is picked up within this).
const POLL: Duration = Duration::from_secs(1);

/// How many due refreshes one round takes.
const BATCH: i64 = 512;

/// Runs the upkeep until `stopping`: waits for leadership (advisory lock
/// `lock_key` on a connection of its own to `database_url`), then works.
/// Losing the connection loses leadership; it then waits again.
pub async fn run(app: AppState, database_url: String, lock_key: i64, mut stopping: watch::Receiver<bool>) {
    loop {
        if let Err(error) = lead(&app, &database_url, lock_key, &mut stopping).await {
            tracing::warn!(%error, "token upkeep interrupted; trying again");
        }
        if *stopping.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stopping.changed() => return,
        }
    }
}

async fn lead(
    app: &AppState,
    database_url: &str,
    lock_key: i64,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    // A listener of its own (with signals nobody waits on), so that its
    // notifications do not wake this instance's relay.
    let mut listener = LogListener::connect(database_url, Signals::new()).await?;
    let Some(_role) = listener.lead(lock_key, connections_fanout::roles::UPKEEP, &app.signals.roles, stopping).await?
    else {
        return Ok(());
    };
    loop {
        let worked = round(app).await?;
        // Still leading? (The lock lives as long as the listener's connection.)
        if !listener.is_alive() {
            tracing::warn!("token upkeep: the lock connection closed; leadership lost");
            return Ok(());
        }
        let wait = if worked { Duration::ZERO } else { next_wait(app).await? };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = listener.closed() => {}
            _ = stopping.changed() => return Ok(()),
        }
    }
}

/// How long until something may be due (at most [`POLL`]).
async fn next_wait(app: &AppState) -> Result<Duration, StoreError> {
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    let (refresh, revoke) =
        futures::try_join!(RefreshSchedule::next_in(&client), UpstreamRevocations::next_in(&client))?;
    Ok([refresh, revoke].into_iter().flatten().fold(POLL, Duration::min))
}

/// One round of both kinds of work; whether any was due.
pub async fn round(app: &AppState) -> Result<bool, StoreError> {
    let due = {
        let client = app.database.pool().get().await.map_err(StoreError::from)?;
        RefreshSchedule::due(&client, BATCH).await?
    };
    let refreshed = !due.is_empty();
    futures::stream::iter(due)
        .for_each_concurrent(app.settings.upkeep.concurrency, |due| async move {
            if let Err(error) = refresh_due(app, &due).await {
                tracing::warn!(%error, connection_id = %due.connection_id, "scheduled refresh failed; it is retried");
            }
        })
        .await;
    let revoked = upstream::round(app).await? > 0;
    Ok(refreshed || revoked)
}

/// Refreshes one scheduled connection, or postpones it.
async fn refresh_due(app: &AppState, due: &RefreshDue) -> Result<(), StoreError> {
    let connection_id = due.connection_id;
    let postpone = |asked: Option<Duration>| async move {
        let pause = app.settings.upkeep.retry_after(due.failures + 1, asked);
        let not_before = Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default();
        let client = app.database.pool().get().await.map_err(StoreError::from)?;
        RefreshSchedule::postpone(&client, connection_id, due.credential_version, not_before).await
    };
    let location = {
        let client = app.database.pool().get().await.map_err(StoreError::from)?;
        ConnectionLocation::find(&client, connection_id).await?
    };
    let Some(location) = location else {
        return forget(app, due).await;
    };
    let service = ServiceName::parse(due.service.clone()).map_err(|_| StoreError::Corrupt("service".into()))?;
    if app.settings.providers.get(&service).is_none() {
        // No provider configured (any more): try again much later.
        return postpone(Some(Duration::from_secs(3600))).await;
    }
    let owner: OwnerId = location.owner;
    let credential = match refresh::current_credential(app, connection_id, &owner, due.credential_version).await {
        Ok(Some(credential)) => credential,
        Ok(None) => return forget(app, due).await,
        Err(error) => {
            tracing::warn!(%error, %connection_id, "could not open a scheduled credential");
            return postpone(None).await;
        }
    };
    match refresh::refresh(app, &owner, None, &service, connection_id, due.credential_version, &credential).await {
        // A new version scheduled itself; a rejected or revoked one left.
        Outcome::Done | Outcome::Rejected => Ok(()),
        Outcome::Revoked => forget(app, due).await,
        Outcome::Transient(asked) => postpone(asked).await,
    }
}

async fn forget(app: &AppState, due: &RefreshDue) -> Result<(), StoreError> {
    let client = app.database.pool().get().await.map_err(StoreError::from)?;
    RefreshSchedule::remove_version(&client, due.connection_id, due.credential_version).await
}
