//! The in-memory index: contact → the few states it holds, by interned
//! consent. Every CanSend is answered from here, without touching the disk.
//!
//! Only the writer mutates it, and only after the store has committed, so a
//! reader never sees a decision that could still be lost. Lookups are
//! synchronous and hold a shard read lock only for the few nanoseconds of
//! [`verdict`]: no lock is ever held across an `.await`.
//!
//! Pending grants (double opt-in) live in a second map: CanSend reads it
//! only when nothing else decides and some contact has one waiting, so the
//! common answer pays one relaxed atomic load for it.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use compact_str::CompactString;
use dashmap::DashMap;
use smallvec::SmallVec;

use crate::domain::ids::{ADDRESS_KEY_LEN, address_key};
use crate::domain::resolve::Now;
use crate::domain::{
    Action, AddressKind, ConsentIdx, HeldState, PendingRecord, Terms, UNDELIVERABLE, UnixNanos,
    Verdict, verdict,
};

/// One inline state covers the common contact without a heap allocation.
pub type States = SmallVec<[HeldState; 1]>;

/// How many lookups ahead [`Index::gather`] asks for a contact's slot.
const AHEAD: usize = 8;

/// Asks the CPU to start loading the cache line holding `p`, so that a
/// lookup a few steps later finds it there instead of waiting for memory.
///
/// This is the crate's one `unsafe` block, kept because it measured a win
/// (README, "The hot path"). It is sound for any `p`: a prefetch is a hint
/// that never faults, never reads into the program and has no effect but
/// on the cache, so `p` need not point at anything valid (the addresses
/// passed are computed with wrapping arithmetic and never dereferenced);
/// and `_mm_prefetch` needs only SSE, part of every x86_64 CPU.
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: see above: a prefetch reads nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Where a check's states come from.
#[derive(Debug, Clone, Copy)]
pub enum Held<'a> {
    /// Looked up when it is decided.
    Lookup,
    /// Gathered with the rest of its batch ([`Index::gather`]).
    Gathered(Option<&'a [HeldState]>),
}

type Map<V> = DashMap<CompactString, V, foldhash::fast::RandomState>;

/// An address a contact sends to: its kind and keyed hash (DESIGN.md §9).
pub type HeldAddress = (AddressKind, [u8; 32]);

/// A contact's addresses; one inline covers the common contact.
pub type HeldAddresses = SmallVec<[HeldAddress; 1]>;

