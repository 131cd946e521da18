//! The in-memory store: the whole contract of [`Store`] in process memory,
//! durable only as long as the process. For tests of the core (the writer's
//! group commit, the authority) and for tools that need no data dir.
//!
//! One mutex guards everything: a commit is atomic because it is applied
//! whole under the lock, and nothing in it can fail half-way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{
    Committed, IdempotencyRecord, Loaded, Recovered, Store, StoreError, Tombstone, WriteBatch,
};
use crate::domain::{CatalogSpec, EventRecord, PendingRecord, StateRecord, UnixNanos, Wording};

/// Everything the store keeps under its one lock.
#[derive(Debug)]
struct Contents {
    catalog: Option<CatalogSpec>,
    next_sequence: u64,
    erasure_key: [u8; 32],
    /// Contact → (its states in first-recorded order, its event sequences).
    contacts: BTreeMap<String, (Vec<StateRecord>, Vec<u64>)>,
    events: BTreeMap<u64, EventRecord>,
    idempotency: HashMap<String, IdempotencyRecord>,
    idempotency_by_time: BTreeSet<(UnixNanos, String)>,
    erasures: BTreeMap<[u8; 32], (UnixNanos, String)>,
    /// (consent, version) → wording.
    wordings: BTreeMap<(String, u32), Wording>,
    /// (contact, consent) → its grants waiting for the person.
    pending: BTreeMap<(String, String), PendingRecord>,
}

/// The in-memory store. Cheap to create; share it with `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    contents: Mutex<Contents>,
}

