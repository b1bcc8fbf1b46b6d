//! This instance's copies of small streams' whole states, each tagged with
//! the stream version it folds, so that a command on a stream it wrote a
//! moment ago reads one index entry of the log instead of its state.
//!
//! Why it is exact: the log is append-only and a stream's versions are
//! unique, so the events up to version `v` never change once committed, and
//! neither does their fold. An entry is only ever made from a committed
//! version (one read from the log by a transaction that has written nothing
//! to the stream, or one this instance saw commit: never one read in a
//! commit group's transaction, which holds its other members' writes before
//! they commit, and may roll them back), and it
//! is used only when the log's version of the stream, read under the
//! stream's lock in the command's transaction, is the entry's. Any other
//! writer (another instance, a resolve binding the default, a stream
//! written before this cache existed) moves the version and the entry is
//! not used. An entry is never wrong; at worst it is out of date, and then
//! the command loads the state as if there were no cache.
//!
//! A stream longer than [`READ_WHOLE_UP_TO`] is only marked as such: it is
//! loaded from its keyed copy in one round trip, as without the cache.

use std::sync::Mutex;

use connections_domain::OwnerService;

use crate::log::{StreamId, StreamVersion};
use crate::recent::Recent;
use crate::stream_state::READ_WHOLE_UP_TO;

/// How many streams' states an instance keeps.
pub const CACHED_STREAMS: usize = 8192;

/// The largest state kept (connections plus bindings), so that the cache
/// holds at most a few tens of megabytes whatever the streams hold.
pub const CACHED_ENTRIES_PER_STREAM: usize = 64;

/// Whole states of streams by the version they fold.
#[derive(Debug)]
pub struct StateCache {
    entries: Mutex<Recent<StreamId, Entry>>,
}

#[derive(Debug, Clone)]
enum Entry {
    /// The whole state at `version`.
    State { version: StreamVersion, last_position: i64, state: OwnerService },
    /// The stream is longer than [`READ_WHOLE_UP_TO`]: it is loaded from
    /// its keyed copy, without asking the log for its version first. True
    /// for good (the log only grows).
    Long,
}

impl Default for StateCache {
    fn default() -> Self {
        Self::new(CACHED_STREAMS)
    }
}

impl StateCache {
    /// A cache of at most `capacity` streams, dropping those used least
    /// recently.
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(Recent::new(capacity)) }
    }

    /// The whole state of `stream_id` at `version`, with the position of
    /// its last event, if this instance has it.
    pub fn get(&self, stream_id: &StreamId, version: StreamVersion) -> Option<(OwnerService, i64)> {
        let mut entries = self.entries.lock().expect("not poisoned");
        match entries.get(stream_id)? {
            Entry::State { version: kept, last_position, state } if *kept == version => {
                Some((state.clone(), *last_position))
            }
            _ => None,
        }
    }

    /// Whether `stream_id` is known to be longer than [`READ_WHOLE_UP_TO`].
    pub fn is_long(&self, stream_id: &StreamId) -> bool {
        matches!(self.entries.lock().expect("not poisoned").get(stream_id), Some(Entry::Long))
    }

    /// Keeps `state` as the whole state of `stream_id` at `version`, whose
    /// last event is at `last_position`. Call it only for a committed
    /// version. A state too large to keep, or older than the one kept, is
    /// not kept.
    pub fn remember(&self, stream_id: &StreamId, version: StreamVersion, last_position: i64, state: &OwnerService) {
        if version.0 > READ_WHOLE_UP_TO {
            return self.insert(stream_id, Entry::Long);
        }
        if state.connections.len() + state.bindings.len() > CACHED_ENTRIES_PER_STREAM {
            return self.forget(stream_id);
        }
        if let Some(Entry::State { version: kept, .. }) = self.entries.lock().expect("not poisoned").get(stream_id) {
            if *kept >= version {
                return;
            }
        }
        self.insert(stream_id, Entry::State { version, last_position, state: state.clone() });
    }

    /// Notes that `stream_id` is longer than [`READ_WHOLE_UP_TO`].
    pub fn mark_long(&self, stream_id: &StreamId) {
        self.insert(stream_id, Entry::Long);
    }

    fn insert(&self, stream_id: &StreamId, entry: Entry) {
        self.entries.lock().expect("not poisoned").insert(stream_id.clone(), entry);
    }

    /// Drops what is kept of `stream_id`.
    fn forget(&self, stream_id: &StreamId) {
        self.entries.lock().expect("not poisoned").remove(stream_id);
    }
}
