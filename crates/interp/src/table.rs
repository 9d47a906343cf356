//! The state table: per-flow entries, a capacity, and the full-table policy.

use std::collections::VecDeque;

use flowstate_lang::ir::{FullPolicy, StateId};
use rustc_hash::FxHashMap;

use crate::key::Key;

/// One flow's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub state: StateId,
    pub registers: Vec<i64>,
    /// `now` when the entry was created (or last reset by a timeout).
    pub created: i64,
    /// `now` of the last packet that wrote the entry.
    pub last_seen: i64,
}

/// Why an entry could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// Entries by key, plus (under `EvictLeastRecent`) a queue of writes in
/// order so that eviction is amortised `O(1)`. Recency is the order of
/// writes. The queue is lazy: a write appends `(write number, key)` and
/// leaves the key's older records in place; eviction skips records whose
/// number is no longer the key's latest. It is compacted when it grows past
/// twice the live entries, so memory stays proportional to the table.
#[derive(Debug, Clone)]
pub struct StateTable {
    entries: FxHashMap<Key, (Entry, u64)>,
    writes: VecDeque<(u64, Key)>,
    next_write: u64,
    capacity: usize,
    policy: FullPolicy,
}

impl StateTable {
    pub fn new(capacity: u32, policy: FullPolicy) -> StateTable {
        StateTable {
            entries: FxHashMap::default(),
            writes: VecDeque::new(),
            next_write: 0,
            capacity: capacity as usize,
            policy,
        }
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key).map(|(e, _)| e)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Write `entry` under `key`, making room by the table's policy: a new
    /// key that finds the table full evicts the least recently seen flow
    /// (`evict`) or is refused (`refuse`). Returns the evicted keys (at
    /// most one).
    pub fn insert(&mut self, key: Key, entry: Entry) -> Result<Vec<Key>, TableFull> {
        self.insert_evicting(key, entry, &[])
    }

    /// [`StateTable::insert`], except that a new key first evicts
    /// `victims`: flows another execution chose to evict when it made room
    /// for this one, which the full-table promise allows (see the crate
    /// doc). Victims that are absent, or are `key` itself, are left alone;
    /// if the table is still full afterwards, its own policy applies.
    /// Returns every key evicted, in order.
    pub fn insert_evicting(
        &mut self,
        key: Key,
        entry: Entry,
        victims: &[Key],
    ) -> Result<Vec<Key>, TableFull> {
        let write = self.next_write;
        self.next_write += 1;
        if let Some((old, order)) = self.entries.get_mut(&key) {
            *old = entry;
            *order = write;
            self.record_write(write, key);
            return Ok(Vec::new());
        }
        let mut evicted: Vec<Key> = victims
            .iter()
            .filter(|&&victim| victim != key && self.evict(&victim).is_some())
            .copied()
            .collect();
        if self.entries.len() >= self.capacity {
            match self.policy {
                FullPolicy::RefuseNew => return Err(TableFull),
                FullPolicy::EvictLeastRecent => {
                    let victim = self.least_recent().ok_or(TableFull)?;
                    self.entries.remove(&victim);
                    evicted.push(victim);
                }
            }
        }
        self.entries.insert(key, (entry, write));
        self.record_write(write, key);
        Ok(evicted)
    }

    /// Evict the flow under `key`, as the full-table policy does: it reads
    /// as new afterwards. Returns its entry, if it was present.
    pub fn evict(&mut self, key: &Key) -> Option<Entry> {
        // The write queue's record of the key goes stale and is skipped.
        self.remove(key)
    }

    fn record_write(&mut self, write: u64, key: Key) {
        if self.policy != FullPolicy::EvictLeastRecent {
            return;
        }
        self.writes.push_back((write, key));
        if self.writes.len() > 2 * self.entries.len().max(4096) {
            let entries = &self.entries;
            self.writes
                .retain(|(w, k)| entries.get(k).is_some_and(|(_, latest)| latest == w));
        }
    }

    /// Pop write records until one is the latest write of a live entry.
    fn least_recent(&mut self) -> Option<Key> {
        while let Some((write, key)) = self.writes.pop_front() {
            if self
                .entries
                .get(&key)
                .is_some_and(|(_, latest)| *latest == write)
            {
                return Some(key);
            }
        }
        None
    }

    pub fn remove(&mut self, key: &Key) -> Option<Entry> {
        self.entries.remove(key).map(|(entry, _)| entry)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.writes.clear();
    }

    /// All entries, sorted by key (a stable order for printing and for
    /// comparing with the kernel's table).
    pub fn sorted(&self) -> Vec<(Key, &Entry)> {
        let mut all: Vec<(Key, &Entry)> = self.entries.iter().map(|(k, (e, _))| (*k, e)).collect();
        all.sort_by_key(|(key, _)| *key);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key::from_bytes(&[n]).unwrap()
    }

    fn entry(t: i64) -> Entry {
        Entry {
            state: StateId(1),
            registers: vec![],
            created: t,
            last_seen: t,
        }
    }

    #[test]
    fn evicts_least_recently_written() {
        let mut t = StateTable::new(2, FullPolicy::EvictLeastRecent);
        t.insert(key(1), entry(1)).unwrap();
        t.insert(key(2), entry(2)).unwrap();
        t.insert(key(1), entry(3)).unwrap(); // key 1 is now the most recent
        assert_eq!(t.insert(key(3), entry(4)), Ok(vec![key(2)]));
        assert!(t.get(&key(1)).is_some() && t.get(&key(3)).is_some());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn refuses_new_keys_when_full_but_updates_existing() {
        let mut t = StateTable::new(1, FullPolicy::RefuseNew);
        t.insert(key(1), entry(1)).unwrap();
        assert_eq!(t.insert(key(2), entry(2)), Err(TableFull));
        assert_eq!(t.insert(key(1), entry(3)), Ok(vec![]));
        assert_eq!(t.get(&key(1)).unwrap().last_seen, 3);
    }

    #[test]
    fn remove_keeps_index_consistent() {
        let mut t = StateTable::new(2, FullPolicy::EvictLeastRecent);
        t.insert(key(1), entry(1)).unwrap();
        t.insert(key(2), entry(2)).unwrap();
        t.remove(&key(1));
        assert_eq!(t.insert(key(3), entry(3)), Ok(vec![]));
        assert_eq!(t.insert(key(4), entry(4)), Ok(vec![key(2)]));
    }

    #[test]
    fn chosen_victims_make_room_instead_of_the_least_recent() {
        let mut t = StateTable::new(3, FullPolicy::EvictLeastRecent);
        for n in 1..=3 {
            t.insert(key(n), entry(i64::from(n))).unwrap();
        }
        // Another execution evicted 3 and 2 (not 1, the least recent).
        let evicted = t.insert_evicting(key(4), entry(4), &[key(3), key(2)]);
        assert_eq!(evicted, Ok(vec![key(3), key(2)]));
        assert_eq!(t.len(), 2);
        assert!(t.get(&key(1)).is_some() && t.get(&key(4)).is_some());
        // Victims apply to new keys only, never to the key written.
        assert_eq!(t.insert_evicting(key(1), entry(5), &[key(4)]), Ok(vec![]));
        assert_eq!(t.insert_evicting(key(5), entry(6), &[key(5)]), Ok(vec![]));
        assert_eq!(t.len(), 3);
        // The recency order goes on from there: 4 was written before 1 was
        // rewritten and 5 inserted, so 4 is now the least recent.
        assert_eq!(t.insert(key(6), entry(7)), Ok(vec![key(4)]));
    }
}
