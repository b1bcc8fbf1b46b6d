//! Typed store errors.

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first (unique violation on
    /// (stream_id, stream_version), or the expected version was stale).
    #[error("stream {stream_id} was changed concurrently")]
    Conflict {
        /// The stream that moved.
        stream_id: String,
    },
    /// A stored row could not be decoded: a bug or tampering, never user input.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database refused or failed.
    #[error("database error")]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be taken from the pool.
    #[error("database pool error")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The configuration (a database URL, a pool size) is unusable.
    #[error("store configuration: {0}")]
    Configuration(String),
    /// Migrations failed.
    #[error("migration failed")]
    Migration(#[from] refinery::Error),
}

impl StoreError {
    /// Whether this is a unique violation (SQLSTATE 23505).
    pub(crate) fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
        error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    }

    /// A database error, where a unique violation means another writer
    /// won the race on `stream_id`.
    pub(crate) fn raced_on(stream_id: &str) -> impl FnOnce(tokio_postgres::Error) -> StoreError + '_ {
        move |error| {
            if Self::is_unique_violation(&error) {
                StoreError::Conflict { stream_id: stream_id.to_owned() }
            } else {
                StoreError::Database(error)
            }
        }
    }
}
