//! The access log: one append-only row per hand-out of a plaintext credential.

use connections_domain::{AgentId, ConnectionId, OwnerId};
use deadpool_postgres::GenericClient;

use crate::chain;
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
    /// Records the hand-out, chained to the connection's previous access
    /// record (see [`crate::chain`]). The caller must commit before
    /// releasing the secret: if this or the commit fails, nothing is handed
    /// out. A transaction-scoped advisory lock per connection orders its
    /// chain; it is held until the caller commits.
    pub async fn record(&self, client: &impl GenericClient) -> Result<(), StoreError> {
        let lock = client.prepare_cached("SELECT pg_advisory_xact_lock($1)").await?;
        let insert = client.prepare_cached(INSERT).await?;
        let version =
            i32::try_from(self.credential_version).map_err(|_| StoreError::Corrupt("credential version".into()))?;
        let connection_id = self.connection_id.as_uuid();
        let content =
            chain::access_content(connection_id, version, self.agent_id.as_str(), self.owner.as_str(), self.request_id);
        let key = chain_lock_key(connection_id);
        let (agent, owner) = (self.agent_id.as_str(), self.owner.as_str());
        let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        let insert_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&connection_id, &version, &agent, &owner, &self.request_id, &content];
        let (locked, inserted) =
            futures_util::join!(client.execute(&lock, &lock_params), client.execute(&insert, &insert_params));
        locked?;
        if inserted? != 1 {
            return Err(StoreError::Corrupt("the access record was not written".into()));
        }
        Ok(())
    }
}

impl Access<'_> {
    /// The latest credential version of `connection_id` handed to `agent`
    /// acting for `owner`, or `None` if it was never handed one. Read from
    /// the connection's newest records backwards (the agent's last hand-out
    /// is usually recent).
    pub async fn last_version_handed(
        client: &impl GenericClient,
        connection_id: ConnectionId,
        owner: &OwnerId,
        agent: &AgentId,
    ) -> Result<Option<u32>, StoreError> {
        let statement = client
            .prepare_cached(
                "SELECT credential_version FROM access_log WHERE connection_id = $1 AND agent_id = $2 \
                 AND owner_id = $3 ORDER BY access_id DESC LIMIT 1",
            )
            .await?;
        let row = client.query_opt(&statement, &[&connection_id.as_uuid(), &agent.as_str(), &owner.as_str()]).await?;
        row.map(|row| u32::try_from(row.get::<_, i32>(0)).map_err(|_| StoreError::Corrupt("credential version".into())))
            .transpose()
    }
}

/// The advisory lock key of a connection's access chain: its id's first
/// eight bytes (a collision only serializes two chains, harmlessly).
fn chain_lock_key(connection_id: uuid::Uuid) -> i64 {
    let bytes = connection_id.as_bytes();
    i64::from_be_bytes(bytes[8..16].try_into().expect("eight bytes"))
}

/// The insert, with its hash computed from the connection's last record.
/// Runs after the chain's lock is held, so (read committed) it sees the
/// record of every earlier holder.
const INSERT: &str = "WITH previous AS ( \
        SELECT coalesce((SELECT hash FROM access_log WHERE connection_id = $1 ORDER BY access_id DESC LIMIT 1), \
            decode(repeat('00', 32), 'hex')) AS hash), \
    place AS ( \
        SELECT nextval('access_log_access_id_seq'::regclass) AS access_id, clock_timestamp() AS accessed_at), \
    row AS ( \
        SELECT place.access_id, place.accessed_at, previous.hash AS previous_hash, \
            sha256(previous.hash || $6::bytea || int8send(place.access_id) \
                || int8send((extract(epoch FROM place.accessed_at) * 1000000)::int8)) AS hash \
        FROM previous, place) \
    INSERT INTO access_log (access_id, connection_id, credential_version, agent_id, owner_id, request_id, \
        accessed_at, previous_hash, hash) OVERRIDING SYSTEM VALUE \
    SELECT row.access_id, $1, $2, $3, $4, $5, row.accessed_at, row.previous_hash, row.hash FROM row";
