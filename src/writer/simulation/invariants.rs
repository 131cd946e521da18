//! What must hold after every step of a schedule, read from the store and
//! from every node, never from what the scheduler believes happened:
//!
//! - the store's history agrees with its states: an event answered
//!   `applied` supersedes the state before it (rule 2), one that is not
//!   (and is not a pending grant) does not, and the states are the fold;
//! - withdrawals stick: no system grant without `confirmed` was applied
//!   over a withdrawal the person made of the consent, an ancestor or a
//!   descendant; a double opt-in consent was granted only by a
//!   confirmation (`confirmed`, or a click on one of the pages, never a
//!   caller naming a page's source);
//! - receipt times grow with sequences, whatever the nodes' clocks;
//! - every node answers from exactly the fold of the store's records up to
//!   its applied sequence: nothing allowed with `min_sequence` after an
//!   acknowledged withdrawal or erasure, nothing from a stale view;
//! - one text per wording version, on every node and in the store; every
//!   event names a wording that exists;
//! - what was acknowledged is kept; nothing of an erased contact from
//!   before its erasure is kept;
//! - once settled, the nodes have converged (states, pending grants,
//!   catalog).

use std::collections::{BTreeMap, HashMap};

use super::{CONSENTS, CONTACTS, World};
use crate::domain::{Action, Decision, Erasures, EventRecord, Source};
use crate::store::{Changes, Cursor, SharedStore, Store};

/// (contact, consent) → (decision, source).
type Fold = HashMap<(String, String), (Decision, Source)>;

/// The ancestors and descendants of a consent in the simulation's tree.
fn related(consent: &str) -> &'static [&'static str] {
    match consent {
        "marketing" => &["marketing.acme", "marketing.zenith"],
        "marketing.acme" | "marketing.zenith" => &["marketing"],
        _ => &[],
    }
}

/// Everything the store holds now, in sequence order.
fn everything(world: &World) -> Changes {
    world
        .store
        .changes_after(Cursor::default(), usize::MAX)
        .expect("the memory store reads")
}

/// Folds the events up to `through`, checking each against the fold so far.
fn fold(events: &[EventRecord], through: u64) -> Result<Fold, String> {
    let mut states: Fold = HashMap::new();
    for e in events.iter().take_while(|e| e.sequence <= through) {
        let key = (e.contact.to_string(), e.consent.to_string());
        let prev = states.get(&key).map(|(d, _)| *d);
        let wins = prev.is_none_or(|p| e.decision().supersedes(p));
        if e.applied {
            if !wins {
                return Err(format!(
                    "event {} is applied but loses to the state before it ({prev:?})",
                    e.sequence
                ));
            }
            if e.action == Action::Grant && !e.confirmed {
                let withdrew = std::iter::once(e.consent.as_str())
                    .chain(related(e.consent.as_str()).iter().copied())
                    .filter_map(|c| states.get(&(e.contact.to_string(), c.to_owned())))
                    .filter(|(d, s)| d.action == Action::Withdraw && s.is_the_person())
                    .map(|(d, _)| d.occurred_at)
                    .min();
                if e.source.is_a_system() && withdrew.is_some_and(|at| at < e.occurred_at) {
                    return Err(format!(
                        "event {} ({:?}, {:?}) re-subscribed {} over a withdrawal the person made",
                        e.sequence, e.source, e.consent, e.contact
                    ));
                }
                // Only a page's own click confirms (its actor is the
                // page's): a caller naming a page's source does not.
                let by_page = e.actor.ends_with("-page") && e.source.confirms_itself();
                if e.consent.as_str() == "news" && !by_page {
                    return Err(format!(
                        "event {}: a double opt-in grant applied without a confirmation",
                        e.sequence
                    ));
                }
            }
            states.insert(key, (e.decision(), e.source));
        } else if !e.pending && wins {
            return Err(format!(
                "event {} is not applied, yet it supersedes the state before it ({prev:?})",
                e.sequence
            ));
        }
    }
    Ok(states)
}

/// The keyed hash of each contact, as the store names erasures.
fn hashes(world: &World) -> HashMap<[u8; 32], &'static str> {
    let key = world.store.recover().expect("reads").erasure_key;
    let erasures = Erasures::new(&key, []);
    CONTACTS.iter().map(|c| (erasures.hash(c), *c)).collect()
}

