//! The cases of the suite about reading a store out: everything in pages
//! for a move ([`Transfer`]), an empty store adopting another's erasure
//! key and tombstones, and the pending grants derived from the events.

use super::*;

/// What moving the data to another store reads (every event, every key,
/// every tombstone, in pages) and what the new store adopts.
pub(crate) fn everything_can_be_read_out_and_adopted(f: &mut impl Fixture) {
    let store = f.fresh();
    let events: Vec<EventRecord> = (1..=7)
        .map(|n| {
            event(
                &format!("c{}", n % 3),
                "marketing",
                Action::Grant,
                n,
                n as u64,
            )
        })
        .collect();
    let mut b = batch(events.clone());
    b.idempotency = vec![
        ("b-key".into(), key_record(2, 3)),
        ("a-key".into(), key_record(1, 2)),
        ("c-key".into(), key_record(3, 4)),
    ];
    store.commit(&b).unwrap();
    let tombstone = Tombstone {
        hash: [7; 32],
        erased_at: 900,
        reason: "art. 17, ticket 4".into(),
        // The next number after the 7 events (a shared store numbers it
        // itself, the same).
        sequence: 8,
    };
    store.erase("gone-before", &tombstone).unwrap();

    let mut read = plain(store.events_after(0, 4).unwrap());
    assert_eq!(read.len(), 4);
    read.extend(plain(store.events_after(4, 100).unwrap()));
    assert_eq!(read, events, "every event, in sequence order, in pages");
    assert!(plain(store.events_after(7, 10).unwrap()).is_empty());
    for e in &events {
        let at = store
            .event_at(e.sequence)
            .unwrap()
            .map(|a| plain(vec![a]).remove(0));
        assert_eq!(at.as_ref(), Some(e));
    }
    assert_eq!(store.event_at(0).unwrap(), None);
    assert_eq!(store.event_at(99).unwrap(), None, "past the last");

    let first = store.idempotency_keys("", 2).unwrap();
    let names: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["a-key", "b-key"]);
    assert_eq!(first[0].1, key_record(1, 2));
    let rest = store.idempotency_keys("b-key", 2).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, "c-key");
    assert_eq!(store.tombstones().unwrap(), vec![tombstone.clone()]);

    // A fresh store takes over the erasure key and the tombstones.
    let key = store.recover().unwrap().erasure_key;
    drop(store);
    let target = f.fresh();
    assert_ne!(target.recover().unwrap().erasure_key, key);
    target
        .adopt(&key, std::slice::from_ref(&tombstone), &[])
        .unwrap();
    let recovered = target.recover().unwrap();
    assert_eq!(recovered.erasure_key, key);
    assert_eq!(recovered.erasures, vec![([7; 32], 900)]);
    assert_eq!(target.tombstones().unwrap(), vec![tombstone]);
}

/// Every pending record the store feeds at start, sorted.
fn pending_loaded(store: &dyn Store) -> Vec<(String, String, PendingRecord)> {
    let mut seen = Vec::new();
    store
        .load_states(&mut |c, k, d| {
            if let Loaded::Pending(p) = d {
                seen.push((c.to_owned(), k.to_owned(), p))
            }
        })
        .unwrap();
    seen.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    seen
}

fn pending(who: &str, consent: &str, at: i64, sequence: u64, link: bool) -> EventRecord {
    EventRecord {
        applied: false,
        pending: true,
        confirmation_link: link,
        chain: None,
        ..event(who, consent, Action::Grant, at, sequence)
    }
}

pub(crate) fn pending_grants_are_kept_from_the_events(f: &mut impl Fixture) {
    let store = f.fresh();
    // Two pending grants of one consent (a link for the first only), one of
    // another; in the next batch a confirmation ends the first wait, and a
    // new pending grant after it starts a fresh one in the same batch.
    store
        .commit(&batch(vec![
            pending("pia", "marketing.orbit", 10, 1, true),
            pending("pia", "marketing.orbit", 20, 2, false),
            pending("pia", "surveys", 30, 3, true),
            pending("rex", "marketing", 40, 4, true),
        ]))
        .unwrap();
    let record = |count, last_at, link_at| PendingRecord {
        count,
        last_at,
        link_at,
    };
    assert_eq!(
        store.contact_pending("pia").unwrap(),
        vec![
            ("marketing.orbit".to_owned(), record(2, 21, 11)),
            ("surveys".to_owned(), record(1, 31, 31)),
        ]
    );
    let mut confirm = event("rex", "marketing", Action::Grant, 50, 5);
    confirm.source = Source::ConfirmationLink;
    store
        .commit(&batch(vec![
            event("pia", "marketing.orbit", Action::Grant, 50, 6),
            pending("pia", "marketing.orbit", 60, 7, true),
            confirm,
        ]))
        .unwrap();
    assert!(
        store.contact_pending("rex").unwrap().is_empty(),
        "confirmed"
    );
    let history = plain(store.history("pia").unwrap());
    assert!(history[0].pending && !history[0].applied && history[0].confirmation_link);
    assert!(!history[1].confirmation_link, "recorded as it was");
    drop(store);

    let store = f.reopen();
    assert_eq!(
        pending_loaded(&*store),
        vec![
            (
                "pia".to_owned(),
                "marketing.orbit".to_owned(),
                record(1, 61, 61)
            ),
            ("pia".to_owned(), "surveys".to_owned(), record(1, 31, 31)),
        ],
        "a decision ended the first wait; the grant after it waits alone"
    );
    assert_eq!(loaded(&*store).len(), 2, "pending grants are no states");
    // Erasure forgets them with the rest.
    store
        .erase(
            "pia",
            &Tombstone {
                hash: [3; 32],
                erased_at: 100,
                reason: "art. 17".into(),
                sequence: 0,
            },
        )
        .unwrap();
    assert!(store.contact_pending("pia").unwrap().is_empty());
    assert!(pending_loaded(&*store).is_empty());
}