impl MemoryStore {
    /// An empty store with a fresh random erasure key.
    pub fn new() -> Result<Self, StoreError> {
        let mut erasure_key = [0u8; 32];
        getrandom::fill(&mut erasure_key)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        Ok(Self {
            contents: Mutex::new(Contents {
                catalog: None,
                next_sequence: 1,
                erasure_key,
                contacts: BTreeMap::new(),
                events: BTreeMap::new(),
                idempotency: HashMap::new(),
                idempotency_by_time: BTreeSet::new(),
                erasures: BTreeMap::new(),
                wordings: BTreeMap::new(),
                pending: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Contents> {
        // A panic while holding the lock can only come from a bug in this
        // file; the contents are still whole (every mutation is a single
        // insert or remove), so carry on with them.
        self.contents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn recover(&self) -> Result<Recovered, StoreError> {
        let c = self.lock();
        let last_event = c.events.values().next_back().map_or(0, |e| e.recorded_at);
        let last_erasure = c.erasures.values().map(|(at, _)| *at).max().unwrap_or(0);
        let mut latest: BTreeMap<&str, &Wording> = BTreeMap::new();
        for ((consent, _), w) in &c.wordings {
            latest.insert(consent, w);
        }
        let last_wording = latest.values().map(|w| w.in_force_from).max().unwrap_or(0);
        Ok(Recovered {
            catalog: c.catalog.clone(),
            next_sequence: c.next_sequence,
            contacts: c.contacts.len() as u64,
            erasure_key: c.erasure_key,
            erasures: c.erasures.iter().map(|(h, (at, _))| (*h, *at)).collect(),
            wordings: latest.into_values().cloned().collect(),
            last_recorded_at: last_event.max(last_erasure).max(last_wording),
            catalog_version: 0,
        })
    }

    fn load_states(&self, sink: &mut dyn FnMut(&str, &str, Loaded)) -> Result<u64, StoreError> {
        let c = self.lock();
        let mut n = 0;
        for (contact, (states, _)) in &c.contacts {
            for s in states {
                sink(contact, s.consent.as_str(), Loaded::of(s));
                n += 1;
            }
        }
        for ((contact, consent), p) in &c.pending {
            sink(contact, consent, Loaded::Pending(*p));
        }
        Ok(n)
    }

    fn contact_pending(&self, contact: &str) -> Result<Vec<(String, PendingRecord)>, StoreError> {
        let c = self.lock();
        Ok(c.pending
            .range((contact.to_owned(), String::new())..)
            .take_while(|((k, _), _)| k == contact)
            .map(|((_, consent), p)| (consent.clone(), *p))
            .collect())
    }

    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.lock().idempotency.get(key).copied())
    }

    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
        Ok(self
            .lock()
            .contacts
            .get(contact)
            .map(|(states, _)| states.clone())
            .unwrap_or_default())
    }

    fn history_page(
        &self,
        contact: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let c = self.lock();
        let Some((_, sequences)) = c.contacts.get(contact) else {
            return Ok(Vec::new());
        };
        // Sequences are appended in increasing order.
        let from = sequences.partition_point(|&s| s <= after);
        sequences[from..]
            .iter()
            .take(limit)
            .map(|s| {
                c.events.get(s).cloned().ok_or_else(|| {
                    StoreError::corrupt("events", format!("sequence {s} is missing"))
                })
            })
            .collect()
    }

    fn wordings(&self, consent: Option<&str>) -> Result<Vec<Wording>, StoreError> {
        let c = self.lock();
        Ok(c.wordings
            .iter()
            .filter(|((id, _), _)| consent.is_none_or(|want| id == want))
            .map(|(_, w)| w.clone())
            .collect())
    }

    fn commit(&self, batch: &WriteBatch) -> Result<Committed, StoreError> {
        let mut c = self.lock();
        c.next_sequence = batch.next_sequence;
        if let Some(catalog) = &batch.catalog {
            c.catalog = Some(catalog.clone());
        }
        for w in &batch.wordings {
            c.wordings
                .insert((w.consent.to_string(), w.version), w.clone());
        }
        for e in &batch.events {
            let (states, sequences) = c.contacts.entry(e.contact.to_string()).or_default();
            sequences.push(e.sequence);
            if e.applied {
                let state = e.state();
                match states.iter_mut().find(|s| s.consent == e.consent) {
                    Some(slot) => *slot = state,
                    None => states.push(state),
                }
            }
            c.events.insert(e.sequence, e.clone());
            let key = (e.contact.to_string(), e.consent.to_string());
            match PendingRecord::after(c.pending.get(&key).copied(), e) {
                Some(p) => c.pending.insert(key, p),
                None => c.pending.remove(&key),
            };
        }
        for (key, r) in &batch.idempotency {
            c.idempotency.insert(key.clone(), *r);
            c.idempotency_by_time.insert((r.recorded_at, key.clone()));
        }
        // One writer: its numbering is the store's.
        Ok(batch.as_numbered())
    }

    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        let mut c = self.lock();
        let held = c.contacts.remove(contact);
        c.pending.retain(|(k, _), _| k != contact);
        if let Some((_, sequences)) = &held {
            for s in sequences {
                let key = c.events.remove(s).and_then(|e| e.idempotency_key);
                if let Some(r) = key.as_ref().and_then(|k| c.idempotency.remove(k)) {
                    c.idempotency_by_time
                        .remove(&(r.recorded_at, key.expect("removed by this key")));
                }
            }
        }
        c.erasures.insert(
            tombstone.hash,
            (tombstone.erased_at, tombstone.reason.clone()),
        );
        Ok(held.is_some())
    }

    fn purge_erased(&self) -> Result<bool, StoreError> {
        // Erased records are dropped from the maps at once; no file exists.
        Ok(false)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let c = self.lock();
        Ok(c.events
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    fn idempotency_keys(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, IdempotencyRecord)>, StoreError> {
        let c = self.lock();
        let mut keys: Vec<(String, IdempotencyRecord)> = c
            .idempotency
            .iter()
            .filter(|(k, _)| k.as_str() > after)
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.truncate(limit);
        Ok(keys)
    }

    fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        Ok(self
            .lock()
            .erasures
            .iter()
            .map(|(hash, (erased_at, reason))| Tombstone {
                hash: *hash,
                erased_at: *erased_at,
                reason: reason.clone(),
            })
            .collect())
    }

    fn adopt(
        &self,
        erasure_key: &[u8; 32],
        tombstones: &[Tombstone],
        _link_keys: &[String],
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        c.erasure_key = *erasure_key;
        for t in tombstones {
            c.erasures.insert(t.hash, (t.erased_at, t.reason.clone()));
        }
        Ok(())
    }

    fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError> {
        let mut c = self.lock();
        let old: Vec<(UnixNanos, String)> = c
            .idempotency_by_time
            .iter()
            .take_while(|(at, _)| *at < before)
            .take(max)
            .cloned()
            .collect();
        for entry in &old {
            c.idempotency_by_time.remove(entry);
            c.idempotency.remove(&entry.1);
        }
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryStore;
    use crate::store::Store;
    use crate::store::conformance::{Fixture, conformance_suite};

    /// Reopen hands back the same store: the process never stopped.
    struct Memory(Option<Arc<MemoryStore>>);

    impl Fixture for Memory {
        fn fresh(&mut self) -> Arc<dyn Store> {
            let store = Arc::new(MemoryStore::new().unwrap());
            self.0 = Some(store.clone());
            store
        }

        fn reopen(&mut self) -> Arc<dyn Store> {
            self.0.clone().expect("fresh first")
        }
    }

    conformance_suite!(Memory(None));
}
