//! Which stream holds a connection, looked up by connection id.

use std::sync::Mutex;

use connections_domain::{ConnectionId, OwnerId, ServiceName};
use deadpool_postgres::GenericClient;

use crate::error::StoreError;
use crate::log::{StreamId, StreamVersion};
use crate::recent::Recent;

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

    /// Finds where a connection lives, takes its stream's writers' lock
    /// (see [`crate::EventLog::lock_stream`]) and reads the stream's head
    /// once the lock is held, in one round trip. A connection never moves,
    /// so a location in `locations` is taken from there and its stream
    /// locked as [`LockedStream::lock`] does (two plain statements).
    /// Otherwise one call of `connections_locate_and_lock` (migration V18)
    /// does all three steps, and its answer is kept in `locations`. `None`
    /// for an unknown connection (no lock is taken). Callers must still
    /// check ownership and existence (the domain does, on the stream's
    /// state: a location kept from a transaction that then rolled back
    /// names a stream without that connection, which is the same answer).
    pub async fn locate_and_lock(
        client: &impl GenericClient,
        locations: &LocationCache,
        connection_id: ConnectionId,
    ) -> Result<Option<LockedStream>, StoreError> {
        if let Some(location) = locations.get(connection_id) {
            return LockedStream::lock(client, location).await.map(Some);
        }
        let statement = client.prepare_cached("SELECT * FROM connections_locate_and_lock($1)").await?;
        let Some(row) = client.query_opt(&statement, &[&connection_id.as_uuid()]).await? else {
            return Ok(None);
        };
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
        let owner = OwnerId::parse(row.get::<_, String>(0)).map_err(|e| corrupt(&e))?;
        let service = ServiceName::parse(row.get::<_, String>(1)).map_err(|e| corrupt(&e))?;
        let location = ConnectionLocation { owner, service };
        // The function spells the stream id itself (to lock it): it must be
        // the one Rust spells, or the lock would be another stream's.
        let stored: String = row.get(2);
        if stored != location.stream_id().as_str() {
            return Err(corrupt(&format!("connections_locate_and_lock named stream {stored:?}")));
        }
        locations.insert(connection_id, &location);
        Ok(Some(LockedStream {
            location,
            version: StreamVersion(row.get::<_, i64>(3) as u64),
            last_position: row.get(4),
        }))
    }
}

/// How many connections' locations an instance keeps.
pub const CACHED_LOCATIONS: usize = 65_536;

/// Where connections live, as this instance has seen them: a connection's
/// owner and service never change (`connection_locator` rows are only ever
/// inserted), so an entry is never out of date.
#[derive(Debug)]
pub struct LocationCache {
    entries: Mutex<Recent<ConnectionId, ConnectionLocation>>,
}

impl Default for LocationCache {
    fn default() -> Self {
        Self::new(CACHED_LOCATIONS)
    }
}

impl LocationCache {
    /// A cache of at most `capacity` locations, dropping those used least
    /// recently.
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(Recent::new(capacity)) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Recent<ConnectionId, ConnectionLocation>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where `connection_id` lives, if this instance knows.
    pub fn get(&self, connection_id: ConnectionId) -> Option<ConnectionLocation> {
        self.entries().get(&connection_id).cloned()
    }

    /// Keeps where `connection_id` lives (a new connection, once its
    /// creation has committed, or one looked up).
    pub fn insert(&self, connection_id: ConnectionId, location: &ConnectionLocation) {
        self.entries().insert(connection_id, location.clone());
    }

    /// How many locations are kept.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream this transaction holds the writers' lock of, and its head as
/// read under the lock: the version the transaction's append follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedStream {
    /// The stream's owner and service.
    pub location: ConnectionLocation,
    /// The stream's version (0 for a stream without events).
    pub version: StreamVersion,
    /// The position of the stream's last event (0 for none).
    pub last_position: i64,
}

impl LockedStream {
    /// Takes the writers' lock of `location`'s stream and reads its head
    /// once the lock is held: the two statements are sent together, the
    /// lock first, so this costs one round trip.
    pub async fn lock(client: &impl GenericClient, location: ConnectionLocation) -> Result<Self, StoreError> {
        let stream_id = location.stream_id();
        let (locked, head) = futures_util::join!(
            crate::EventLog::lock_stream(client, &stream_id),
            crate::StreamState::head(client, &stream_id)
        );
        locked?;
        let (version, last_position) = head?;
        Ok(Self { location, version, last_position })
    }
}
