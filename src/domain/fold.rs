//! A contact's states rebuilt from its history: what a snapshot at a
//! sequence and an as-of read at a time both need (DESIGN.md §10).
//!
//! Every event was ruled when it was recorded: `applied` says whether it
//! became the state of its (contact, consent) then. Folding the events up
//! to a point, in recording order, therefore gives exactly the states the
//! store held at that point, and [`PendingRecord::after`] the grants that
//! waited, without ruling anything again.

use std::collections::BTreeMap;

use super::{EventRecord, PendingRecord, StateRecord};

/// What a contact held at one point of its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Folded {
    /// Its states (consent decisions and address marks), by sequence.
    pub states: Vec<StateRecord>,
    /// Its grants waiting for confirmation, by consent id.
    pub pending: Vec<(String, PendingRecord)>,
}

/// Folds `events` (one contact's, in recording order) that `keep` passes.
/// `keep` is asked in order and the fold stops at the first event it
/// refuses: a point of the history is a prefix of it.
pub fn fold<'a>(
    events: impl IntoIterator<Item = &'a EventRecord>,
    mut keep: impl FnMut(&EventRecord) -> bool,
) -> Folded {
    let mut states: BTreeMap<&str, &EventRecord> = BTreeMap::new();
    let mut pending: BTreeMap<&str, PendingRecord> = BTreeMap::new();
    for e in events {
        if !keep(e) {
            break;
        }
        if e.applied {
            states.insert(e.consent.as_str(), e);
        }
        let consent = e.consent.as_str();
        match PendingRecord::after(pending.get(consent).copied(), e) {
            Some(p) => {
                pending.insert(consent, p);
            }
            None => {
                pending.remove(consent);
            }
        }
    }
    let mut states: Vec<StateRecord> = states.into_values().map(EventRecord::state).collect();
    states.sort_unstable_by_key(|s| s.sequence);
    Folded {
        states,
        pending: pending
            .into_iter()
            .map(|(c, p)| (c.to_owned(), p))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Action, ConsentId, ContactId, Evidence, Source};

    fn event(
        sequence: u64,
        consent: &str,
        action: Action,
        applied: bool,
        pending: bool,
    ) -> EventRecord {
        EventRecord {
            contact: ContactId::parse("contact_id", "c-1").unwrap(),
            consent: ConsentId::parse("consent_id", consent).unwrap(),
            action,
            occurred_at: sequence as i64 * 10,
            recorded_at: sequence as i64 * 10,
            source: Source::Api,
            evidence: Evidence::default(),
            version: 1,
            sequence,
            idempotency_key: None,
            applied,
            actor: String::new(),
            pending,
            confirmed: false,
            confirmation_link: false,
            chain: None,
        }
    }

    #[test]
    fn the_last_applied_event_of_each_consent_is_its_state_at_each_point() {
        let history = [
            event(1, "news", Action::Grant, true, false),
            event(2, "offers", Action::Grant, false, true),
            event(3, "news", Action::Grant, false, false),
            event(4, "news", Action::Withdraw, true, false),
            event(5, "offers", Action::Grant, true, false),
        ];
        let at = |n: u64| fold(&history, |e| e.sequence <= n);
        assert_eq!(at(0), Folded::default());
        let one = at(1);
        assert_eq!(one.states, vec![history[0].state()]);
        assert!(one.pending.is_empty());
        let two = at(2);
        assert_eq!(two.pending.len(), 1);
        assert_eq!(two.pending[0].0, "offers");
        assert_eq!(two.pending[0].1.count, 1);
        // A superseded event (3) is history, not state.
        assert_eq!(at(3).states, vec![history[0].state()]);
        assert_eq!(at(4).states, vec![history[3].state()]);
        let five = at(5);
        assert_eq!(five.states, vec![history[3].state(), history[4].state()]);
        assert!(five.pending.is_empty(), "a decision ends the wait");
    }
}
