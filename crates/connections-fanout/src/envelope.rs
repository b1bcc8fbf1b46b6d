//! The envelope of a recorded event (`connections_wire::Envelope`,
//! `schemas/nats/envelope.v1.json`), built from a row of the log.

use connections_store::{LogCursor, RecordedEvent};
use connections_wire::{Envelope, EnvelopeCursor};

/// The envelope of a recorded event of an `owner-service/<owner>/<service>`
/// stream; `None` for any other stream.
pub fn envelope_of(event: &RecordedEvent, previous: Option<LogCursor>) -> Option<Envelope> {
    envelope_from(event.clone(), previous)
}

/// Like [`envelope_of`], moving the event's parts into the envelope instead
/// of copying them (the relay publishes each event once).
pub fn envelope_from(event: RecordedEvent, previous: Option<LogCursor>) -> Option<Envelope> {
    let (owner, service) = event.stream()?.into_parts();
    let cursor = envelope_cursor(event.cursor());
    Some(Envelope {
        envelope_version: 1,
        event_id: event.event_id,
        cursor,
        previous: previous.map(envelope_cursor),
        stream_id: event.stream_id,
        stream_version: event.stream_version,
        owner: owner.into(),
        service: service.into(),
        event_type: event.event_type,
        schema_version: event.schema_version,
        recorded_at: event.recorded_at,
        data: event.data,
        metadata: event.metadata,
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
