//! Checkpoints: the head of every chain at a point of the log.
//!
//! An auditor who keeps a checkpoint can later prove that nothing before it
//! was rewritten: each head's hash commits to its whole chain, so the log (or
//! a later export) must still pass through every head with the same hash.
//! The digest commits to the whole checkpoint, so it can be published or
//! signed on its own.

use chrono::{DateTime, Utc};
use connections_store::chain::ChainHash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The format name written into every checkpoint.
pub const FORMAT: &str = "connections-audit/1";

/// A stream's last event at the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHead {
    /// The stream.
    pub stream_id: String,
    /// Its last version.
    pub version: u64,
    /// That event's hash.
    pub hash: ChainHash,
}

/// A connection's last access record at the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessHead {
    /// The connection.
    pub connection_id: Uuid,
    /// Its last access record.
    pub access_id: i64,
    /// That record's hash.
    pub hash: ChainHash,
}

/// The heads of every chain an audit pass saw, and what it covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`FORMAT`].
    pub format: String,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
    /// The owner the pass was limited to, if any.
    pub owner: Option<String>,
    /// The cursor the pass started after (`TX:POSITION`), if not the start.
    pub from: Option<String>,
    /// The last event covered (`TX:POSITION`), if any.
    pub cursor: Option<String>,
    /// How many events the pass covered.
    pub events: u64,
    /// How many access records.
    pub accesses: u64,
    /// Every stream's head, by stream id.
    pub heads: Vec<StreamHead>,
    /// Every connection's access head, by connection id.
    pub access_heads: Vec<AccessHead>,
    /// SHA-256 over everything above but `taken_at` (see [`Checkpoint::compute_digest`]).
    pub digest: ChainHash,
}

impl Checkpoint {
    /// The digest of the checkpoint's content.
    pub fn compute_digest(&self) -> ChainHash {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(self.format.as_bytes());
        field(self.owner.as_deref().unwrap_or("").as_bytes());
        field(self.from.as_deref().unwrap_or("").as_bytes());
        field(self.cursor.as_deref().unwrap_or("").as_bytes());
        field(&self.events.to_be_bytes());
        field(&self.accesses.to_be_bytes());
        for head in &self.heads {
            field(head.stream_id.as_bytes());
            field(&head.version.to_be_bytes());
            field(&head.hash.0);
        }
        field(b"access");
        for head in &self.access_heads {
            field(head.connection_id.as_bytes());
            field(&head.access_id.to_be_bytes());
            field(&head.hash.0);
        }
        ChainHash(hasher.finalize().into())
    }
}
