//! The in-memory store: the whole contract of [`Store`] in process memory,
//! durable only as long as the process. For tests of the core (the writer's
//! group commit, the authority) and for tools that need no data dir.
//!
//! One mutex guards everything: a commit is atomic because it is applied
//! whole under the lock, and nothing in it can fail half-way (what could,
//! a wording version naming a second text, is checked before anything
//! moves).
//!
//! Several writers in one process may share it ([`SharedStore`]): a second
//! mutex is the commit lock, held from the catch-up read to the end of the
//! commit, exactly as PostgreSQL's `meta` row lock is; reads take only the
//! contents' lock, so a writer ruling under the commit lock can still read.
//! The simulation test drives several nodes over one of these.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{
    CatalogChange, Changes, Committed, ContactStates, Cursor, IdempotencyRecord, Loaded, Recovered,
    SharedStore, Store, StoreError, Tombstone, Write, WriteBatch,
};
use crate::domain::{CatalogSpec, EventRecord, PendingRecord, StateRecord, UnixNanos, Wording};

/// Everything the store keeps under its one lock.
#[derive(Debug)]
struct Contents {
    catalog: Option<CatalogSpec>,
    /// Every catalog applied, with when it came into force.
    catalogs: Vec<(UnixNanos, CatalogSpec)>,
    /// (sequence, catalog version) of every catalog numbered in the feed.
    catalog_feed: Vec<(u64, u64)>,
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
    /// Erasures by the sequence they took (shared use only).
    erasure_log: BTreeMap<u64, Tombstone>,
    /// Catalog applies so far.
    catalog_version: u64,
    /// The link keys the writers share.
    link_keys: Vec<String>,
    /// Commits so far: what a feed waiting for changes watches.
    commits: u64,
    /// The chain: every record's link, by sequence.
    chain: BTreeMap<u64, crate::audit::Link>,
    /// Signed checkpoints, by sequence.
    checkpoints: BTreeMap<u64, String>,
}

/// The in-memory store. Cheap to create; share it with `Arc`.
#[derive(Debug)]
pub struct MemoryStore {
    contents: Mutex<Contents>,
    /// The commit lock of shared use (see the module docs).
    commit_lock: Mutex<()>,
    /// Told at every commit.
    committed: Condvar,
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
                catalogs: Vec::new(),
                catalog_feed: Vec::new(),
                next_sequence: 1,
                erasure_key,
                contacts: BTreeMap::new(),
                events: BTreeMap::new(),
                idempotency: HashMap::new(),
                idempotency_by_time: BTreeSet::new(),
                erasures: BTreeMap::new(),
                wordings: BTreeMap::new(),
                pending: BTreeMap::new(),
                erasure_log: BTreeMap::new(),
                catalog_version: 0,
                link_keys: Vec::new(),
                commits: 0,
                chain: BTreeMap::new(),
                checkpoints: BTreeMap::new(),
            }),
            commit_lock: Mutex::new(()),
            committed: Condvar::new(),
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

impl MemoryStore {
    /// Counts a commit and wakes whoever waits for one.
    fn tell(&self, c: &mut Contents) {
        c.commits += 1;
        self.committed.notify_all();
    }
}

