//! Checkpoints taken by the server on a schedule and kept in
//! `audit_checkpoints`, so that an auditor can export them later
//! (`connections audit checkpoints`). Each is a full verification pass: a
//! broken chain is logged as an error and no checkpoint is stored.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::checkpoint::Checkpoint;
use crate::record::{write_line, Kind};
use crate::source::{read_log, LogFilter};
use crate::verify::Verifier;
use crate::AuditError;

/// Verifies the whole log (up to the horizon, so the cursor is safe to
/// resume from) and returns its checkpoint, or the first broken link.
pub async fn take(client: &mut Client, owner: Option<String>) -> Result<Checkpoint, AuditError> {
    let mut verifier = Verifier::complete();
    let filter = LogFilter { owner: owner.clone(), accesses: Some(None), horizon: true, ..LogFilter::default() };
    read_log(client, &filter, &mut verifier).await?;
    Ok(verifier.finish(owner, None, false)?.0)
}

/// The checkpoint as one line (with its newline).
pub fn line(checkpoint: &Checkpoint) -> String {
    let mut out = Vec::new();
    write_line(&mut out, Kind::Checkpoint, checkpoint);
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Stores a checkpoint.
pub async fn store(client: &Client, checkpoint: &Checkpoint) -> Result<(), AuditError> {
    client
        .execute(
            "INSERT INTO audit_checkpoints (taken_at, digest, body) VALUES ($1, $2, $3)",
            &[&checkpoint.taken_at, &checkpoint.digest.0.as_slice(), &line(checkpoint)],
        )
        .await?;
    Ok(())
}

/// The stored checkpoints taken at or after `since`, oldest first, one line
/// each, handed to `each` one at a time.
pub async fn list(
    client: &mut Client,
    since: Option<DateTime<Utc>>,
    mut each: impl FnMut(&str),
) -> Result<u64, AuditError> {
    let transaction = client.transaction().await?;
    let statement = transaction
        .prepare(
            "SELECT body FROM audit_checkpoints WHERE $1::timestamptz IS NULL OR taken_at >= $1 \
             ORDER BY taken_at, checkpoint_id",
        )
        .await?;
    let portal = transaction.bind(&statement, &[&since]).await?;
    let mut count = 0;
    loop {
        let rows = transaction.query_portal(&portal, 4).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            count += 1;
            each(row.get(0));
        }
    }
    transaction.commit().await?;
    Ok(count)
}

/// Takes a checkpoint whenever the newest stored one is older than
/// `interval`, until `stopping`. Several servers may run this: an advisory
/// lock lets one of them take each checkpoint.
pub async fn run(database_url: String, interval: Duration, mut stopping: watch::Receiver<bool>) {
    const LOCK: i64 = 7_243_005;
    loop {
        let wait = match once(&database_url, interval, LOCK).await {
            Ok(wait) => wait,
            Err(error) => {
                tracing::error!(%error, "audit checkpoint failed");
                Duration::from_secs(60).min(interval)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.changed() => return,
        }
        if *stopping.borrow() {
            return;
        }
    }
}

/// One round: takes a checkpoint if one is due; returns how long to wait.
async fn once(database_url: &str, interval: Duration, lock: i64) -> Result<Duration, AuditError> {
    let (mut client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let due = || async {
        let newest: Option<DateTime<Utc>> =
            client.query_one("SELECT max(taken_at) FROM audit_checkpoints", &[]).await?.get(0);
        let age = newest.map(|t| (Utc::now() - t).to_std().unwrap_or_default());
        Ok::<_, AuditError>(age.map_or(Duration::ZERO, |age| interval.saturating_sub(age)))
    };
    let mut wait = due().await?;
    if wait.is_zero() {
        let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock]).await?.get(0);
        if locked {
            // Another server may have taken one while this one waited.
            if due().await?.is_zero() {
                let checkpoint = take(&mut client, None).await;
                match checkpoint {
                    Ok(checkpoint) => {
                        store(&client, &checkpoint).await?;
                        tracing::info!(
                            events = checkpoint.events,
                            digest = %checkpoint.digest,
                            "audit checkpoint taken"
                        );
                    }
                    Err(error @ AuditError::Tampered { .. }) => {
                        tracing::error!(%error, "audit: the log does not verify; no checkpoint stored");
                    }
                    Err(error) => return Err(error),
                }
            }
            client.execute("SELECT pg_advisory_unlock($1)", &[&lock]).await?;
        }
        wait = interval;
    }
    drop(client);
    let _ = driver.await;
    Ok(wait.max(Duration::from_millis(100)))
}
