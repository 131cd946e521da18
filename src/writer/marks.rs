//! Marks on the writer thread ([`crate::domain::mark`]): where a stored
//! record goes in the index (a consent's state, an address's undeliverable
//! mark, a contact's address), and SetAddresses ruled into the events that
//! add and remove addresses, on the writer's latest view.

use super::Reply;
use super::batch::{ContactKey, GroupBatch};
use super::committer::Committer;
use crate::domain::HeldState;
use crate::domain::{
    Action, Catalog, Change, ChangeOutcome, ConsentIdx, EventRecord, Mark, UNDELIVERABLE,
    mark::ADDRESS_EVIDENCE,
};
use crate::error::ChangeError;
use crate::index::{HeldAddress, HeldAddresses, Index};
use crate::store::Loaded;

/// Where a stored record of (contact, id) goes in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A state, under this interned index (a consent's, or
    /// [`UNDELIVERABLE`] on an address).
    State(ConsentIdx),
    /// One of the contact's addresses.
    Address(HeldAddress),
    /// Nowhere: a consent the catalog lacks.
    Nowhere,
}

impl Slot {
    /// The slot of a record of `id` under `catalog`.
    pub(super) fn of(catalog: &Catalog, id: &str) -> Slot {
        match Mark::of(id) {
            None => catalog.consent_idx(id).map_or(Slot::Nowhere, Slot::State),
            Some(Mark::Undeliverable) => Slot::State(UNDELIVERABLE),
            Some(Mark::Holds { kind, hash }) => Slot::Address((kind, hash)),
            Some(Mark::SetAddresses) => Slot::Nowhere,
        }
    }
}

/// Puts one stored record of (contact, id) where it goes in `index` under
/// `catalog` (what start-up does with every record, and an as-of read with
/// what a contact held at a time); answers its slot.
pub(crate) fn place(
    index: &Index,
    catalog: &Catalog,
    contact: &str,
    id: &str,
    loaded: Loaded,
) -> Slot {
    let slot = Slot::of(catalog, id);
    match (slot, loaded) {
        (
            Slot::State(idx),
            Loaded::State {
                decision,
                version,
                source,
            },
        ) => {
            index.put(contact, HeldState::of(idx, decision, version, source));
        }
        (Slot::State(idx), Loaded::Pending(p)) => index.set_pending(contact, idx, Some(p)),
        (Slot::Address(address), Loaded::State { decision, .. }) => {
            hold_address(index, contact, address, decision.action);
        }
        (Slot::Address(_), Loaded::Pending(_)) | (Slot::Nowhere, _) => {}
    }
    slot
}

/// Whether the deletion guard counts holders of `consent` (marks are not
/// the catalog's).
pub(super) fn counted(consent: ConsentIdx) -> bool {
    consent != UNDELIVERABLE
}

/// Holds a contact's address, or lets it go, as a record of it says.
pub(super) fn hold_address(index: &Index, contact: &str, address: HeldAddress, action: Action) {
    index.set_address(contact, address, action == Action::Grant);
}

impl Committer {
    /// SetAddresses: the difference between the addresses the contact holds
    /// (this batch's view, else the index's) and those it names, recorded as
    /// one WITHDRAW per address it drops and one GRANT per address it adds
    /// (the value in the evidence), all applied: the latest list wins.
    pub(super) fn rule_addresses(
        &mut self,
        change: Change,
        batch: &mut GroupBatch,
        reply: Reply<ChangeOutcome, ChangeError>,
    ) {
        let contact = ContactKey::from(change.contact.as_str());
        let held = batch.addresses(&contact, &self.index);
        let mut now = HeldAddresses::new();
        for (address, hash) in &change.addresses {
            let a = (address.kind(), *hash);
            if !now.contains(&a) {
                now.push(a);
            }
        }
        // Drops first, then additions in the order given.
        let mut plan: Vec<(HeldAddress, Action, Option<&str>)> = held
            .iter()
            .filter(|a| !now.contains(a))
            .map(|gone| (*gone, Action::Withdraw, None))
            .collect();
        for (address, hash) in &change.addresses {
            let a = (address.kind(), *hash);
            if !held.contains(&a) && !plan.iter().any(|(p, _, _)| *p == a) {
                plan.push((a, Action::Grant, Some(address.as_str())));
            }
        }
        let mut events = Vec::with_capacity(plan.len());
        for (address, action, value) in plan {
            let recorded_at = self.receipt_time();
            self.last_recorded = recorded_at;
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let mut evidence = change.evidence.clone();
            if let Some(v) = value {
                evidence.insert(ADDRESS_EVIDENCE.to_owned(), v.to_owned());
            }
            events.push(EventRecord {
                contact: change.contact.clone(),
                consent: Mark::Holds {
                    kind: address.0,
                    hash: address.1,
                }
                .id(),
                action,
                occurred_at: recorded_at,
                recorded_at,
                source: change.source,
                evidence,
                version: 0,
                sequence,
                idempotency_key: None,
                applied: true,
                actor: change.actor.clone(),
                pending: false,
                confirmed: false,
                confirmation_link: false,
                chain: None,
            });
        }
        let outcome = ChangeOutcome {
            applied: !events.is_empty(),
            state: None,
            sequence: events.last().map_or(0, |e| e.sequence),
            pending: None,
        };
        if events.is_empty() {
            let _ = reply.send(Ok(outcome));
            return;
        }
        batch.record_addresses(contact, events, now, outcome);
        batch.answer_after_commit(reply);
    }
}
