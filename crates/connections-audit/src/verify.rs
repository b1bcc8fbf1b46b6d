//! Walking the hash chains: the first broken link, pinpointed.
//!
//! Events arrive in the log's global order. Within a stream, versions must
//! follow each other (the append statement keeps version order equal to the
//! global order), each event must name its predecessor's hash, and its own
//! hash must match its content and place. Access records are checked per
//! connection the same way.

use std::collections::HashMap;

use chrono::Utc;
use connections_store::chain::ChainHash;
use connections_store::LogCursor;
use uuid::Uuid;

use crate::checkpoint::{AccessHead, Checkpoint, StreamHead, FORMAT};
use crate::event::AuditEvent;
use crate::record::{AccessRecord, At};
use crate::{AuditError, Sink};

/// What is wrong at a place in the history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    /// The row's content or place does not match its own hash.
    #[error("{what} does not match its hash: its content, time or place was edited")]
    Edited {
        /// e.g. `stream owner-service/alice/github version 3`.
        what: String,
    },
    /// The row does not name its predecessor's hash.
    #[error("{what} does not link to the record before it: a record was inserted, deleted or moved before it")]
    BrokenLink {
        /// The row.
        what: String,
    },
    /// Versions skip: events were deleted.
    #[error("stream {stream_id} jumps from version {last} to {found}: events were deleted")]
    Gap {
        /// The stream.
        stream_id: String,
        /// The last version seen.
        last: u64,
        /// The version found.
        found: u64,
    },
    /// A version or cursor goes backwards.
    #[error("{what} is out of order (after {after}): records were reordered or duplicated")]
    OutOfOrder {
        /// The row.
        what: String,
        /// What came before it.
        after: String,
    },
    /// A complete history starts a stream after its first event.
    #[error("stream {stream_id} starts at version {version}: its first events were deleted")]
    MissingStart {
        /// The stream.
        stream_id: String,
        /// Its first version present.
        version: u64,
    },
    /// A row without a hash in a chained log.
    #[error("{what} carries no hash")]
    Unchained {
        /// The row.
        what: String,
    },
    /// The history disagrees with a checkpoint taken earlier.
    #[error("{0}")]
    Checkpoint(String),
}

#[derive(Debug, Clone)]
struct StreamState {
    version: u64,
    hash: ChainHash,
    /// Where it was anchored, if its first event here is not version 1.
    anchored_at: Option<(At, u64)>,
}

/// An expectation from an older checkpoint.
#[derive(Debug, Clone)]
struct Expected {
    version: u64,
    hash: ChainHash,
    confirmed: bool,
}

/// Walks the chains of one audit pass.
#[derive(Debug, Default)]
pub struct Verifier {
    streams: HashMap<String, StreamState>,
    accesses: HashMap<Uuid, (i64, ChainHash)>,
    last_cursor: Option<LogCursor>,
    events: u64,
    access_count: u64,
    /// Whether every stream must start at version 1 (the live log, a full export).
    complete: bool,
    earlier: Option<(HashMap<String, Expected>, HashMap<Uuid, Expected>)>,
    /// The scope of the earlier checkpoint: it, not the file, says what
    /// must be covered.
    earlier_scope: Option<Scope>,
    file_checkpoint: Option<(At, Closing)>,
}

/// What a checkpoint covers: one owner or all, from a cursor or the start,
/// up to a cursor.
#[derive(Debug, Clone, Default)]
struct Scope {
    owner: Option<String>,
    from: Option<String>,
    cursor: Option<String>,
}

/// What the verifier keeps of a file's closing checkpoint: its digest covers
/// the heads, so they need not be kept.
#[derive(Debug)]
struct Closing {
    owner: Option<String>,
    from: Option<String>,
    events: u64,
    accesses: u64,
    digest: ChainHash,
    digest_matches: bool,
}

impl Verifier {
    /// A verifier for a complete history (the live log, or an export from
    /// the start): streams must start at version 1.
    pub fn complete() -> Self {
        Self { complete: true, ..Self::default() }
    }

    /// A verifier for an export file: whether it is complete is read from
    /// its closing checkpoint (an export `--from` a cursor starts streams
    /// mid-chain, anchored on the first event's previous hash).
    pub fn for_file() -> Self {
        Self::default()
    }

