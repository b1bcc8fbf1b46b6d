//! Transactions that write but never append to the log: a reader of the
//! log's gap-safe order need not wait for them (see [`EventLog::follow`]).
//!
//! The gap-safe reader holds back every commit behind the oldest running
//! transaction that has an id, because that one might still append an event
//! that sorts before it. The projector's batches are such transactions (they
//! write the read models) and, under load, one is nearly always running:
//! every commit would wait for the batch in flight to end. A transaction
//! registered here is one that this process knows will never insert into
//! `events`; the reader skips it when it computes its horizon.
//!
//! Only the absence of a registration is ever relied on for safety: a
//! registered id is skipped, an unregistered one (not yet registered, or
//! registered by another instance) is waited for as before. So registering
//! late or unregistering early only costs a wait, never an event.
//!
//! [`EventLog::follow`]: crate::EventLog::follow

use std::sync::{Arc, Mutex};

/// This process's running transactions that never append events, by id.
#[derive(Debug, Clone, Default)]
pub struct Bystanders {
    ids: Arc<Mutex<Vec<u64>>>,
}

impl Bystanders {
    /// Registers transaction `id` (its top-level `pg_current_xact_id()`)
    /// until the returned guard is dropped. The caller promises that the
    /// transaction does not append to the log.
    pub fn register(&self, id: u64) -> Registered {
        self.lock().push(id);
        Registered { bystanders: self.clone(), id }
    }

    /// The registered ids, for [`EventLog::follow`](crate::EventLog::follow).
    pub fn ids(&self) -> Vec<i64> {
        self.lock().iter().map(|&id| id as i64).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A registration; dropping it (once the transaction has ended, or earlier:
/// only a wait is lost) removes it.
#[derive(Debug)]
pub struct Registered {
    bystanders: Bystanders,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut ids = self.bystanders.lock();
        if let Some(index) = ids.iter().position(|&id| id == self.id) {
            ids.swap_remove(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_lasts_as_long_as_its_guard() {
        let bystanders = Bystanders::default();
        let first = bystanders.register(7);
        let second = bystanders.clone().register(9);
        assert_eq!(bystanders.ids(), vec![7, 9]);
        drop(first);
        assert_eq!(bystanders.ids(), vec![9]);
        drop(second);
        assert!(bystanders.ids().is_empty());
    }
}
