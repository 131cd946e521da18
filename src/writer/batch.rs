//! What one group commit has ruled so far: the records to write, and the
//! view of states and keys that later changes of the same batch must see
//! ahead of the store and the index (two changes to one contact, a key used
//! twice).

use std::collections::HashMap;

use super::Reply;
use crate::domain::{
    ChangeOutcome, ConsentIdx, Decision, EventRecord, HeldState, IdempotencyRecord, PendingGrant,
    PendingRecord, StateRecord, UnixNanos,
};
use crate::error::{ChangeError, WriteError};
use crate::index::{HeldAddresses, Index};
use crate::store::{Store, StoreError, WriteBatch};

/// An index key: short contact ids stay inline.
pub(super) type ContactKey = compact_str::CompactString;

/// A change recorded but not yet committed: its answer, and what the index
/// learns once the commit holds.
struct Pending {
    outcome: ChangeOutcome,
    index_update: Option<(ContactKey, HeldState)>,
    /// The pending record of its (contact, consent) after it (`None`: the
    /// wait ended), when it moved.
    pending_update: Option<(ContactKey, ConsentIdx, Option<PendingRecord>)>,
    /// The contact's addresses after it (a SetAddresses).
    addresses_update: Option<(ContactKey, HeldAddresses)>,
}

/// One group commit in the making.
#[derive(Default)]
pub(super) struct GroupBatch {
    /// What goes to the store.
    pub(super) write: WriteBatch,
    /// States this batch set, ahead of the index and the store.
    states: HashMap<(ContactKey, ConsentIdx), StateRecord>,
    /// Contacts this batch set a state for.
    touched: std::collections::HashSet<ContactKey>,
    /// Keys this batch used, ahead of the store.
    keys: HashMap<String, IdempotencyRecord>,
    /// Pending records this batch moved, ahead of the index (`None`: the
    /// wait ended).
    waiting: HashMap<(ContactKey, ConsentIdx), Option<PendingRecord>>,
    /// Set by [`GroupBatch::moves_pending`] for the event pushed next.
    moved: Option<Option<PendingRecord>>,
    /// Addresses this batch set, ahead of the index.
    addresses: HashMap<ContactKey, HeldAddresses>,
    /// Consents that gained a contact in this batch (the deletion guard).
    new_usage: Vec<ConsentIdx>,
    /// One per recorded event, in order.
    pending: Vec<Pending>,
    /// The callers of `pending`, in the same order.
    replies: Vec<Reply<ChangeOutcome, ChangeError>>,
    /// The sequence of the first event recorded, and how many were.
    first_sequence: u64,
    events: usize,
}

impl GroupBatch {
    /// The decisive part of (contact, consent)'s state: this batch's, else
    /// the index's.
    pub(super) fn decision(
        &self,
        contact: &ContactKey,
        consent: ConsentIdx,
        index: &Index,
    ) -> Option<Decision> {
        match self.states.get(&(contact.clone(), consent)) {
            Some(s) => Some(s.decision()),
            None => index.get(contact, consent).map(HeldState::decision),
        }
    }

    /// The state of (contact, consent) as the index would hold it: this
    /// batch's, else the index's.
    pub(super) fn held(
        &self,
        contact: &ContactKey,
        consent: ConsentIdx,
        index: &Index,
    ) -> Option<HeldState> {
        match self.states.get(&(contact.clone(), consent)) {
            Some(s) => Some(HeldState::of(consent, s.decision(), s.version, s.source)),
            None => index.get(contact, consent),
        }
    }

    /// The pending record of (contact, consent): this batch's, else the
    /// index's.
    pub(super) fn pending_record(
        &self,
        contact: &ContactKey,
        consent: ConsentIdx,
        index: &Index,
    ) -> Option<PendingRecord> {
        match self.waiting.get(&(contact.clone(), consent)) {
            Some(r) => *r,
            None if index.has_pending() => index
                .pending(contact)
                .into_iter()
                .find(|(c, _)| *c == consent)
                .map(|(_, r)| r),
            None => None,
        }
    }

    /// How many pending grants of `contact` still wait at `now`.
    pub(super) fn waiting_for(
        &self,
        contact: &ContactKey,
        index: &Index,
        now: UnixNanos,
        ttl: UnixNanos,
    ) -> u32 {
        let mut by: HashMap<ConsentIdx, Option<PendingRecord>> = index
            .pending(contact)
            .into_iter()
            .map(|(c, r)| (c, Some(r)))
            .collect();
        for ((k, c), r) in &self.waiting {
            if k == contact {
                by.insert(*c, *r);
            }
        }
        by.values()
            .flatten()
            .filter(|r| r.waits(now, ttl))
            .map(|r| r.count)
            .sum()
    }