    /// Also check that the history passes through every head of `earlier`.
    pub fn against(mut self, earlier: &Checkpoint) -> Self {
        let streams = earlier
            .heads
            .iter()
            .map(|h| (h.stream_id.clone(), Expected { version: h.version, hash: h.hash, confirmed: false }))
            .collect();
        let accesses = earlier
            .access_heads
            .iter()
            .map(|h| (h.connection_id, Expected { version: h.access_id as u64, hash: h.hash, confirmed: false }))
            .collect();
        self.earlier = Some((streams, accesses));
        self.earlier_scope =
            Some(Scope { owner: earlier.owner.clone(), from: earlier.from.clone(), cursor: earlier.cursor.clone() });
        self
    }

    /// Events checked so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Ends the pass: the file's closing checkpoint must match what was
    /// read, and every head of an earlier checkpoint must have been passed.
    /// Returns the checkpoint of what was read.
    pub fn finish(
        self,
        owner: Option<String>,
        from: Option<LogCursor>,
        is_file: bool,
    ) -> Result<(Checkpoint, Report), AuditError> {
        let (owner, from, complete) = match &self.file_checkpoint {
            Some((_, closing)) => (closing.owner.clone(), closing.from.clone(), closing.from.is_none()),
            None if is_file => {
                return Err(AuditError::Truncated("it has no closing checkpoint line".into()));
            }
            None => (owner, from.map(cursor_text), self.complete),
        };
        if complete {
            if let Some((at, stream_id, version)) = self
                .streams
                .iter()
                .filter_map(|(id, s)| s.anchored_at.map(|(at, v)| (at, id, v)))
                .min_by_key(|(at, _, _)| at_order(*at))
            {
                return Err(AuditError::Tampered {
                    at,
                    finding: Finding::MissingStart { stream_id: stream_id.clone(), version },
                });
            }
        }
        let mut heads: Vec<StreamHead> = self
            .streams
            .iter()
            .map(|(id, s)| StreamHead { stream_id: id.clone(), version: s.version, hash: s.hash })
            .collect();
        heads.sort_unstable_by(|a, b| a.stream_id.cmp(&b.stream_id));
        let mut access_heads: Vec<AccessHead> = self
            .accesses
            .iter()
            .map(|(id, (access_id, hash))| AccessHead { connection_id: *id, access_id: *access_id, hash: *hash })
            .collect();
        access_heads.sort_unstable_by_key(|h| h.connection_id);
        let mut checkpoint = Checkpoint {
            format: FORMAT.into(),
            taken_at: Utc::now(),
            owner,
            from,
            cursor: self.last_cursor.map(cursor_text),
            events: self.events,
            accesses: self.access_count,
            heads,
            access_heads,
            digest: ChainHash::GENESIS,
        };
        checkpoint.digest = checkpoint.compute_digest();
        if let Some((at, closing)) = &self.file_checkpoint {
            if closing.events != checkpoint.events || closing.accesses != checkpoint.accesses {
                return Err(AuditError::Truncated(format!(
                    "the checkpoint at {at} counts {} events and {} access records, the file holds {} and {}: \
                     lines were removed or added",
                    closing.events, closing.accesses, checkpoint.events, checkpoint.accesses
                )));
            }
            if !closing.digest_matches || closing.digest != checkpoint.digest {
                return Err(AuditError::Tampered {
                    at: *at,
                    finding: Finding::Checkpoint("the closing checkpoint does not match the records above it".into()),
                });
            }
        }
        let mut report = Report { events: self.events, accesses: self.access_count, ..Report::default() };
        if let (Some((streams, accesses)), Some(old)) = (&self.earlier, &self.earlier_scope) {
            // The kept checkpoint is the judge: what was read must cover its
            // owners and start no later than it did, whatever the file's own
            // closing line claims. The one narrower start allowed is an
            // export continuing from the checkpoint's own cursor: streams
            // it does not hold were not written since.
            if checkpoint.owner.is_some() && checkpoint.owner != old.owner {
                return Err(earlier_broken(format!(
                    "this covers {}, the earlier checkpoint covers {}: verify against a checkpoint of the same scope",
                    owner_text(&checkpoint.owner),
                    owner_text(&old.owner)
                )));
            }
            let continues = checkpoint.from.is_some() && checkpoint.from == old.cursor && checkpoint.from != old.from;
            if checkpoint.from.is_some() && checkpoint.from != old.from && !continues {
                return Err(earlier_broken(format!(
                    "this starts after {}, the earlier checkpoint covers from {} to {}",
                    checkpoint.from.as_deref().unwrap_or("the start"),
                    old.from.as_deref().unwrap_or("the start"),
                    old.cursor.as_deref().unwrap_or("the start")
                )));
            }
            for (stream_id, expected) in streams {
                if expected.confirmed {
                    report.confirmed += 1;
                    continue;
                }
                match self.streams.get(stream_id) {
                    Some(state) if state.version < expected.version => {
                        return Err(earlier_broken(format!(
                            "stream {stream_id} ends at version {}, but the earlier checkpoint has version {}: \
                             events were deleted",
                            state.version, expected.version
                        )))
                    }
                    Some(_) => report.not_covered += 1,
                    None if continues => report.not_covered += 1,
                    None => {
                        return Err(earlier_broken(format!(
                            "stream {stream_id} (at version {} in the earlier checkpoint) is missing",
                            expected.version
                        )))
                    }
                }
            }
            for (connection_id, expected) in accesses {
                if expected.confirmed {
                    report.confirmed += 1;
                    continue;
                }
                match self.accesses.get(connection_id) {
                    Some((last, _)) if (*last as u64) < expected.version => {
                        return Err(earlier_broken(format!(
                            "the access records of connection {connection_id} end at {last}, but the earlier \
                             checkpoint has {}: records were deleted",
                            expected.version
                        )))
                    }
                    None if !continues => {
                        return Err(earlier_broken(format!(
                            "the access records of connection {connection_id} are missing"
                        )))
                    }
                    _ => report.not_covered += 1,
                }
            }
        }
        Ok((checkpoint, report))
    }
}

