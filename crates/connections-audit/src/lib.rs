//! The audit of Connections: everything `connections audit` does.
//!
//! Records come from a [`source`] — the live Postgres log or an export file —
//! in the log's global order (events), then the access log (per connection
//! in chain order), then, in a file, a closing checkpoint line. Each
//! consumer is a [`Sink`]: the [`verify::Verifier`] walks the hash chains,
//! [`replay`] folds the state as of an instant or the usage of a connection,
//! [`export::Exporter`] writes the file. Several run in one pass with
//! [`Both`].
//!
//! Memory is bounded by the number of streams and connections (one head per
//! chain), never by the number of events: sources hand out one record at a
//! time.

pub mod checkpoint;
pub mod event;
pub mod export;
pub mod periodic;
pub mod record;
pub mod replay;
pub mod source;
pub mod time;
pub mod verify;

pub use event::AuditEvent;
pub use record::{AccessRecord, At};

/// Something that consumes the records of an audit pass in order.
pub trait Sink {
    /// One event, in the log's global order.
    fn event(&mut self, at: At, event: &AuditEvent<'_>) -> Result<(), AuditError>;
    /// One access record, after every event, per connection in chain order.
    fn access(&mut self, at: At, access: &AccessRecord) -> Result<(), AuditError>;
    /// A file's closing checkpoint line (never from Postgres).
    fn checkpoint(&mut self, _at: At, _checkpoint: &checkpoint::Checkpoint) -> Result<(), AuditError> {
        Ok(())
    }
}

/// Two sinks fed by one pass.
pub struct Both<'a, A: Sink, B: Sink>(pub &'a mut A, pub &'a mut B);

impl<A: Sink, B: Sink> Sink for Both<'_, A, B> {
    fn event(&mut self, at: At, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        self.0.event(at, event)?;
        self.1.event(at, event)
    }
    fn access(&mut self, at: At, access: &AccessRecord) -> Result<(), AuditError> {
        self.0.access(at, access)?;
        self.1.access(at, access)
    }
    fn checkpoint(&mut self, at: At, checkpoint: &checkpoint::Checkpoint) -> Result<(), AuditError> {
        self.0.checkpoint(at, checkpoint)?;
        self.1.checkpoint(at, checkpoint)
    }
}

/// Why an audit pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The history is not what was written: the first broken link.
    #[error("tampering detected at {at}: {finding}")]
    Tampered {
        /// Where.
        at: At,
        /// What.
        finding: verify::Finding,
    },
    /// A line of an export file is not a record.
    #[error("{at}: not a valid audit record ({message}); the file is edited or damaged")]
    Malformed {
        /// Where.
        at: At,
        /// Why.
        message: String,
    },
    /// The export file ends early.
    #[error("the file is truncated: {0}")]
    Truncated(String),
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    /// Reading Postgres failed.
    #[error("reading the log: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A stored row could not be read.
    #[error("reading the log: {0}")]
    Store(#[from] connections_store::StoreError),
}
