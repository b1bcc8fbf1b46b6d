//! The access log: one append-only row per hand-out of a plaintext credential.

use connections_domain::{AgentId, ConnectionId, OwnerId};
use deadpool_postgres::GenericClient;

use crate::error::StoreError;

/// One hand-out, written in the transaction that releases the secret.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    /// The connection whose credential was handed out.
    pub connection_id: ConnectionId,
    /// Which version of it.
    pub credential_version: u32,
    /// The agent that received it.
    pub agent_id: &'a AgentId,
    /// The owner it acted for.
    pub owner: &'a OwnerId,
    /// The request that asked.
    pub request_id: uuid::Uuid,
}

impl Access<'_> {
    /// Records the hand-out. The caller must commit before releasing the
    /// secret: if this or the commit fails, nothing is handed out.
    pub async fn record(&self, client: &impl GenericClient) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "INSERT INTO access_log (connection_id, credential_version, agent_id, owner_id, request_id) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        let version =
            i32::try_from(self.credential_version).map_err(|_| StoreError::Corrupt("credential version".into()))?;
        client
            .execute(
                &statement,
                &[
                    &self.connection_id.as_uuid(),
                    &version,
                    &self.agent_id.as_str(),
                    &self.owner.as_str(),
                    &self.request_id,
                ],
            )
            .await?;
        Ok(())
    }
}