fn owner_text(owner: &Option<String>) -> String {
    match owner {
        Some(owner) => format!("owner {owner} only"),
        None => "every owner".to_owned(),
    }
}

/// What a clean pass covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Events verified.
    pub events: u64,
    /// Access records verified.
    pub accesses: u64,
    /// Heads of an earlier checkpoint found unchanged.
    pub confirmed: u64,
    /// Heads of an earlier checkpoint outside what was read (another
    /// owner's, or before an export's start).
    pub not_covered: u64,
}

fn earlier_broken(message: String) -> AuditError {
    AuditError::Tampered { at: At::EarlierCheckpoint, finding: Finding::Checkpoint(message) }
}

fn at_order(at: At) -> i64 {
    match at {
        At::Line(n) => n as i64,
        At::Position(p) => p,
        At::AccessId(id) => id,
        At::EarlierCheckpoint => i64::MAX,
    }
}

/// `TX:POSITION`.
pub fn cursor_text(cursor: LogCursor) -> String {
    format!("{}:{}", cursor.transaction_id, cursor.position)
}

fn describe(event: &AuditEvent<'_>) -> String {
    format!(
        "event {} (stream {} version {}, position {})",
        event.event_id, event.stream_id, event.stream_version, event.position
    )
}

impl Sink for Verifier {
    fn event(&mut self, at: At, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        let tampered = |finding| AuditError::Tampered { at, finding };
        let (Some(previous), Some(hash)) = (event.previous_hash, event.hash) else {
            return Err(tampered(Finding::Unchained { what: describe(event) }));
        };
        let cursor = event.cursor();
        if let Some(last) = self.last_cursor {
            if cursor <= last {
                return Err(tampered(Finding::OutOfOrder { what: describe(event), after: cursor_text(last) }));
            }
        }
        match self.streams.get(event.stream_id) {
            Some(state) => {
                if event.stream_version <= state.version {
                    return Err(tampered(Finding::OutOfOrder {
                        what: describe(event),
                        after: format!("version {}", state.version),
                    }));
                }
                if event.stream_version > state.version + 1 {
                    return Err(tampered(Finding::Gap {
                        stream_id: event.stream_id.to_owned(),
                        last: state.version,
                        found: event.stream_version,
                    }));
                }
                if previous != state.hash {
                    return Err(tampered(Finding::BrokenLink { what: describe(event) }));
                }
            }
            None if event.stream_version == 1 && previous != ChainHash::GENESIS => {
                return Err(tampered(Finding::BrokenLink { what: describe(event) }));
            }
            None if event.stream_version > 1 && self.complete => {
                return Err(tampered(Finding::MissingStart {
                    stream_id: event.stream_id.to_owned(),
                    version: event.stream_version,
                }));
            }
            None => {}
        }
        if event.expected_hash(&previous) != hash {
            return Err(tampered(Finding::Edited { what: describe(event) }));
        }
        if let Some((streams, _)) = &mut self.earlier {
            if let Some(expected) = streams.get_mut(event.stream_id) {
                let passes = (event.stream_version == expected.version && hash == expected.hash)
                    || (event.stream_version == expected.version + 1 && previous == expected.hash);
                let differs = event.stream_version == expected.version && hash != expected.hash
                    || event.stream_version == expected.version + 1 && previous != expected.hash && !expected.confirmed;
                if differs {
                    return Err(tampered(Finding::Checkpoint(format!(
                        "stream {} differs from the earlier checkpoint at version {}: history before it was rewritten",
                        event.stream_id, expected.version
                    ))));
                }
                expected.confirmed |= passes;
            }
        }
        if !self.streams.contains_key(event.stream_id) {
            self.streams.insert(
                event.stream_id.to_owned(),
                StreamState {
                    version: 0,
                    hash: previous,
                    anchored_at: (event.stream_version > 1).then_some((at, event.stream_version)),
                },
            );
        }
        let state = self.streams.get_mut(event.stream_id).expect("inserted above");
        state.version = event.stream_version;
        state.hash = hash;
        self.last_cursor = Some(cursor);
        self.events += 1;
        Ok(())
    }

