//! Writing an export file (see [`crate::record`] for its lines).

use std::io::Write;

use crate::checkpoint::Checkpoint;
use crate::event::AuditEvent;
use crate::record::{write_line, AccessRecord, At, Kind};
use crate::{AuditError, Sink};

/// Writes every record it is given, buffered; [`Exporter::finish`] closes
/// the file with its checkpoint.
pub struct Exporter<W: Write> {
    out: W,
    buffer: Vec<u8>,
}

const FLUSH_AT: usize = 256 * 1024;

impl<W: Write> Exporter<W> {
    /// Writes to `out`.
    pub fn new(out: W) -> Self {
        Self { out, buffer: Vec::with_capacity(FLUSH_AT + 4096) }
    }

    fn flush_if_full(&mut self) -> Result<(), AuditError> {
        if self.buffer.len() >= FLUSH_AT {
            self.out.write_all(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Writes the closing checkpoint and flushes.
    pub fn finish(mut self, checkpoint: &Checkpoint) -> Result<W, AuditError> {
        write_line(&mut self.buffer, Kind::Checkpoint, checkpoint);
        self.out.write_all(&self.buffer)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Sink for Exporter<W> {
    fn event(&mut self, _at: At, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        write_line(&mut self.buffer, Kind::Event, event);
        self.flush_if_full()
    }

    fn access(&mut self, _at: At, access: &AccessRecord) -> Result<(), AuditError> {
        write_line(&mut self.buffer, Kind::Access, access);
        self.flush_if_full()
    }
}