impl Contents {
    /// Applies a batch whole, or nothing of it.
    fn apply(&mut self, batch: &WriteBatch) -> Result<Committed, StoreError> {
        // One version names one text: a wording that differs from the one
        // kept under its version is a writer that ruled on a stale catalog.
        for w in &batch.wordings {
            if let Some(kept) = self.wordings.get(&(w.consent.to_string(), w.version))
                && (kept.text != w.text
                    || kept.parent != w.parent
                    || kept.channels != w.channels
                    || kept.brands != w.brands)
            {
                return Err(StoreError::corrupt(
                    "wordings",
                    format!(
                        "version {} of {} would name a second text",
                        w.version, w.consent
                    ),
                ));
            }
        }
        let links = self.links_of(batch)?;
        let chains: HashMap<u64, [u8; 32]> = links.iter().map(|l| (l.sequence, l.chain)).collect();
        self.chain
            .extend(links.into_iter().map(|l| (l.sequence, l)));
        self.next_sequence = self.next_sequence.max(batch.next_sequence);
        if let Some(catalog) = &batch.catalog {
            self.catalogs.push((batch.catalog_at, catalog.clone()));
            self.catalog = Some(catalog.clone());
            self.catalog_version += 1;
            if batch.catalog_sequence > 0 {
                self.catalog_feed
                    .push((batch.catalog_sequence, self.catalog_version));
            }
        }
        for w in &batch.wordings {
            self.wordings
                .entry((w.consent.to_string(), w.version))
                .or_insert_with(|| w.clone());
        }
        for e in &batch.events {
            let (states, sequences) = self.contacts.entry(e.contact.to_string()).or_default();
            sequences.push(e.sequence);
            if e.applied {
                let state = e.state();
                match states.iter_mut().find(|s| s.consent == e.consent) {
                    Some(slot) => *slot = state,
                    None => states.push(state),
                }
            }
            let mut kept = e.clone();
            kept.chain = chains.get(&e.sequence).copied();
            self.events.insert(e.sequence, kept);
            let key = (e.contact.to_string(), e.consent.to_string());
            match PendingRecord::after(self.pending.get(&key).copied(), e) {
                Some(p) => self.pending.insert(key, p),
                None => self.pending.remove(&key),
            };
        }
        for (key, r) in &batch.idempotency {
            self.idempotency.insert(key.clone(), *r);
            self.idempotency_by_time
                .insert((r.recorded_at, key.clone()));
        }
        Ok(Committed {
            first_sequence: batch.first_sequence(),
            catalog_version: self.catalog_version,
            phases: None,
        })
    }

    /// Forgets a contact, keeps its tombstone; whether anything was held.
    fn erase(&mut self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        let salt = chain::salt()?;
        let held = self.contacts.remove(contact);
        self.pending.retain(|(k, _), _| k != contact);
        if let Some((_, sequences)) = &held {
            for s in sequences {
                let key = self.events.remove(s).and_then(|e| e.idempotency_key);
                if let Some(r) = key.as_ref().and_then(|k| self.idempotency.remove(k)) {
                    self.idempotency_by_time
                        .remove(&(r.recorded_at, key.expect("removed by this key")));
                }
            }
        }
        self.erasures.insert(
            tombstone.hash,
            (tombstone.erased_at, tombstone.reason.clone()),
        );
        if tombstone.sequence > 0 {
            let mut erased = held.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
            erased.sort_unstable();
            self.link_erasure(tombstone, &erased, salt);
            self.erasure_log.retain(|_, t| t.hash != tombstone.hash);
            self.erasure_log
                .insert(tombstone.sequence, tombstone.clone());
            self.next_sequence = self.next_sequence.max(tombstone.sequence + 1);
        }
        Ok(held.is_some())
    }

    /// What was committed after `cursor`: at most `limit` events, the
    /// erasures among them, the catalog when it moved.
    fn changes_after(&self, cursor: Cursor, limit: usize) -> Changes {
        let head = self.next_sequence - 1;
        let from = cursor.sequence.saturating_add(1);
        let events: Vec<EventRecord> = self
            .events
            .range(from..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect();
        let through = match events.last() {
            Some(last) if events.len() == limit => last.sequence,
            _ => head.max(cursor.sequence),
        };
        let erasures = self
            .erasure_log
            .range(from..=through.max(from))
            .filter(|(s, _)| **s <= through)
            .map(|(s, t)| (*s, t.clone()))
            .collect();
        let catalog = match &self.catalog {
            Some(spec) if self.catalog_version > cursor.catalog_version => {
                let mut latest: BTreeMap<&str, &Wording> = BTreeMap::new();
                for ((consent, _), w) in &self.wordings {
                    latest.insert(consent, w);
                }
                Some(CatalogChange {
                    spec: spec.clone(),
                    latest: latest.into_values().cloned().collect(),
                    version: self.catalog_version,
                })
            }
            _ => None,
        };
        Changes {
            events,
            erasures,
            through,
            head: head.max(through),
            catalog,
        }
    }
}

impl SharedStore for MemoryStore {
    fn commit_on_latest(
        &self,
        cursor: Cursor,
        rule: &mut dyn FnMut(Changes) -> Write,
    ) -> Result<Committed, StoreError> {
        let _commit = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (changes, next_sequence) = {
            let c = self.lock();
            (c.changes_after(cursor, usize::MAX), c.next_sequence)
        };
        // The contents' lock is free while the writer rules: it reads.
        let write = rule(changes);
        let mut c = self.lock();
        let committed = match write {
            Write::Nothing => {
                return Ok(Committed {
                    first_sequence: next_sequence,
                    catalog_version: c.catalog_version,
                    phases: None,
                });
            }
            Write::Batch(batch) => {
                if batch.first_sequence() < c.next_sequence {
                    return Err(StoreError::corrupt(
                        "events",
                        format!(
                            "a batch numbered from {} below the store's next sequence {}: \
                             ruled on a stale view",
                            batch.first_sequence(),
                            c.next_sequence
                        ),
                    ));
                }
                c.apply(&batch)?
            }
            Write::Erase {
                contact,
                mut tombstone,
            } => {
                let sequence = c.next_sequence;
                tombstone.sequence = sequence;
                c.erase(&contact, &tombstone)?;
                Committed {
                    first_sequence: sequence,
                    catalog_version: c.catalog_version,
                    phases: None,
                }
            }
        };
        self.tell(&mut c);
        Ok(committed)
    }