/// Contact → its states, sharded for concurrent readers.
pub struct Index {
    map: Map<States>,
    /// Contact → its pending grants, by consent.
    pending: Map<SmallVec<[(ConsentIdx, PendingRecord); 1]>>,
    /// Contacts in `pending`: 0 lets CanSend skip it.
    pending_contacts: AtomicUsize,
    /// How long a confirmation link works (a pending grant waits as long).
    confirmation_ttl: AtomicI64,
    /// Contact → the addresses it sends to (`Consents.SetAddresses`).
    addresses: Map<HeldAddresses>,
    /// Contacts in `addresses`: 0 lets CanSend skip it.
    addressed_contacts: AtomicUsize,
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
            pending: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            pending_contacts: AtomicUsize::new(0),
            confirmation_ttl: AtomicI64::new(i64::MAX),
            addresses: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            addressed_contacts: AtomicUsize::new(0),
        }
    }

    /// Sets how long a pending grant waits for its confirmation.
    pub fn set_confirmation_ttl(&self, ttl: UnixNanos) {
        self.confirmation_ttl.store(ttl, Ordering::Relaxed);
    }

    /// Whether any contact has a pending grant (CanSend then needs the time).
    #[inline]
    pub fn has_pending(&self) -> bool {
        self.pending_contacts.load(Ordering::Relaxed) > 0
    }

    /// Decides CanSend for `contact` over a precomputed covering set, with
    /// the catalog's lapse `terms`, at `now` (read only when a grant may
    /// have lapsed by age or a pending grant may still wait); its states
    /// looked up now, or as [`Index::gather`] found them for its batch.
    #[inline]
    pub fn verdict(
        &self,
        held: Held<'_>,
        contact: &str,
        cover: &[ConsentIdx],
        terms: &[Terms],
        now: impl Now,
    ) -> Verdict {
        let v = match held {
            Held::Lookup => match self.map.get(contact) {
                Some(states) => verdict(&states, cover, terms, &now),
                None => verdict(&[], cover, terms, &now),
            },
            Held::Gathered(states) => verdict(states.unwrap_or(&[]), cover, terms, &now),
        };
        if v == Verdict::NoConsent && self.has_pending() && self.waits(contact, cover, now.now()) {
            return Verdict::PendingConfirmation;
        }
        v
    }

    /// The states of many contacts at once, for a batch, in their order
    /// (`None`: no state). Each contact is hashed first and the batch
    /// grouped by shard; each shard's read lock is then taken once for its
    /// group. Looked up one by one, every check would take and release a
    /// lock, and that atomic instruction makes the CPU finish every earlier
    /// memory read before it starts the next check's: at millions of
    /// contacts each lookup then waits out its own cache misses. Within a
    /// group nothing separates the lookups, so their misses overlap. The
    /// states are copied out (a contact's one state is inline: no
    /// allocation); a writer waits at most one group's lookups.
    pub fn gather<'a>(&self, contacts: impl Iterator<Item = &'a str>) -> Vec<Option<States>> {
        let hashed: Vec<(&str, usize, usize)> = contacts
            .map(|c| {
                let hash = self.map.hash_usize(&c);
                (c, hash, self.map.determine_shard(hash))
            })
            .collect();
        let shards = self.map.shards();
        // Counting sort of the positions by shard.
        let mut starts = vec![0usize; shards.len() + 1];
        for &(_, _, shard) in &hashed {
            starts[shard + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut order = vec![0usize; hashed.len()];
        for (i, &(_, _, shard)) in hashed.iter().enumerate() {
            order[next[shard]] = i;
            next[shard] += 1;
        }
        let mut out: Vec<Option<States>> = vec![None; hashed.len()];
        for (shard, lock) in shards.iter().enumerate() {
            let group = &order[starts[shard]..starts[shard + 1]];
            if group.is_empty() {
                continue;
            }
            let table = lock.read();
            // Where each contact's probe starts (hashbrown's layout: the
            // control bytes begin at `data_end`, bucket `i` ends `i`
            // entries before it), asked for `AHEAD` lookups early.
            let mask = table.buckets() - 1;
            let end = table.data_end().as_ptr();
            let ahead = |i: usize| {
                let pos = hashed[i].1 & mask;
                prefetch(end.cast::<u8>().wrapping_add(pos));
                prefetch(end.wrapping_sub(pos + 1));
            };
            group.iter().take(AHEAD).for_each(|&i| ahead(i));
            for (j, &i) in group.iter().enumerate() {
                if let Some(&next) = group.get(j + AHEAD) {
                    ahead(next);
                }
                let (contact, hash, _) = hashed[i];
                out[i] = table
                    .get(hash as u64, |(k, _)| k.as_str() == contact)
                    .map(|(_, states)| states.get().clone());
            }
        }
        out
    }

    /// What the address under `key` (an address's key) says against a
    /// message the contact's decision allows over `cover`: a withdrawal
    /// recorded on it that decides the covering set (its grants only lift,
    /// never allow, and never lapse), else its undeliverable mark.
    #[inline]
    pub fn address_says(&self, key: &str, cover: &[ConsentIdx], now: impl Now) -> Option<Verdict> {
        let states = self.map.get(key)?;
        if let Verdict::Withdrawn { by, at } = verdict(&states, cover, &[], &now) {
            return Some(Verdict::AddressWithdrawn { by, at });
        }
        states
            .iter()
            .find(|h| h.consent == UNDELIVERABLE && h.action == Action::Withdraw)
            .map(|h| Verdict::Undeliverable { at: h.occurred_at })
    }

    /// Whether any contact holds an address (CanSend without `to` then
    /// reads them).
    #[inline]
    pub fn has_addresses(&self) -> bool {
        self.addressed_contacts.load(Ordering::Relaxed) > 0
    }

    /// What the contact's addresses of `kind` say against a message its
    /// decision allows (DESIGN.md §9: without `to`, every address of the
    /// channel's kind must allow): the first that blocks, in the order
    /// they were added.
    pub fn addresses_say(
        &self,
        contact: &str,
        kind: AddressKind,
        cover: &[ConsentIdx],
        now: impl Now,
    ) -> Option<Verdict> {
        let held = self.addresses.get(contact)?;
        let mut buf = [0u8; ADDRESS_KEY_LEN];
        held.iter()
            .filter(|(k, _)| *k == kind)
            .find_map(|(_, hash)| {
                self.address_says(address_key(hash, &mut buf), cover, || now.now())
            })
    }

    /// The addresses a contact sends to, in the order they were added.
    pub fn addresses(&self, contact: &str) -> HeldAddresses {
        self.addresses
            .get(contact)
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Adds (`holds`) or removes an address of a contact.
    pub fn set_address(&self, contact: &str, address: HeldAddress, holds: bool) {
        if holds {
            if let Some(mut held) = self.addresses.get_mut(contact) {
                if !held.contains(&address) {
                    held.push(address);
                }
                return;
            }
            let mut held = HeldAddresses::new();
            held.push(address);
            if self
                .addresses
                .insert(CompactString::from(contact), held)
                .is_none()
            {
                self.addressed_contacts.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let now_empty = self.addresses.get_mut(contact).is_some_and(|mut held| {
                held.retain(|a| *a != address);
                held.is_empty()
            });
            if now_empty {
                self.forget_addresses(contact);
            }
        }
    }

    /// Replaces a contact's addresses (a SetAddresses committed).
    pub fn replace_addresses(&self, contact: &str, addresses: HeldAddresses) {
        if addresses.is_empty() {
            self.forget_addresses(contact);
        } else if self
            .addresses
            .insert(CompactString::from(contact), addresses)
            .is_none()
        {
            self.addressed_contacts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets every address of a contact (an erasure).
    pub fn forget_addresses(&self, contact: &str) {
        if self.addresses.remove(contact).is_some() {
            self.addressed_contacts.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a pending grant of one of `cover` waits for `contact`.
    fn waits(&self, contact: &str, cover: &[ConsentIdx], now: UnixNanos) -> bool {
        let ttl = self.confirmation_ttl.load(Ordering::Relaxed);
        self.pending.get(contact).is_some_and(|p| {
            p.iter()
                .any(|(c, r)| cover.contains(c) && r.waits(now, ttl))
        })
    }

    /// The pending grants of a contact, by consent.
    pub fn pending(&self, contact: &str) -> Vec<(ConsentIdx, PendingRecord)> {
        self.pending
            .get(contact)
            .map(|p| p.to_vec())
            .unwrap_or_default()
    }

    /// Sets (or, with `None`, ends) the wait of (contact, consent).
    pub fn set_pending(&self, contact: &str, consent: ConsentIdx, record: Option<PendingRecord>) {
        match record {
            Some(r) => {
                if let Some(mut p) = self.pending.get_mut(contact) {
                    match p.iter_mut().find(|(c, _)| *c == consent) {
                        Some(slot) => slot.1 = r,
                        None => p.push((consent, r)),
                    }
                    return;
                }
                let mut p = SmallVec::new();
                p.push((consent, r));
                if self
                    .pending
                    .insert(CompactString::from(contact), p)
                    .is_none()
                {
                    self.pending_contacts.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                let now_empty = self.pending.get_mut(contact).is_some_and(|mut p| {
                    p.retain(|(c, _)| *c != consent);
                    p.is_empty()
                });
                if now_empty {
                    self.drop_pending(contact);
                }
            }
        }
    }

    fn drop_pending(&self, contact: &str) {
        if self.pending.remove(contact).is_some() {
            self.pending_contacts.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The state held for (contact, consent), if any.
    pub fn get(&self, contact: &str, consent: ConsentIdx) -> Option<HeldState> {
        self.map
            .get(contact)
            .and_then(|s| s.iter().find(|h| h.consent == consent).copied())
    }

    /// The least of `pick` over the contact's states (one lookup).
    pub fn earliest_state(
        &self,
        contact: &str,
        pick: impl Fn(&HeldState) -> Option<UnixNanos>,
    ) -> Option<UnixNanos> {
        self.map
            .get(contact)
            .and_then(|states| states.iter().filter_map(pick).min())
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

    /// Forgets a contact's states, returning them (its pending grants
    /// stay: see [`Index::forget_pending`]).
    pub fn remove(&self, contact: &str) -> Option<Vec<HeldState>> {
        self.map
            .remove(contact)
            .map(|(_, states)| states.into_vec())
    }

    /// Forgets a contact's pending grants (an erasure).
    pub fn forget_pending(&self, contact: &str) {
        self.drop_pending(contact);
    }

    /// A contact whose id satisfies `matches`, if any: a full scan of the
    /// contacts holding states, then of those with only pending grants or
    /// addresses.
    pub fn find_contact(&self, mut matches: impl FnMut(&str) -> bool) -> Option<String> {
        self.map
            .iter()
            .find(|entry| matches(entry.key()))
            .map(|entry| entry.key().to_string())
            .or_else(|| {
                self.pending
                    .iter()
                    .find(|entry| matches(entry.key()))
                    .map(|entry| entry.key().to_string())
            })
            .or_else(|| {
                self.addresses
                    .iter()
                    .find(|entry| matches(entry.key()))
                    .map(|entry| entry.key().to_string())
            })
    }

    /// Number of contacts holding at least one state.
    pub fn contacts(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Action, PendingRecord};

    /// A grant of `consent` at `at`, as the index holds it.
    fn grant(consent: ConsentIdx, at: UnixNanos) -> HeldState {
        HeldState {
            occurred_at: at,
            consent,
            action: Action::Grant,
            by_person: false,
            version: 1,
        }
    }

    /// A batch's gathered states are each contact's, in the batch's order,
    /// whatever shards they fall in: absent ones, repeats, two states.
    #[test]
    fn gathered_states_are_each_contacts_own() {
        let index = Index::default();
        let held = grant;
        for i in 0..500i64 {
            index.put(&format!("c{i}"), held(0, i));
        }
        index.put("c7", held(3, 70));
        let asked: Vec<String> = (0..1200)
            .map(|i| format!("c{}", (i * 7919) % 700))
            .collect();
        let gathered = index.gather(asked.iter().map(String::as_str));
        assert_eq!(gathered.len(), asked.len());
        for (contact, states) in asked.iter().zip(&gathered) {
            let one_by_one: Option<Vec<HeldState>> =
                index.map.get(contact.as_str()).map(|s| s.to_vec());
            assert_eq!(states.as_ref().map(|s| s.to_vec()), one_by_one, "{contact}");
        }
        assert_eq!(
            gathered[asked.iter().position(|c| c == "c7").unwrap()]
                .as_ref()
                .map(|s| s.len()),
            Some(2)
        );
        assert!(index.gather(std::iter::empty()).is_empty());
    }

    #[test]
    fn put_replaces_per_consent_and_decide_reads_it() {
        let index = Index::default();
        let g = grant;
        assert_eq!(
            index.verdict(Held::Lookup, "x", &[0], &[], 0),
            Verdict::NoConsent
        );
        assert_eq!(index.put("x", g(0, 1)), None);
        assert_eq!(index.put("x", g(1, 2)), None);
        assert_eq!(index.put("x", g(0, 3)), Some(g(0, 1)));
        assert_eq!(index.get("x", 0), Some(g(0, 3)));
        assert_eq!(
            index.verdict(Held::Lookup, "x", &[1, 0], &[], 0),
            Verdict::Granted { by: 0, at: 3 }
        );
        assert_eq!(index.contacts(), 1);
        assert_eq!(std::mem::size_of::<HeldState>(), 16);
    }

    #[test]
    fn a_pending_grant_answers_only_when_nothing_decides_and_until_its_link_expires() {
        let index = Index::default();
        index.set_confirmation_ttl(100);
        let waiting = PendingRecord {
            count: 1,
            last_at: 10,
            link_at: 10,
        };
        index.set_pending("p", 1, Some(waiting));
        assert!(index.has_pending());
        assert_eq!(
            index.verdict(Held::Lookup, "p", &[1, 0], &[], 50),
            Verdict::PendingConfirmation
        );
        assert_eq!(
            index.verdict(Held::Lookup, "p", &[0], &[], 50),
            Verdict::NoConsent,
            "not in the cover"
        );
        assert_eq!(
            index.verdict(Held::Lookup, "p", &[1, 0], &[], 110),
            Verdict::NoConsent,
            "expired"
        );
        // A confirmed umbrella grant keeps deciding while a child waits.
        index.put(
            "p",
            HeldState {
                occurred_at: 5,
                consent: 0,
                action: Action::Grant,
                by_person: false,
                version: 1,
            },
        );
        assert_eq!(
            index.verdict(Held::Lookup, "p", &[1, 0], &[], 50),
            Verdict::Granted { by: 0, at: 5 }
        );
        index.set_pending("p", 1, None);
        assert!(!index.has_pending());
        assert!(index.pending("p").is_empty());
    }
}
