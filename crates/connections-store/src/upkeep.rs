//! The side tables of background token upkeep: when each OAuth connection
//! is due for a refresh, and the tokens still to be revoked at a provider.

use chrono::{DateTime, Utc};
use connections_domain::{ConnectionId, OwnerId, ServiceName};
use connections_sealing::{SealedCredential, WrappedDataKey};
use deadpool_postgres::GenericClient;

use crate::error::StoreError;

fn version_column(credential_version: u32) -> Result<i32, StoreError> {
    i32::try_from(credential_version).map_err(|_| StoreError::Corrupt("credential version".into()))
}

/// One connection's place in the refresh schedule.
#[derive(Debug, Clone)]
pub struct RefreshDue {
    /// The connection.
    pub connection_id: ConnectionId,
    /// Its service (whose provider refreshes it).
    pub service: String,
    /// The version to refresh from.
    pub credential_version: u32,
    /// When it should be refreshed.
    pub due_at: DateTime<Utc>,
    /// Transient failures since the last success.
    pub failures: u32,
}

/// The refresh schedule (`refresh_schedule`).
pub struct RefreshSchedule;

impl RefreshSchedule {
    /// Schedules the refresh of a version just sealed (replacing the
    /// previous version's entry and any backoff).
    pub async fn schedule(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        service: &ServiceName,
        credential_version: u32,
        due_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "INSERT INTO refresh_schedule (connection_id, service, credential_version, due_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (connection_id) DO UPDATE SET service = EXCLUDED.service, \
                     credential_version = EXCLUDED.credential_version, due_at = EXCLUDED.due_at, \
                     not_before = '-infinity', failures = 0",
            )
            .await?;
        let version = version_column(credential_version)?;
        client.execute(&statement, &[&connection_id.as_uuid(), &service.as_str(), &version, &due_at]).await?;
        Ok(())
    }

    /// Takes a connection off the schedule (revoked, refused, or no longer
    /// refreshable).
    pub async fn remove(client: &impl GenericClient, connection_id: ConnectionId) -> Result<(), StoreError> {
        let statement = client.prepare_cached("DELETE FROM refresh_schedule WHERE connection_id = $1").await?;
        client.execute(&statement, &[&connection_id.as_uuid()]).await?;
        Ok(())
    }

    /// Takes a connection off the schedule only if it is still at
    /// `credential_version` (a newer version has its own entry).
    pub async fn remove_version(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        credential_version: u32,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached("DELETE FROM refresh_schedule WHERE connection_id = $1 AND credential_version = $2")
            .await?;
        client.execute(&statement, &[&connection_id.as_uuid(), &version_column(credential_version)?]).await?;
        Ok(())
    }

    /// The entries due by now, soonest first (at most `limit`).
    pub async fn due(client: &impl GenericClient, limit: i64) -> Result<Vec<RefreshDue>, StoreError> {
        let statement = client
            .prepare_cached(
                "SELECT connection_id, service, credential_version, due_at, failures FROM refresh_schedule \
                 WHERE greatest(due_at, not_before) <= now() \
                 ORDER BY greatest(due_at, not_before) LIMIT $1",
            )
            .await?;
        client
            .query(&statement, &[&limit])
            .await?
            .into_iter()
            .map(|row| {
                Ok(RefreshDue {
                    connection_id: ConnectionId::from_uuid(row.get(0)),
                    service: row.get(1),
                    credential_version: u32::try_from(row.get::<_, i32>(2))
                        .map_err(|_| StoreError::Corrupt("credential version".into()))?,
                    due_at: row.get(3),
                    failures: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
                })
            })
            .collect()
    }

    /// How long until the next entry is due (`None`: nothing scheduled).
    pub async fn next_in(client: &impl GenericClient) -> Result<Option<std::time::Duration>, StoreError> {
        let statement = client
            .prepare_cached(
                "SELECT extract(epoch FROM min(greatest(due_at, not_before)) - now())::float8 FROM refresh_schedule",
            )
            .await?;
        let seconds: Option<f64> = client.query_one(&statement, &[]).await?.get(0);
        Ok(seconds.map(|s| std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0))))
    }

    /// Records a transient failure of the refresh of `credential_version`:
    /// no new attempt before `not_before`.
    pub async fn postpone(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        credential_version: u32,
        not_before: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "UPDATE refresh_schedule SET not_before = $3, failures = failures + 1 \
                 WHERE connection_id = $1 AND credential_version = $2",
            )
            .await?;
        let version = version_column(credential_version)?;
        client.execute(&statement, &[&connection_id.as_uuid(), &version, &not_before]).await?;
        Ok(())
    }
}

