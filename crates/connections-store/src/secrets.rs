//! Data keys and sealed credentials: the only mutable secret state.

use connections_domain::ConnectionId;
use connections_sealing::{SealedCredential, WrappedDataKey};
use deadpool_postgres::GenericClient;

use crate::error::StoreError;
use crate::locator::ConnectionLocation;

/// The sealed secret state of one connection.
pub struct StoredCredential;

impl StoredCredential {
    /// Everything a new connection stores besides its events, in one
    /// statement: where it lives, its wrapped data key, its sealed credential v1.
    pub async fn insert_new_connection(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        location: &ConnectionLocation,
        wrapped: &WrappedDataKey,
        sealed: &SealedCredential,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "WITH located AS ( \
                     INSERT INTO connection_locator (connection_id, owner_id, service) VALUES ($1, $2, $3)), \
                 keyed AS ( \
                     INSERT INTO data_keys (connection_id, master_key_id, wrapped_key) VALUES ($1, $4, $5)) \
                 INSERT INTO sealed_credentials (connection_id, credential_version, sealed) VALUES ($1, 1, $6)",
            )
            .await?;
        client
            .execute(
                &statement,
                &[
                    &connection_id.as_uuid(),
                    &location.owner.as_str(),
                    &location.service.as_str(),
                    &wrapped.master_key_id,
                    &wrapped.bytes,
                    &sealed.0,
                ],
            )
            .await
            .map_err(StoreError::raced_on(location.stream_id().as_str()))?;
        Ok(())
    }

    /// Stores a new connection's wrapped data key.
    pub async fn insert_data_key(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        wrapped: &WrappedDataKey,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached("INSERT INTO data_keys (connection_id, master_key_id, wrapped_key) VALUES ($1, $2, $3)")
            .await?;
        client.execute(&statement, &[&connection_id.as_uuid(), &wrapped.master_key_id, &wrapped.bytes]).await?;
        Ok(())
    }

    /// A connection's wrapped data key; `None` once it has been destroyed.
    pub async fn data_key(
        client: &impl GenericClient,
        connection_id: ConnectionId,
    ) -> Result<Option<WrappedDataKey>, StoreError> {
        let statement =
            client.prepare_cached("SELECT master_key_id, wrapped_key FROM data_keys WHERE connection_id = $1").await?;
        let row = client.query_opt(&statement, &[&connection_id.as_uuid()]).await?;
        Ok(row.map(|row| WrappedDataKey { master_key_id: row.get(0), bytes: row.get(1) }))
    }

    /// Destroys a connection's data key (crypto-shredding): every sealed
    /// version becomes unrecoverable. Its hygiene facts (fingerprints
    /// included) and its place in the refresh schedule go with it.
    pub async fn destroy_data_key(client: &impl GenericClient, connection_id: ConnectionId) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "WITH forgotten AS (DELETE FROM credential_hygiene WHERE connection_id = $1), \
                      unscheduled AS (DELETE FROM refresh_schedule WHERE connection_id = $1) \
                 DELETE FROM data_keys WHERE connection_id = $1",
            )
            .await?;
        client.execute(&statement, &[&connection_id.as_uuid()]).await?;
        Ok(())
    }

    /// Replaces a data key's wrapping, if it is still wrapped under
    /// `from_key_id` (a master key rotation; the key itself is unchanged).
    pub async fn rewrap(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        from_key_id: &str,
        wrapped: &WrappedDataKey,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "UPDATE data_keys SET master_key_id = $3, wrapped_key = $4 \
                 WHERE connection_id = $1 AND master_key_id = $2",
            )
            .await?;
        client
            .execute(&statement, &[&connection_id.as_uuid(), &from_key_id, &wrapped.master_key_id, &wrapped.bytes])
            .await?;
        Ok(())
    }

    /// How many live data keys each master key id wraps.
    pub async fn key_counts(client: &impl GenericClient) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = client
            .query("SELECT master_key_id, count(*) FROM data_keys GROUP BY master_key_id ORDER BY master_key_id", &[])
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Up to `limit` connections after `after` (in id order) whose data key
    /// is wrapped under one of `key_ids`: (connection, owner, key id).
    pub async fn wrapped_under(
        client: &impl GenericClient,
        key_ids: &[&str],
        after: Option<ConnectionId>,
        limit: i64,
    ) -> Result<Vec<(ConnectionId, String, String)>, StoreError> {
        let after = after.map(|id| id.as_uuid()).unwrap_or_default();
        let rows = client
            .query(
                "SELECT d.connection_id, l.owner_id, d.master_key_id FROM data_keys d \
                 JOIN connection_locator l USING (connection_id) \
                 WHERE d.master_key_id = ANY($1) AND d.connection_id > $2 ORDER BY d.connection_id LIMIT $3",
                &[&key_ids, &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(|row| (ConnectionId::from_uuid(row.get(0)), row.get(1), row.get(2))).collect())
    }

    /// Stores one sealed credential version.
    pub async fn insert_sealed(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        credential_version: u32,
        sealed: &SealedCredential,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "INSERT INTO sealed_credentials (connection_id, credential_version, sealed) VALUES ($1, $2, $3)",
            )
            .await?;
        let version =
            i32::try_from(credential_version).map_err(|_| StoreError::Corrupt("credential version".into()))?;
        client.execute(&statement, &[&connection_id.as_uuid(), &version, &sealed.0]).await?;
        Ok(())
    }

    /// One sealed credential version, if stored.
    pub async fn sealed(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        credential_version: u32,
    ) -> Result<Option<SealedCredential>, StoreError> {
        let statement = client
            .prepare_cached(
                "SELECT sealed FROM sealed_credentials WHERE connection_id = $1 AND credential_version = $2",
            )
            .await?;
        let version =
            i32::try_from(credential_version).map_err(|_| StoreError::Corrupt("credential version".into()))?;
        let row = client.query_opt(&statement, &[&connection_id.as_uuid(), &version]).await?;
        Ok(row.map(|row| SealedCredential(row.get(0))))
    }
}
