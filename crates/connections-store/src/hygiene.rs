//! What the hygiene review knows of a connection's current credential,
//! recorded when it is sealed (see migration V11): never the secret, only
//! keyed fingerprints of its values, when it was sealed, and when an OAuth
//! access token expires.

use chrono::{DateTime, Utc};
use connections_domain::{ConnectionId, OwnerId};
use deadpool_postgres::GenericClient;

use crate::error::StoreError;

/// The facts of one sealed credential version.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialHygiene {
    /// The connection.
    pub connection_id: ConnectionId,
    /// Its owner.
    pub owner: OwnerId,
    /// The version just sealed.
    pub credential_version: u32,
    /// When the OAuth access token expires, if known.
    pub expires_at: Option<DateTime<Utc>>,
    /// Keyed fingerprints of the secret values (see
    /// `connections_sealing::Credential::secret_values`).
    pub fingerprints: Vec<[u8; 32]>,
}

impl std::fmt::Debug for CredentialHygiene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialHygiene")
            .field("connection_id", &self.connection_id)
            .field("credential_version", &self.credential_version)
            .field("fingerprints", &format_args!("[{} redacted]", self.fingerprints.len()))
            .finish_non_exhaustive()
    }
}

impl CredentialHygiene {
    /// Records the facts of the version just sealed, replacing the previous
    /// version's (the row is deleted with the data key on revocation).
    pub async fn record(&self, client: &impl GenericClient) -> Result<(), StoreError> {
        let statement = client
            .prepare_cached(
                "INSERT INTO credential_hygiene (connection_id, owner_id, credential_version, expires_at, fingerprints) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (connection_id) DO UPDATE SET credential_version = EXCLUDED.credential_version, \
                 sealed_at = statement_timestamp(), expires_at = EXCLUDED.expires_at, \
                 fingerprints = EXCLUDED.fingerprints",
            )
            .await?;
        let version =
            i32::try_from(self.credential_version).map_err(|_| StoreError::Corrupt("credential version".into()))?;
        let fingerprints: Vec<&[u8]> = self.fingerprints.iter().map(|f| f.as_slice()).collect();
        client
            .execute(
                &statement,
                &[&self.connection_id.as_uuid(), &self.owner.as_str(), &version, &self.expires_at, &fingerprints],
            )
            .await?;
        Ok(())
    }
}