    /// Works out how `event`, about to be recorded, moves the pending
    /// record of its (contact, `consent`) ([`PendingRecord::after`]); the
    /// next push carries the move to the index.
    pub(super) fn moves_pending(
        &mut self,
        event: &EventRecord,
        consent: ConsentIdx,
        index: &Index,
    ) {
        if !event.pending && self.waiting.is_empty() && !index.has_pending() {
            // Nothing waits anywhere: nothing to end.
            self.moved = None;
            return;
        }
        let contact = ContactKey::from(event.contact.as_str());
        let prev = self.pending_record(&contact, consent, index);
        let next = PendingRecord::after(prev, event);
        self.moved = (prev.is_some() || next.is_some()).then_some(next);
    }

    /// The addresses `contact` holds: this batch's, else the index's.
    pub(super) fn addresses(&self, contact: &ContactKey, index: &Index) -> HeldAddresses {
        match self.addresses.get(contact) {
            Some(a) => a.clone(),
            None => index.addresses(contact),
        }
    }

    /// Adds the events of a SetAddresses, the contact's addresses after
    /// them, and its answer.
    pub(super) fn record_addresses(
        &mut self,
        contact: ContactKey,
        events: Vec<EventRecord>,
        now: HeldAddresses,
        outcome: ChangeOutcome,
    ) {
        self.addresses.insert(contact.clone(), now.clone());
        for event in events {
            if self.events == 0 {
                self.first_sequence = event.sequence;
            }
            self.events += 1;
            self.write.events.push(event);
        }
        self.pending.push(Pending {
            outcome,
            index_update: None,
            pending_update: None,
            addresses_update: Some((contact, now)),
        });
    }

    /// Whether this batch gave `contact` any state.
    pub(super) fn holds(&self, contact: &ContactKey) -> bool {
        self.touched.contains(contact)
    }

    /// The full state of (contact, consent), for an answer: this batch's,
    /// else the store's.
    pub(super) fn state(
        &self,
        contact: &ContactKey,
        consent: ConsentIdx,
        consent_id: &str,
        store: &dyn Store,
    ) -> Result<Option<StateRecord>, StoreError> {
        match self.states.get(&(contact.clone(), consent)) {
            Some(s) => Ok(Some(s.clone())),
            None => store.state(contact, consent_id),
        }
    }

    /// Whether the event a replayed key first recorded (`sequence`, of
    /// `contact`, in this batch or in the store) was a grant taken as
    /// pending, and its link.
    pub(super) fn replayed_pending(
        &self,
        contact: &str,
        sequence: u64,
        store: &dyn Store,
    ) -> Result<Option<PendingGrant>, StoreError> {
        let of = |e: &EventRecord| {
            e.pending.then_some(PendingGrant {
                recorded_at: e.recorded_at,
                link: e.confirmation_link,
                replay: true,
            })
        };
        if let Some(e) = self.write.events.iter().find(|e| e.sequence == sequence) {
            return Ok(of(e));
        }
        // The same key, the same change: the same contact's history holds it.
        let first = store.history_page(contact, sequence.saturating_sub(1), 1)?;
        Ok(first
            .first()
            .filter(|e| e.sequence == sequence)
            .and_then(of))
    }

    /// What `key` first recorded: in this batch, else in the store.
    pub(super) fn key(
        &self,
        key: &str,
        store: &dyn Store,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        match self.keys.get(key) {
            Some(r) => Ok(Some(*r)),
            None => store.idempotency(key),
        }
    }

    /// Adds an event that becomes the state of (contact, `consent`);
    /// `was_held` tells whether the contact held a state for it before.
    pub(super) fn apply(
        &mut self,
        event: EventRecord,
        consent: ConsentIdx,
        fingerprint: Option<[u8; 32]>,
        was_held: bool,
    ) {
        if !was_held && super::marks::counted(consent) {
            self.new_usage.push(consent);
        }
        let contact = ContactKey::from(event.contact.as_str());
        let state = event.state();
        self.states
            .insert((contact.clone(), consent), state.clone());
        self.touched.insert(contact.clone());
        let held = HeldState::of(consent, event.decision(), event.version, event.source);
        self.push(
            event,
            consent,
            fingerprint,
            Some(state),
            Some((contact, held)),
        );
    }

