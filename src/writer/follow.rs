//! Applying what other nodes committed to a shared store, whichever way it
//! arrives: a page of the change feed, or a commit's catch-up under the
//! store's lock. One function applies both, so the view a commit rules on
//! is exactly the view the feed builds.
//!
//! Records are applied in sequence order, and only those past this node's
//! applied sequence: a node's own commits (applied when they committed) and
//! a page overtaken by a catch-up are skipped, never applied twice. Then
//! the applied sequence moves to the end of what was read, which is whole
//! from the cursor on (a page starts at or before the applied sequence).

use std::sync::Arc;
use std::time::Duration;

use super::committer::Committer;
use super::marks::{Slot, counted, hold_address};
use crate::domain::{Catalog, ContactId, EventRecord, HeldState, PendingRecord, UnixNanos};
use crate::store::{CatalogChange, Changes, Tombstone};

impl Committer {
    /// Applies what was committed after this node's cursor (see the module
    /// docs); with a shared store, the sequence the next commit takes
    /// follows the store's head.
    pub(super) fn apply_changes(&mut self, changes: Changes) {
        if let Some(catalog) = changes.catalog {
            self.follow_catalog(catalog);
        }
        let applied = self.applied.get();
        if changes.through <= applied {
            return;
        }
        let now = self.clock.now();
        let catalog = self.catalog.load_full();
        let mut erasures = changes.erasures.into_iter().peekable();
        for e in changes.events {
            while let Some((sequence, t)) = erasures.next_if(|(s, _)| *s < e.sequence) {
                if sequence > applied {
                    self.apply_erasure(&t);
                }
            }
            if e.sequence <= applied {
                continue;
            }
            self.metrics
                .feed_delay_seconds
                .observe(Duration::from_nanos(
                    now.saturating_sub(e.recorded_at).max(0) as u64,
                ));
            self.apply_event(&catalog, e);
        }
        for (sequence, t) in erasures {
            if sequence > applied {
                self.apply_erasure(&t);
            }
        }
        self.next_sequence = self.next_sequence.max(changes.head + 1);
        self.applied.advance(changes.through);
    }

    /// One event another node recorded: its decision where rule 2 lets it
    /// win, and the pending record it moves.
    fn apply_event(&mut self, catalog: &Catalog, e: EventRecord) {
        self.last_recorded = self.last_recorded.max(e.recorded_at);
        // Rule 5: what occurred before an erasure of the contact is gone
        // (a stale record of a node that had not seen the erasure: kept out
        // of the index as it is out of the store).
        if self
            .erasures
            .erased_at(e.contact.as_str())
            .is_some_and(|at| e.occurred_at <= at)
        {
            return;
        }
        let contact = e.contact.as_str();
        let idx = match Slot::of(catalog, e.consent.as_str()) {
            Slot::State(idx) => idx,
            Slot::Address(address) => {
                // Each record arrives once, in order: the latest wins.
                hold_address(&self.index, contact, address, e.action);
                return;
            }
            Slot::Nowhere => {
                tracing::warn!(consent = %e.consent, sequence = e.sequence, "the feed names a consent this node's catalog lacks");
                return;
            }
        };
        if e.pending || self.index.has_pending() {
            let prev = self
                .index
                .pending(contact)
                .into_iter()
                .find(|(c, _)| *c == idx)
                .map(|(_, p)| p);
            // Each record arrives once, in order (a node's own commits
            // never come back): the store's own derivation applies.
            let next = PendingRecord::after(prev, &e);
            if next != prev {
                self.index.set_pending(contact, idx, next);
            }
        }
        if !e.applied {
            return;
        }
        let state = HeldState::of(idx, e.decision(), e.version, e.source);
        let wins = self
            .index
            .get(contact, idx)
            .is_none_or(|current| state.decision().supersedes(current.decision()));
        if wins {
            self.hold(contact, state);
        }
    }

    /// An erasure another node committed: the feed carries only the keyed
    /// hash, so the contact is found among those this node holds.
    fn apply_erasure(&mut self, t: &Tombstone) {
        let found = self
            .index
            .find_contact(|c| self.erasures.hash(c) == t.hash)
            .and_then(|c| ContactId::parse("contact", &c).ok());
        match found {
            Some(contact) => self.forget(&contact, t.hash, t.erased_at),
            None => {
                self.erasures.record(t.hash, t.erased_at);
                self.last_recorded = self.last_recorded.max(t.erased_at);
            }
        }
    }

    /// Drops an erased contact from memory: its states, and any reload
    /// pending for it. States decided after the erasure stay (rule 5: a
    /// fresh decision after it is the contact's again).
    pub(super) fn forget(&mut self, contact: &ContactId, hash: [u8; 32], erased_at: UnixNanos) {
        self.last_recorded = self.last_recorded.max(erased_at);
        for s in self.release(contact.as_str()) {
            if s.occurred_at > erased_at {
                self.hold(contact.as_str(), s);
            }
        }
        self.index.forget_pending(contact.as_str());
        self.index.forget_addresses(contact.as_str());
        if let Some(down) = &mut self.down {
            down.in_doubt.remove(contact);
        }
        self.erasures.record(hash, erased_at);
    }

    /// Puts a state in the index; a contact that did not hold the consent
    /// before now counts for the deletion guard.
    pub(super) fn hold(&mut self, contact: &str, state: HeldState) {
        if self.index.put(contact, state).is_none() && counted(state.consent) {
            let i = state.consent as usize;
            if self.usage.len() <= i {
                self.usage.resize(i + 1, 0);
            }
            self.usage[i] += 1;
        }
    }

    /// Takes a contact's states out of the index and the deletion guard's
    /// counts; returns them.
    pub(super) fn release(&mut self, contact: &str) -> Vec<HeldState> {
        let states = self.index.remove(contact).unwrap_or_default();
        for s in &states {
            if let Some(n) = self.usage.get_mut(s.consent as usize) {
                *n = n.saturating_sub(1);
            }
        }
        states
    }

    /// Takes over the catalog another node applied, with the versions it
    /// gave (never recomputed here), unless this node's is as new.
    fn follow_catalog(&mut self, change: CatalogChange) {
        if change.version <= self.catalog_version {
            return;
        }
        self.catalog_version = change.version;
        if let Some(newest) = change.latest.iter().map(|w| w.in_force_from).max() {
            self.last_recorded = self.last_recorded.max(newest);
        }
        let current = self.catalog.load_full();
        match current.follow(change.spec, change.latest) {
            Ok(next) => {
                tracing::info!(
                    consents = next.spec().consents.len(),
                    "catalog applied by another node taken over"
                );
                self.catalog.store(Arc::new(next));
            }
            Err(e) => {
                tracing::error!(error = %e, "the catalog another node applied does not compile here");
            }
        }
    }
}
