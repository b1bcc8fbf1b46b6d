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