/// Tokens waiting to be revoked at their provider.
#[derive(Debug)]
pub struct PendingRevocation {
    /// Its row.
    pub revocation_id: i64,
    /// The revoked connection.
    pub connection_id: ConnectionId,
    /// Its owner (part of the sealing's associated data).
    pub owner: String,
    /// Its service (whose provider is called).
    pub service: String,
    /// The data key of this row, wrapped.
    pub wrapped: WrappedDataKey,
    /// The tokens, sealed as credential version 0.
    pub sealed: SealedCredential,
    /// Attempts made so far.
    pub attempts: u32,
}

/// The upstream revocation outbox (`upstream_revocations`).
pub struct UpstreamRevocations;

impl UpstreamRevocations {
    /// The credential version the outbox seals under: no connection has it,
    /// so a row's ciphertext can never be opened as a connection's version.
    pub const SEALED_VERSION: u32 = 0;

    /// Queues tokens for revocation at the provider, due now.
    pub async fn enqueue(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        owner: &OwnerId,
        service: &ServiceName,
        wrapped: &WrappedDataKey,
        sealed: &SealedCredential,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "INSERT INTO upstream_revocations \
                     (connection_id, owner_id, service, master_key_id, wrapped_key, sealed) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        client
            .execute(
                &statement,
                &[
                    &connection_id.as_uuid(),
                    &owner.as_str(),
                    &service.as_str(),
                    &wrapped.master_key_id,
                    &wrapped.bytes,
                    &sealed.0,
                ],
            )
            .await?;
        Ok(())
    }

    /// The rows due by now, oldest first (at most `limit`).
    pub async fn due(client: &impl GenericClient, limit: i64) -> Result<Vec<PendingRevocation>, StoreError> {
        let statement = client
            .prepare_cached(
                "SELECT revocation_id, connection_id, owner_id, service, master_key_id, wrapped_key, sealed, attempts \
                 FROM upstream_revocations WHERE not_before <= now() ORDER BY not_before LIMIT $1",
            )
            .await?;
        Ok(client
            .query(&statement, &[&limit])
            .await?
            .into_iter()
            .map(|row| PendingRevocation {
                revocation_id: row.get(0),
                connection_id: ConnectionId::from_uuid(row.get(1)),
                owner: row.get(2),
                service: row.get(3),
                wrapped: WrappedDataKey { master_key_id: row.get(4), bytes: row.get(5) },
                sealed: SealedCredential(row.get(6)),
                attempts: u32::try_from(row.get::<_, i32>(7)).unwrap_or(0),
            })
            .collect())
    }

    /// Seconds until the next row is due (`None`: the outbox is empty).
    pub async fn next_in(client: &impl GenericClient) -> Result<Option<std::time::Duration>, StoreError> {
        let statement = client
            .prepare_cached("SELECT extract(epoch FROM min(not_before) - now())::float8 FROM upstream_revocations")
            .await?;
        let seconds: Option<f64> = client.query_one(&statement, &[]).await?.get(0);
        Ok(seconds.map(|s| std::time::Duration::from_secs_f64(s.clamp(0.0, 86_400.0))))
    }

    /// Deletes a row, and with it its data key: the tokens are gone.
    pub async fn forget(client: &impl GenericClient, revocation_id: i64) -> Result<(), StoreError> {
        let statement = client.prepare_cached("DELETE FROM upstream_revocations WHERE revocation_id = $1").await?;
        client.execute(&statement, &[&revocation_id]).await?;
        Ok(())
    }

    /// Records a failed attempt: the next one not before `not_before`.
    pub async fn postpone(
        client: &impl GenericClient,
        revocation_id: i64,
        not_before: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "UPDATE upstream_revocations SET attempts = attempts + 1, not_before = $2 WHERE revocation_id = $1",
            )
            .await?;
        client.execute(&statement, &[&revocation_id, &not_before]).await?;
        Ok(())
    }
}
