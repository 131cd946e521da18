//! The in-memory index: contact → the few states it holds, by interned
//! consent. Every CanSend is answered from here, without touching the disk.
//!
//! Only the writer mutates it, and only after the store has committed, so a
//! reader never sees a decision that could still be lost. Lookups are
//! synchronous and hold a shard read lock only for the few nanoseconds of
//! [`verdict`]: no lock is ever held across an `.await`.

use compact_str::CompactString;
use dashmap::DashMap;
use smallvec::SmallVec;

use crate::domain::{ConsentIdx, HeldState, Verdict, verdict};

/// One inline state covers the common contact without a heap allocation.
type States = SmallVec<[HeldState; 1]>;

/// Contact → its states, sharded for concurrent readers.
pub struct Index {
    map: DashMap<CompactString, States, foldhash::fast::RandomState>,
}

impl Default for Index {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Index {
    /// An empty index with room for `contacts` contacts.
    pub fn with_capacity(contacts: usize) -> Self {
        Self {
            map: DashMap::with_capacity_and_hasher(
                contacts,
                foldhash::fast::RandomState::default(),
            ),
        }
    }

    /// Decides CanSend for `contact` over a precomputed covering set.
    pub fn verdict(&self, contact: &str, cover: &[ConsentIdx]) -> Verdict {
        match self.map.get(contact) {
            Some(states) => verdict(&states, cover),
            None => verdict(&[], cover),
        }
    }

    /// The state held for (contact, consent), if any.
    pub fn get(&self, contact: &str, consent: ConsentIdx) -> Option<HeldState> {
        self.map
            .get(contact)
            .and_then(|s| s.iter().find(|h| h.consent == consent).copied())
    }

    /// Whether the contact holds any state.
    pub fn holds(&self, contact: &str) -> bool {
        self.map.contains_key(contact)
    }

    /// Sets the state of (contact, state.consent), returning the one it replaced.
    pub fn put(&self, contact: &str, state: HeldState) -> Option<HeldState> {
        if let Some(mut states) = self.map.get_mut(contact) {
            if let Some(slot) = states.iter_mut().find(|h| h.consent == state.consent) {
                return Some(std::mem::replace(slot, state));
            }
            states.push(state);
            return None;
        }
        let mut states = States::new();
        states.push(state);
        self.map.insert(CompactString::from(contact), states);
        None
    }

    /// Forgets a contact, returning the states it held.
    pub fn remove(&self, contact: &str) -> Option<Vec<HeldState>> {
        self.map
            .remove(contact)
            .map(|(_, states)| states.into_vec())
    }

    /// A contact whose id satisfies `matches`, if any (a full scan).
    pub fn find_contact(&self, mut matches: impl FnMut(&str) -> bool) -> Option<String> {
        self.map
            .iter()
            .find(|entry| matches(entry.key()))
            .map(|entry| entry.key().to_string())
    }

    /// Number of contacts holding at least one state.
    pub fn contacts(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Action;

    #[test]
    fn put_replaces_per_consent_and_decide_reads_it() {
        let index = Index::default();
        let g = |consent, at| HeldState {
            occurred_at: at,
            consent,
            action: Action::Grant,
        };
        assert_eq!(index.verdict("x", &[0]), Verdict::NoConsent);
        assert_eq!(index.put("x", g(0, 1)), None);
        assert_eq!(index.put("x", g(1, 2)), None);
        assert_eq!(index.put("x", g(0, 3)), Some(g(0, 1)));
        assert_eq!(index.get("x", 0), Some(g(0, 3)));
        assert_eq!(
            index.verdict("x", &[1, 0]),
            Verdict::Granted { by: 0, at: 3 }
        );
        assert_eq!(index.contacts(), 1);
        assert_eq!(std::mem::size_of::<HeldState>(), 16);
    }
}
