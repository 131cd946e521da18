//! The case of the suite about the change feed Watch reads ([`Store::feed`]):
//! events in sequence order, erasures numbered among them, pages that say
//! how far they reach; an erasure's number survives a reopen and a move.

use super::*;

pub(crate) fn the_feed_numbers_erasures_among_events(f: &mut impl Fixture) {
    let store = f.fresh();
    let mut b = batch(vec![
        event("ann", "marketing", Action::Grant, 10, 1),
        event("eve", "marketing", Action::Grant, 11, 2),
    ]);
    b.next_sequence = 3;
    store.commit(&b).unwrap();
    // The erasure takes sequence 3 (a shared store numbers it itself, with
    // the same next number).
    let tombstone = Tombstone {
        hash: [5; 32],
        erased_at: 20,
        reason: "art. 17".into(),
        sequence: 3,
    };
    store.erase("eve", &tombstone).unwrap();
    let mut b = batch(vec![event("bob", "marketing", Action::Grant, 30, 4)]);
    b.next_sequence = 5;
    store.commit(&b).unwrap();

    let all = store.feed(0, 100).unwrap();
    assert_eq!(
        all.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 4],
        "the erased contact's event is gone"
    );
    assert_eq!(all.erasures, vec![(3, [5; 32])]);
    assert_eq!(all.through, 4);
    // A page of one event reaches as far as it: the erasure is not in it.
    let first = store.feed(0, 1).unwrap();
    assert_eq!((first.events.len(), first.through), (1, 1));
    assert!(first.erasures.is_empty());
    let rest = store.feed(first.through, 1).unwrap();
    assert_eq!(rest.events[0].sequence, 4);
    assert_eq!(rest.erasures, vec![(3, [5; 32])]);
    // Past the head: nothing, through the head.
    let none = store.feed(4, 100).unwrap();
    assert!(none.events.is_empty() && none.erasures.is_empty());
    assert_eq!(none.through, 4);
    drop(store);

    // After a reopen the numbers stand, and the counter is past them.
    let store = f.reopen();
    assert_eq!(store.feed(2, 100).unwrap().erasures, vec![(3, [5; 32])]);
    assert_eq!(store.recover().unwrap().next_sequence, 5);
    let kept: Vec<_> = store.tombstones().unwrap();
    assert_eq!(
        kept.iter()
            .map(|t| (t.hash, t.sequence))
            .collect::<Vec<_>>(),
        vec![([5; 32], 3)],
        "the tombstone carries its number (a move keeps it)"
    );
}

/// An erasure that is the last record: the counter moves past it, so the
/// next event never takes its number.
pub(crate) fn an_erasure_last_moves_the_counter(f: &mut impl Fixture) {
    let store = f.fresh();
    let mut b = batch(vec![event("ann", "marketing", Action::Grant, 10, 1)]);
    b.next_sequence = 2;
    store.commit(&b).unwrap();
    store
        .erase(
            "ann",
            &Tombstone {
                hash: [6; 32],
                erased_at: 20,
                reason: String::new(),
                sequence: 2,
            },
        )
        .unwrap();
    drop(store);
    let store = f.reopen();
    assert_eq!(store.recover().unwrap().next_sequence, 3);
    assert_eq!(store.feed(0, 10).unwrap().erasures, vec![(2, [6; 32])]);
}

/// What a snapshot reads ([`Store::states_after`]): contacts in id order,
/// a page at a time, each with every state it holds; an erased contact is
/// gone; and each contact's states are its history folded.
pub(crate) fn states_come_a_page_of_contacts_at_a_time(f: &mut impl Fixture) {
    let store = f.fresh();
    let mut superseded = event("bob", "marketing", Action::Grant, 5, 4);
    superseded.applied = false;
    store
        .commit(&batch(vec![
            event("cat", "marketing", Action::Grant, 10, 1),
            event("ann", "marketing", Action::Grant, 11, 2),
            event("bob", "marketing", Action::Withdraw, 12, 3),
            superseded,
            event("ann", "marketing.acme", Action::Withdraw, 13, 5),
            event("dan", "marketing", Action::Grant, 14, 6),
        ]))
        .unwrap();
    let tombstone = Tombstone {
        hash: [9; 32],
        erased_at: 20,
        reason: "art. 17".into(),
        sequence: 7,
    };
    store.erase("dan", &tombstone).unwrap();
    drop(store);
    let store = f.reopen();
    let first = store.states_after("", 2).unwrap();
    let names: Vec<&str> = first.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["ann", "bob"]);
    let rest = store.states_after("bob", 2).unwrap();
    assert_eq!(rest.len(), 1, "dan was erased");
    assert_eq!(rest[0].0, "cat");
    assert!(store.states_after("cat", 2).unwrap().is_empty());
    for (contact, mut states) in first.into_iter().chain(rest) {
        states.sort_by_key(|s| s.sequence);
        let history = plain(store.history(&contact).unwrap());
        assert_eq!(
            crate::domain::fold(&history, |_| true).states,
            states,
            "{contact}: its history folded is its states"
        );
    }
}
