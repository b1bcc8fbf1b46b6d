//! Which stream holds a connection, looked up by connection id.

use connections_domain::{ConnectionId, OwnerId, ServiceName};
use deadpool_postgres::GenericClient;

use crate::error::StoreError;
use crate::log::StreamId;

/// Where a connection lives: its owner and service, hence its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLocation {
    /// The owner.
    pub owner: OwnerId,
    /// The service.
    pub service: ServiceName,
}

impl ConnectionLocation {
    /// The stream holding the connection's events.
    pub fn stream_id(&self) -> StreamId {
        StreamId::owner_service(&self.owner, &self.service)
    }

    /// Records where a new connection lives (in its creation transaction).
    pub async fn insert(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        location: &ConnectionLocation,
    ) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached("INSERT INTO connection_locator (connection_id, owner_id, service) VALUES ($1, $2, $3)")
            .await?;
        client
            .execute(&statement, &[&connection_id.as_uuid(), &location.owner.as_str(), &location.service.as_str()])
            .await
            .map_err(StoreError::raced_on(location.stream_id().as_str()))?;
        Ok(())
    }

    /// Finds where a connection lives, whoever owns it. Callers must still
    /// check ownership (the domain does).
    pub async fn find(
        client: &impl GenericClient,
        connection_id: ConnectionId,
    ) -> Result<Option<ConnectionLocation>, StoreError> {
        let statement =
            client.prepare_cached("SELECT owner_id, service FROM connection_locator WHERE connection_id = $1").await?;
        let Some(row) = client.query_opt(&statement, &[&connection_id.as_uuid()]).await? else {
            return Ok(None);
        };
        let owner = OwnerId::parse(row.get::<_, String>(0)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let service = ServiceName::parse(row.get::<_, String>(1)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(ConnectionLocation { owner, service }))
    }
}