pub(super) fn check(world: &World) -> Result<(), String> {
    let all = everything(world);
    let head = all.head;
    // Receipt times grow with sequences, erasures included.
    let mut times: Vec<(u64, i64)> = all
        .events
        .iter()
        .map(|e| (e.sequence, e.recorded_at))
        .collect();
    times.extend(all.erasures.iter().map(|(s, t)| (*s, t.erased_at)));
    times.sort_unstable();
    for pair in times.windows(2) {
        if pair[1].1 <= pair[0].1 {
            return Err(format!(
                "sequence {} was received at {} , not after sequence {} at {}",
                pair[1].0, pair[1].1, pair[0].0, pair[0].1
            ));
        }
    }
    let states = fold(&all.events, u64::MAX)?;
    for contact in CONTACTS {
        let stored: BTreeMap<String, Decision> = world
            .store
            .contact_states(contact)
            .expect("reads")
            .into_iter()
            .map(|s| (s.consent.to_string(), s.decision()))
            .collect();
        let folded: BTreeMap<String, Decision> = states
            .iter()
            .filter(|((c, _), _)| c == contact)
            .map(|((_, k), (d, _))| (k.clone(), *d))
            .collect();
        if stored != folded {
            return Err(format!(
                "the store's states of {contact} {stored:?} are not its history's {folded:?}"
            ));
        }
    }
    // Wordings: one text per version, everywhere.
    let wordings: HashMap<(String, u32), crate::domain::Wording> = world
        .store
        .wordings(None)
        .expect("reads")
        .into_iter()
        .map(|w| ((w.consent.to_string(), w.version), w))
        .collect();
    for e in &all.events {
        if !wordings.contains_key(&(e.consent.to_string(), e.version)) {
            return Err(format!(
                "event {} names {} v{}, a wording the store lacks",
                e.sequence, e.consent, e.version
            ));
        }
    }
    // Erasures: by contact, with their sequences.
    let hashes = hashes(world);
    let erased_at: Vec<(&str, u64)> = all
        .erasures
        .iter()
        .filter_map(|(s, t)| hashes.get(&t.hash).map(|c| (*c, *s)))
        .collect();
    for (contact, at) in &world.erased {
        if let Some(e) = all
            .events
            .iter()
            .find(|e| e.contact.as_str() == contact && e.occurred_at <= *at)
        {
            return Err(format!(
                "event {} of {contact}, from before its erasure at {at}, is kept",
                e.sequence
            ));
        }
    }
    for acked in &world.acked {
        let erased_since = erased_at
            .iter()
            .any(|(c, s)| *c == acked.contact && *s > acked.sequence);
        if erased_since {
            continue;
        }
        match all.events.iter().find(|e| e.sequence == acked.sequence) {
            None => {
                return Err(format!(
                    "sequence {} was acknowledged and is lost",
                    acked.sequence
                ));
            }
            Some(e) if acked.applied && !e.applied => {
                return Err(format!(
                    "sequence {} was answered applied and is not",
                    acked.sequence
                ));
            }
            Some(_) => {}
        }
    }
    // Every node: exactly the fold up to its applied sequence.
    for (n, node) in world.nodes.iter().enumerate() {
        let applied = node.applied();
        if applied > head {
            return Err(format!("node {n} applied {applied}, past the head {head}"));
        }
        let view = fold(&all.events, applied)?;
        let catalog = node.catalog.load();
        for contact in CONTACTS {
            // A node that has not met an erasure yet may still hold what
            // the store has forgotten: its view is older, not wrong.
            if erased_at.iter().any(|(c, s)| *c == contact && *s > applied) {
                continue;
            }
            for consent in CONSENTS {
                // A node whose feed has not brought the first catalog yet
                // knows no consent; then it must hold nothing either.
                let held = catalog
                    .consent_idx(consent)
                    .and_then(|idx| node.index.get(contact, idx))
                    .map(|h| h.decision());
                let want = view
                    .get(&(contact.to_owned(), consent.to_owned()))
                    .map(|(d, _)| *d);
                if held != want {
                    return Err(format!(
                        "node {n} (applied {applied}) holds {held:?} for {contact}/{consent}, its view says {want:?}"
                    ));
                }
            }
        }
        for consent in CONSENTS {
            let Some(w) = catalog.latest_wording(consent) else {
                continue;
            };
            match wordings.get(&(consent.to_owned(), w.version)) {
                Some(stored) if stored.text == w.text && stored.brands == w.brands => {}
                other => {
                    return Err(format!(
                        "node {n} says {consent} v{} reads {:?}; the store has {:?}",
                        w.version,
                        w.text,
                        other.map(|s| &s.text)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Once settled: every node has applied everything and holds the same.
pub(super) fn converged(world: &World) -> Result<(), String> {
    let all = everything(world);
    let stored_catalog = world.store.recover().expect("reads").catalog;
    for (n, node) in world.nodes.iter().enumerate() {
        if node.applied() != all.head {
            return Err(format!(
                "node {n} applied {} of {} after settling",
                node.applied(),
                all.head
            ));
        }
        let catalog = node.catalog.load();
        if Some(catalog.spec()) != stored_catalog.as_ref() {
            return Err(format!("node {n}'s catalog is not the store's"));
        }
        for contact in CONTACTS {
            let mut held: Vec<(String, crate::domain::PendingRecord)> = node
                .index
                .pending(contact)
                .into_iter()
                .map(|(idx, p)| (catalog.consent_id(idx).to_owned(), p))
                .collect();
            held.sort_by(|a, b| a.0.cmp(&b.0));
            let stored = world.store.contact_pending(contact).expect("reads");
            if held != stored {
                return Err(format!(
                    "node {n} holds pending grants {held:?} of {contact}; the store {stored:?}"
                ));
            }
        }
    }
    Ok(())
}