    fn access(&mut self, at: At, access: &AccessRecord) -> Result<(), AuditError> {
        let what = || format!("access record {} (connection {})", access.access_id, access.connection_id);
        let tampered = |finding| AuditError::Tampered { at, finding };
        let (Some(previous), Some(hash)) = (access.previous_hash, access.hash) else {
            return Err(tampered(Finding::Unchained { what: what() }));
        };
        let last = self.accesses.get(&access.connection_id).copied();
        match last {
            Some((last_id, _)) if access.access_id <= last_id => {
                return Err(tampered(Finding::OutOfOrder { what: what(), after: format!("access record {last_id}") }))
            }
            Some((_, last_hash)) if previous != last_hash => {
                return Err(tampered(Finding::BrokenLink { what: what() }))
            }
            None if previous != ChainHash::GENESIS => return Err(tampered(Finding::BrokenLink { what: what() })),
            _ => {}
        }
        if access.expected_hash(&previous) != hash {
            return Err(tampered(Finding::Edited { what: what() }));
        }
        if let Some((_, accesses)) = &mut self.earlier {
            if let Some(expected) = accesses.get_mut(&access.connection_id) {
                if access.access_id as u64 == expected.version {
                    if hash != expected.hash {
                        return Err(tampered(Finding::Checkpoint(format!(
                            "the access records of connection {} differ from the earlier checkpoint",
                            access.connection_id
                        ))));
                    }
                    expected.confirmed = true;
                }
            }
        }
        self.accesses.insert(access.connection_id, (access.access_id, hash));
        self.access_count += 1;
        Ok(())
    }

