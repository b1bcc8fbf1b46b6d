//! The envelope of a recorded event (`connections_wire::Envelope`,
//! `schemas/nats/envelope.v1.json`), built from a row of the log.

use connections_store::{LogCursor, RecordedEvent};
use connections_wire::{Envelope, EnvelopeCursor};

/// The envelope of a recorded event of an `owner-service/<owner>/<service>`
/// stream; `None` for any other stream.
pub fn envelope_of(event: &RecordedEvent, previous: Option<LogCursor>) -> Option<Envelope> {
    let stream = event.stream()?;
    let (owner, service) = (stream.owner().to_string(), stream.service().to_string());
    Some(Envelope {
        envelope_version: 1,
        event_id: event.event_id,
        cursor: envelope_cursor(event.cursor()),
        previous: previous.map(envelope_cursor),
        stream_id: event.stream_id.clone(),
        stream_version: event.stream_version,
        owner,
        service,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        recorded_at: event.recorded_at,
        data: event.data.clone(),
        metadata: event.metadata.clone(),
    })
}

/// A log cursor as carried in envelopes and notices.
pub fn envelope_cursor(cursor: LogCursor) -> EnvelopeCursor {
    EnvelopeCursor { transaction_id: cursor.transaction_id, position: cursor.position }
}

/// The log cursor an envelope names.
pub fn log_cursor(cursor: EnvelopeCursor) -> LogCursor {
    LogCursor { transaction_id: cursor.transaction_id, position: cursor.position }
}