    fn changes_after(&self, cursor: Cursor, limit: usize) -> Result<Changes, StoreError> {
        Ok(self.lock().changes_after(cursor, limit))
    }

    fn wait_for_changes(&self, timeout: Duration) {
        let c = self.lock();
        let seen = c.commits;
        let _ = self
            .committed
            .wait_timeout_while(c, timeout, |c| c.commits == seen);
    }

    fn link_keys(&self, fresh: &str) -> Result<Vec<String>, StoreError> {
        let mut c = self.lock();
        if c.link_keys.is_empty() {
            c.link_keys.push(fresh.to_owned());
        }
        Ok(c.link_keys.clone())
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
            catalog_version: c.catalog_version,
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

    fn catalog_at(&self, at: UnixNanos) -> Result<Option<(UnixNanos, CatalogSpec)>, StoreError> {
        let c = self.lock();
        Ok(c.catalogs
            .iter()
            .rev()
            .find(|(from, _)| *from <= at)
            .or(c.catalogs.first())
            .cloned()
            .or_else(|| c.catalog.clone().map(|spec| (0, spec))))
    }

    fn states_after(&self, after: &str, limit: usize) -> Result<ContactStates, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        Ok(self
            .lock()
            .contacts
            .range::<str, _>((Excluded(after), Unbounded))
            .filter(|(_, (states, _))| !states.is_empty())
            .take(limit)
            .map(|(contact, (states, _))| (contact.clone(), states.clone()))
            .collect())
    }

    fn chain_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        Ok(self.lock().head())
    }

    fn links_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(crate::audit::Link, crate::audit::Held)>, StoreError> {
        Ok(self.lock().links_after(after, limit))
    }

    fn keep_checkpoint(&self, sequence: u64, note: &str, _sync: bool) -> Result<(), StoreError> {
        self.lock()
            .checkpoints
            .entry(sequence)
            .or_insert_with(|| note.to_owned());
        Ok(())
    }

    fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let c = self.lock();
        Ok(c.checkpoints
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(s, n)| (*s, n.clone()))
            .collect())
    }

    fn erased_at(&self, hash: &[u8; 32]) -> Result<Option<UnixNanos>, StoreError> {
        Ok(self.lock().erasures.get(hash).map(|(at, _)| *at))
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
        let committed = c.apply(batch)?;
        self.tell(&mut c);
        Ok(committed)
    }

    fn feed(&self, after: u64, limit: usize) -> Result<super::FeedPage, StoreError> {
        let cursor = Cursor {
            sequence: after,
            catalog_version: u64::MAX,
        };
        let c = self.lock();
        let mut page = super::FeedPage::of(c.changes_after(cursor, limit));
        page.catalogs = c
            .catalog_feed
            .iter()
            .filter(|(s, _)| *s > after && *s <= page.through)
            .copied()
            .collect();
        Ok(page)
    }

    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        let mut c = self.lock();
        let held = c.erase(contact, tombstone)?;
        self.tell(&mut c);
        Ok(held)
    }

    fn purge_erased(&self) -> Result<bool, StoreError> {
        // Erased records are dropped from the maps at once; no file exists.
        Ok(false)
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
mod tests;

mod chain;
mod transfer;