    /// Adds an event that goes into the history only (superseded, or a
    /// pending grant); `standing` is the state that still decides, for the
    /// answer.
    pub(super) fn supersede(
        &mut self,
        event: EventRecord,
        consent: ConsentIdx,
        fingerprint: Option<[u8; 32]>,
        standing: Option<StateRecord>,
    ) {
        self.push(event, consent, fingerprint, standing, None);
    }

    fn push(
        &mut self,
        event: EventRecord,
        consent: ConsentIdx,
        fingerprint: Option<[u8; 32]>,
        state: Option<StateRecord>,
        index_update: Option<(ContactKey, HeldState)>,
    ) {
        let contact = ContactKey::from(event.contact.as_str());
        let pending_update = match self.moved.take() {
            Some(next) => {
                self.waiting.insert((contact.clone(), consent), next);
                Some((contact, consent, next))
            }
            None => None,
        };
        if let (Some(key), Some(fingerprint)) = (&event.idempotency_key, fingerprint) {
            let r = IdempotencyRecord {
                sequence: event.sequence,
                recorded_at: event.recorded_at,
                fingerprint,
            };
            self.keys.insert(key.clone(), r);
            self.write.idempotency.push((key.clone(), r));
        }
        self.pending.push(Pending {
            outcome: ChangeOutcome {
                applied: event.applied,
                state,
                sequence: event.sequence,
                pending: event.pending.then_some(PendingGrant {
                    recorded_at: event.recorded_at,
                    link: event.confirmation_link,
                    replay: false,
                }),
            },
            index_update,
            pending_update,
            addresses_update: None,
        });
        if self.events == 0 {
            self.first_sequence = event.sequence;
        }
        self.events += 1;
        self.write.events.push(event);
    }

    /// Who waits for the event just recorded.
    pub(super) fn answer_after_commit(&mut self, reply: Reply<ChangeOutcome, ChangeError>) {
        self.replies.push(reply);
        debug_assert_eq!(self.replies.len(), self.pending.len());
    }

    /// Whether nothing was recorded (every change was refused or a replay).
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// How many changes are recorded.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// A change that records nothing but whose answer names this batch (a
    /// key first used earlier in it): answered with the batch.
    pub(super) fn answer_with_commit(&mut self, outcome: ChangeOutcome) {
        self.pending.push(Pending {
            outcome,
            index_update: None,
            pending_update: None,
            addresses_update: None,
        });
    }

    /// After a successful commit: the index learns the new states, the
    /// deletion guard its new holders, and every caller its answer.
    pub(super) fn acknowledge(self, index: &Index, usage: &mut Vec<u64>) {
        for consent in self.new_usage {
            let i = consent as usize;
            if usage.len() <= i {
                usage.resize(i + 1, 0);
            }
            usage[i] += 1;
        }
        for (p, reply) in self.pending.into_iter().zip(self.replies) {
            if let Some((contact, state)) = p.index_update {
                index.put(&contact, state);
            }
            if let Some((contact, consent, record)) = p.pending_update {
                index.set_pending(&contact, consent, record);
            }
            if let Some((contact, addresses)) = p.addresses_update {
                index.replace_addresses(&contact, addresses);
            }
            let _ = reply.send(Ok(p.outcome));
        }
    }

    /// The sequence of the batch's first event.
    pub(super) fn first_sequence(&self) -> u64 {
        self.first_sequence
    }

    /// How many events it records.
    pub(super) fn events(&self) -> usize {
        self.events
    }

    /// How many idempotency keys it records.
    pub(super) fn keys(&self) -> usize {
        self.keys.len()
    }

    /// When the store failed before this batch was written: every caller
    /// learns that nothing was recorded.
    pub(super) fn refuse(self, cause: &str) {
        for reply in self.replies {
            let _ = reply.send(Err(WriteError::Stopped(cause.to_owned()).into()));
        }
    }

    /// After a failed commit: every caller learns that the outcome is
    /// unknown (the store may have kept the batch); the index is untouched.
    pub(super) fn fail(self, error: &dyn std::fmt::Display) {
        for reply in self.replies {
            let _ = reply.send(Err(WriteError::OutcomeUnknown(error.to_string()).into()));
        }
    }

    /// When the store could not be reached and nothing of this batch
    /// landed: every caller learns that nothing was recorded.
    pub(super) fn refuse_unavailable(self, cause: &str) {
        for reply in self.replies {
            let _ = reply.send(Err(WriteError::Unavailable(cause.to_owned()).into()));
        }
    }

    /// The contacts whose events this batch holds (before its write is
    /// handed to the store).
    pub(super) fn contacts(&self) -> impl Iterator<Item = crate::domain::ContactId> + '_ {
        self.write.events.iter().map(|e| e.contact.clone())
    }
}
