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

    /// Whether the same work may succeed in a new transaction on another
    /// connection: no connection could be had, the connection was lost
    /// before commit, or Postgres rolled the transaction back to break a
    /// deadlock or a serialization failure (SQLSTATE class 40). Only a caller
    /// that has not sent COMMIT may retry: it knows nothing was stored.
    pub fn is_transient(&self) -> bool {
        use tokio_postgres::error::SqlState;
        let database = |error: &tokio_postgres::Error| {
            // The connection broke (closed, reset, a server that went away
            // mid-query): nothing was committed on it.
            let broken = std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>());
            error.is_closed()
                || broken
                || error.code().is_some_and(|code| {
                    code.code().starts_with("40")
                        || code.code().starts_with("08")
                        || [SqlState::TOO_MANY_CONNECTIONS, SqlState::ADMIN_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW]
                            .contains(code)
                })
        };
        match self {
            StoreError::Database(error) => database(error),
            // A new connection that broke while connecting, or while
            // preparing its statements (see `connect_pool`).
            StoreError::Pool(
                deadpool_postgres::PoolError::Backend(error)
                | deadpool_postgres::PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(error)),
            ) => database(error) || error.code().is_none(),
            StoreError::Pool(deadpool_postgres::PoolError::Timeout(_)) => true,
            _ => false,
        }
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