    fn checkpoint(&mut self, at: At, checkpoint: &Checkpoint) -> Result<(), AuditError> {
        self.file_checkpoint = Some((
            at,
            Closing {
                owner: checkpoint.owner.clone(),
                from: checkpoint.from.clone(),
                events: checkpoint.events,
                accesses: checkpoint.accesses,
                digest: checkpoint.digest,
                digest_matches: checkpoint.digest == checkpoint.compute_digest(),
            },
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use connections_store::RecordedEvent;
    use serde_json::json;

    use super::*;

    /// A chained stream of `n` events, positions interleaved with another stream's.
    fn stream(stream_id: &str, n: u64, first_position: i64) -> Vec<RecordedEvent> {
        let mut previous = ChainHash::GENESIS;
        (1..=n)
            .map(|version| {
                let mut event = RecordedEvent {
                    position: first_position + 2 * version as i64,
                    transaction_id: 100 + version + first_position as u64,
                    event_id: Uuid::from_u128(u128::from(version) + first_position as u128 * 1000),
                    stream_id: stream_id.into(),
                    stream_version: version,
                    event_type: "test_event".into(),
                    schema_version: 1,
                    data: json!({"n": version, "b": [1, {"z": null, "a": "x"}]}),
                    metadata: json!({"actor": "alice"}),
                    recorded_at: Utc.timestamp_opt(1_700_000_000 + version as i64, 0).single().expect("time"),
                    previous_hash: Some(previous),
                    hash: None,
                };
                let hash = connections_store::chain::recorded_event_hash(&previous, &event);
                event.hash = Some(hash);
                previous = hash;
                event
            })
            .collect()
    }

    fn run(verifier: &mut Verifier, events: &[RecordedEvent]) -> Result<(), AuditError> {
        for event in events {
            verifier.event(At::Position(event.position), &AuditEvent::from_recorded(event))?;
        }
        Ok(())
    }

    fn finding(result: Result<(), AuditError>) -> (At, Finding) {
        match result {
            Err(AuditError::Tampered { at, finding }) => (at, finding),
            other => panic!("expected tampering, got {other:?}"),
        }
    }

    fn interleaved() -> Vec<RecordedEvent> {
        let mut events = [stream("s/a", 4, 0), stream("s/b", 3, 1)].concat();
        events.sort_by_key(|e| e.cursor());
        events
    }

    #[test]
    fn an_untouched_history_verifies_and_its_checkpoint_names_every_head() {
        let mut verifier = Verifier::complete();
        run(&mut verifier, &interleaved()).expect("clean");
        let (checkpoint, report) = verifier.finish(None, None, false).expect("finish");
        assert_eq!(report.events, 7);
        let heads: Vec<(&str, u64)> = checkpoint.heads.iter().map(|h| (h.stream_id.as_str(), h.version)).collect();
        assert_eq!(heads, [("s/a", 4), ("s/b", 3)]);
        assert_eq!(checkpoint.digest, checkpoint.compute_digest());
    }

    #[test]
    fn each_kind_of_tampering_is_named_where_it_happened() {
        let mut edited = interleaved();
        edited[2].data = json!({"n": 99});
        let at = edited[2].position;
        assert!(
            matches!(finding(run(&mut Verifier::complete(), &edited)), (At::Position(p), Finding::Edited { .. }) if p == at)
        );

        let mut deleted = interleaved();
        let gone = deleted.iter().position(|e| e.stream_id == "s/a" && e.stream_version == 2).expect("present");
        deleted.remove(gone);
        let (_, found) = finding(run(&mut Verifier::complete(), &deleted));
        assert!(matches!(found, Finding::Gap { last: 1, found: 3, .. }), "{found:?}");

        let mut reordered = interleaved();
        reordered.swap(0, 1);
        assert!(matches!(finding(run(&mut Verifier::complete(), &reordered)).1, Finding::OutOfOrder { .. }));

        let mut relinked = interleaved();
        relinked[3].previous_hash = Some(ChainHash([1; 32]));
        assert!(matches!(finding(run(&mut Verifier::complete(), &relinked)).1, Finding::BrokenLink { .. }));

        let headless: Vec<RecordedEvent> = interleaved().into_iter().filter(|e| e.stream_version > 1).collect();
        assert!(matches!(finding(run(&mut Verifier::complete(), &headless)).1, Finding::MissingStart { .. }));
    }

    #[test]
    fn an_earlier_checkpoint_catches_a_stream_cut_back_at_its_end() {
        let mut first = Verifier::complete();
        run(&mut first, &interleaved()).expect("clean");
        let (earlier, _) = first.finish(None, None, false).expect("finish");

        let cut: Vec<RecordedEvent> =
            interleaved().into_iter().filter(|e| !(e.stream_id == "s/a" && e.stream_version == 4)).collect();
        let mut alone = Verifier::complete();
        run(&mut alone, &cut).expect("the chains alone cannot see a cut end");
        alone.finish(None, None, false).expect("clean without a checkpoint");

        let mut against = Verifier::complete().against(&earlier);
        run(&mut against, &cut).expect("chains intact");
        let error = against.finish(None, None, false).expect_err("the checkpoint sees the cut");
        assert!(error.to_string().contains("s/a ends at version 3"), "{error}");

        let mut later = Verifier::complete().against(&earlier);
        run(&mut later, &[interleaved(), stream("s/c", 2, 50)].concat()).expect("clean");
        let (_, report) = later.finish(None, None, false).expect("a longer history still holds the checkpoint");
        assert_eq!(report.confirmed, 2);
    }
}
