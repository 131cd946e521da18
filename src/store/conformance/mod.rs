//! The one conformance suite every [`Store`] backend passes (the shape of
//! spicedb's `pkg/datastore/test`). A backend module provides a [`Fixture`]
//! and invokes [`conformance_suite!`], which expands to one `#[test]` per
//! case, so a failure names the backend and the case.
//!
//! The suite states the contract the writer and the authority rely on:
//! what a commit makes readable (also after a reopen, which for a durable
//! backend is a restart), how superseded events, idempotency keys, the
//! catalog, retention and erasure behave.

use std::sync::Arc;

use super::{IdempotencyRecord, Loaded, Store, Tombstone, Transfer, WriteBatch};
use crate::domain::{
    Action, CatalogSpec, ConsentId, ContactId, Decision, EventRecord, PendingRecord, Source,
    Wording,
};

/// How the suite gets stores of one backend.
pub(crate) trait Fixture {
    /// A store over empty storage.
    fn fresh(&mut self) -> Arc<dyn Transfer>;
    /// The store over the same storage as the last [`Fixture::fresh`], as a
    /// restarted process sees it. The caller has dropped its handles.
    fn reopen(&mut self) -> Arc<dyn Transfer>;
    /// Whether the backend can run here (a database server may be missing:
    /// then each case prints SKIPPED).
    fn available(&self) -> bool {
        true
    }
}

/// One `#[test]` per case of the suite, over the fixture `$fixture`.
macro_rules! conformance_suite {
    ($fixture:expr) => {
        $crate::store::conformance::conformance_suite!(@cases $fixture;
            empty_store,
            commit_reads_back_after_reopen,
            superseded_events_are_history_not_state,
            one_contact_twice_in_one_batch,
            catalog_is_kept_and_replaced,
            idempotency_retention,
            erase_forgets_one_contact_only,
            wordings_are_kept_for_good,
            history_comes_in_pages,
            everything_can_be_read_out_and_adopted,
            pending_grants_are_kept_from_the_events,
            the_feed_numbers_erasures_among_events,
            an_erasure_last_moves_the_counter,
            states_come_a_page_of_contacts_at_a_time,
            the_chain_links_every_record_and_verifies,
        );
    };
    (@cases $fixture:expr; $($case:ident),* $(,)?) => {$(
        #[test]
        fn $case() {
            let mut fixture = $fixture;
            if !$crate::store::conformance::Fixture::available(&fixture) {
                println!("SKIPPED: {}: the backend cannot run here", stringify!($case));
                return;
            }
            $crate::store::conformance::$case(&mut fixture);
        }
    )*};
}
pub(crate) use conformance_suite;

mod chain;
mod feed;
mod readout;
pub(crate) use chain::the_chain_links_every_record_and_verifies;
pub(crate) use feed::{
    an_erasure_last_moves_the_counter, states_come_a_page_of_contacts_at_a_time,
    the_feed_numbers_erasures_among_events,
};
pub(crate) use readout::{
    everything_can_be_read_out_and_adopted, pending_grants_are_kept_from_the_events,
};

fn contact(s: &str) -> ContactId {
    ContactId::parse("contact", s).unwrap()
}

/// A recorded event of `who` on `consent` at `at` (the suite's, and the
/// stores' own tests').
pub(crate) fn event(
    who: &str,
    consent: &str,
    action: Action,
    at: i64,
    sequence: u64,
) -> EventRecord {
    EventRecord {
        contact: contact(who),
        consent: ConsentId::parse("consent", consent).unwrap(),
        action,
        occurred_at: at,
        recorded_at: at + 1,
        source: Source::Form,
        evidence: [("ip".to_string(), "10.0.0.1".to_string())].into(),
        version: 1,
        sequence,
        idempotency_key: None,
        applied: true,
        actor: "crm-sync".into(),
        pending: false,
        confirmed: false,
        confirmation_link: false,
        chain: None,
    }
}

/// Events as committed: the chain value every read carries (checked
/// present: each event is linked) taken off.
pub(crate) fn plain(events: Vec<EventRecord>) -> Vec<EventRecord> {
    events
        .into_iter()
        .map(|e| {
            assert!(
                e.chain.is_some(),
                "a read carries the chain of {}",
                e.sequence
            );
            EventRecord { chain: None, ..e }
        })
        .collect()
}

fn batch(events: Vec<EventRecord>) -> WriteBatch {
    let next_sequence = events.iter().map(|e| e.sequence + 1).max().unwrap_or(1);
    WriteBatch {
        events,
        next_sequence,
        ..Default::default()
    }
}

fn key_record(sequence: u64, recorded_at: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        sequence,
        recorded_at,
        fingerprint: [sequence as u8; 32],
    }
}

/// Every state the store feeds at start, sorted.
fn loaded(store: &dyn Store) -> Vec<(String, String, Decision)> {
    let mut seen = Vec::new();
    let n = store
        .load_states(&mut |c, k, d| {
            if let Loaded::State { decision, .. } = d {
                seen.push((c.to_owned(), k.to_owned(), decision))
            }
        })
        .unwrap();
    assert_eq!(n as usize, seen.len(), "load_states counts what it feeds");
    seen.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    seen
}

pub(crate) fn empty_store(f: &mut impl Fixture) {
    let store = f.fresh();
    let r = store.recover().unwrap();
    assert!(r.catalog.is_none());
    assert_eq!((r.next_sequence, r.contacts, r.last_recorded_at), (1, 0, 0));
    assert!(r.erasures.is_empty());
    assert!(loaded(&*store).is_empty());
    assert!(plain(store.history("nobody").unwrap()).is_empty());
    assert!(store.contact_states("nobody").unwrap().is_empty());
    assert_eq!(store.state("nobody", "marketing").unwrap(), None);
    assert_eq!(store.idempotency("k").unwrap(), None);
    let key = r.erasure_key;
    drop(store);
    assert_eq!(
        f.reopen().recover().unwrap().erasure_key,
        key,
        "erasure key is kept"
    );
}

pub(crate) fn commit_reads_back_after_reopen(f: &mut impl Fixture) {
    let store = f.fresh();
    let mut grant = event("anna@example.com", "marketing", Action::Grant, 10, 1);
    grant.idempotency_key = Some("k1".into());
    let other = event("anna", "marketing", Action::Withdraw, 11, 2);
    let mut b = batch(vec![grant.clone(), other.clone()]);
    b.idempotency.push(("k1".into(), key_record(1, 11)));
    store.commit(&b).unwrap();
    drop(store);

    let store = f.reopen();
    let r = store.recover().unwrap();
    assert_eq!(
        (r.next_sequence, r.contacts, r.last_recorded_at),
        (3, 2, 12)
    );
    assert_eq!(
        plain(store.history("anna@example.com").unwrap()),
        vec![grant.clone()]
    );
    assert_eq!(
        plain(store.history("anna").unwrap()),
        vec![other],
        "no prefix bleed"
    );
    assert_eq!(
        store.contact_states("anna@example.com").unwrap(),
        vec![grant.state()]
    );
    assert_eq!(
        store.state("anna@example.com", "marketing").unwrap(),
        Some(grant.state())
    );
    assert_eq!(store.state("anna@example.com", "surveys").unwrap(), None);
    assert_eq!(store.idempotency("k1").unwrap(), Some(key_record(1, 11)));
    assert_eq!(store.idempotency("k2").unwrap(), None);
    assert_eq!(
        loaded(&*store),
        vec![
            (
                "anna".into(),
                "marketing".into(),
                Decision {
                    occurred_at: 11,
                    action: Action::Withdraw
                }
            ),
            (
                "anna@example.com".into(),
                "marketing".into(),
                Decision {
                    occurred_at: 10,
                    action: Action::Grant
                }
            ),
        ]
    );
}

pub(crate) fn superseded_events_are_history_not_state(f: &mut impl Fixture) {
    let store = f.fresh();
    let newer = event("bob", "marketing", Action::Withdraw, 50, 1);
    let mut older = event("bob", "marketing", Action::Grant, 20, 2);
    older.applied = false;
    store.commit(&batch(vec![newer.clone()])).unwrap();
    store.commit(&batch(vec![older.clone()])).unwrap();
    assert_eq!(
        plain(store.history("bob").unwrap()),
        vec![newer.clone(), older]
    );
    assert_eq!(store.contact_states("bob").unwrap(), vec![newer.state()]);
    assert_eq!(loaded(&*store).len(), 1);
}

pub(crate) fn one_contact_twice_in_one_batch(f: &mut impl Fixture) {
    let store = f.fresh();
    let first = event("cleo", "marketing", Action::Grant, 5, 7);
    let second = event("cleo", "marketing", Action::Withdraw, 6, 8);
    let brand = event("cleo", "marketing.acme", Action::Grant, 6, 9);
    let between = event("dan", "marketing", Action::Grant, 6, 10);
    let after = event("cleo", "surveys", Action::Grant, 7, 11);
    store
        .commit(&batch(vec![
            first.clone(),
            second.clone(),
            brand.clone(),
            between.clone(),
            after.clone(),
        ]))
        .unwrap();
    assert_eq!(
        plain(store.history("cleo").unwrap()),
        vec![first, second.clone(), brand.clone(), after.clone()]
    );
    let mut states = store.contact_states("cleo").unwrap();
    states.sort_by(|a, b| a.consent.as_str().cmp(b.consent.as_str()));
    assert_eq!(states, vec![second.state(), brand.state(), after.state()]);
    assert_eq!(store.contact_states("dan").unwrap(), vec![between.state()]);
    assert_eq!(store.recover().unwrap().next_sequence, 12);
}

pub(crate) fn catalog_is_kept_and_replaced(f: &mut impl Fixture) {
    let store = f.fresh();
    let spec = |channel: &str| CatalogSpec {
        channels: vec![channel.into()],
        ..Default::default()
    };
    assert_eq!(
        store.catalog_at(500).unwrap(),
        None,
        "none was ever applied"
    );
    for (channel, next_sequence, at) in [("email", 1, 100), ("sms", 4, 200)] {
        store
            .commit(&WriteBatch {
                catalog: Some(spec(channel)),
                catalog_at: at,
                next_sequence,
                ..Default::default()
            })
            .unwrap();
    }
    drop(store);
    let store = f.reopen();
    let r = store.recover().unwrap();
    assert_eq!(r.catalog, Some(spec("sms")));
    assert_eq!(r.next_sequence, 4);
    // Every catalog is kept with when it came into force (as-of reads).
    assert_eq!(store.catalog_at(150).unwrap(), Some((100, spec("email"))));
    assert_eq!(store.catalog_at(200).unwrap(), Some((200, spec("sms"))));
    assert_eq!(
        store.catalog_at(i64::MAX).unwrap(),
        Some((200, spec("sms")))
    );
    assert_eq!(
        store.catalog_at(50).unwrap(),
        Some((100, spec("email"))),
        "before the first kept: the earliest"
    );
}

pub(crate) fn idempotency_retention(f: &mut impl Fixture) {
    let store = f.fresh();
    let keys = [
        ("old-1", 100),
        ("old-2", 200),
        ("old-3", 300),
        ("new", 1_000),
    ];
    store
        .commit(&WriteBatch {
            idempotency: keys
                .iter()
                .enumerate()
                .map(|(i, (k, at))| (k.to_string(), key_record(i as u64 + 1, *at)))
                .collect(),
            next_sequence: 5,
            ..Default::default()
        })
        .unwrap();
    // Oldest first, at most `max` at a time, only before the cutoff.
    assert_eq!(store.prune_idempotency(500, 2).unwrap(), 2);
    assert_eq!(store.idempotency("old-1").unwrap(), None);
    assert_eq!(store.idempotency("old-2").unwrap(), None);
    assert!(store.idempotency("old-3").unwrap().is_some());
    assert_eq!(store.prune_idempotency(500, 2).unwrap(), 1);
    assert_eq!(store.prune_idempotency(500, 2).unwrap(), 0);
    drop(store);
    let store = f.reopen();
    assert_eq!(store.idempotency("old-3").unwrap(), None);
    assert_eq!(
        store.idempotency("new").unwrap(),
        Some(key_record(4, 1_000))
    );
}

pub(crate) fn erase_forgets_one_contact_only(f: &mut impl Fixture) {
    let store = f.fresh();
    let mut gone = event("erin", "marketing", Action::Grant, 10, 1);
    gone.idempotency_key = Some("erin-key".into());
    let mut kept = event("fred", "marketing", Action::Grant, 11, 2);
    kept.idempotency_key = Some("fred-key".into());
    let mut b = batch(vec![gone, kept.clone()]);
    b.idempotency = vec![
        ("erin-key".into(), key_record(1, 11)),
        ("fred-key".into(), key_record(2, 12)),
    ];
    store.commit(&b).unwrap();
    let tombstone = Tombstone {
        hash: [9; 32],
        erased_at: 500,
        reason: "art. 17 request".into(),
        sequence: 0,
    };
    assert!(store.erase("erin", &tombstone).unwrap());
    // The purge leaves every live record readable, and has nothing left to
    // do the second time.
    store.purge_erased().unwrap();
    assert!(!store.purge_erased().unwrap());
    assert_eq!(plain(store.history("fred").unwrap()), vec![kept.clone()]);
    assert!(plain(store.history("erin").unwrap()).is_empty());
    assert!(
        !store
            .erase(
                "nobody",
                &Tombstone {
                    hash: [8; 32],
                    ..tombstone.clone()
                }
            )
            .unwrap()
    );
    drop(store);

    let store = f.reopen();
    assert!(plain(store.history("erin").unwrap()).is_empty());
    assert!(store.contact_states("erin").unwrap().is_empty());
    assert_eq!(store.idempotency("erin-key").unwrap(), None);
    assert_eq!(plain(store.history("fred").unwrap()), vec![kept]);
    assert!(store.idempotency("fred-key").unwrap().is_some());
    let r = store.recover().unwrap();
    assert_eq!(r.contacts, 1);
    let mut erasures = r.erasures;
    erasures.sort();
    assert_eq!(erasures, vec![([8; 32], 500), ([9; 32], 500)]);
    assert_eq!(
        r.last_recorded_at, 500,
        "an erasure time counts as recorded"
    );
    assert_eq!(loaded(&*store).len(), 1);
    // A pruning pass finds no key of the erased contact left behind.
    assert_eq!(store.prune_idempotency(i64::MAX, 100).unwrap(), 1);
}

fn wording(consent: &str, version: u32, at: i64) -> Wording {
    Wording {
        consent: ConsentId::parse("consent", consent).unwrap(),
        version,
        title: format!("{consent} v{version}"),
        text: format!("I agree to {consent}, as worded in v{version}"),
        parent: None,
        channels: vec!["email".into(), "sms".into()],
        brands: vec!["acme".into()],
        in_force_from: at,
    }
}

pub(crate) fn wordings_are_kept_for_good(f: &mut impl Fixture) {
    let store = f.fresh();
    let first = vec![wording("marketing", 1, 100), wording("surveys", 1, 100)];
    let mut with_first = WriteBatch {
        wordings: first.clone(),
        next_sequence: 1,
        ..Default::default()
    };
    with_first.catalog = Some(CatalogSpec::default());
    store.commit(&with_first).unwrap();
    let mut child = wording("marketing.acme", 1, 200);
    child.parent = Some("marketing".into());
    store
        .commit(&WriteBatch {
            wordings: vec![wording("marketing", 2, 200), child.clone()],
            next_sequence: 1,
            ..Default::default()
        })
        .unwrap();
    // An erasure touches no wording.
    let tombstone = Tombstone {
        hash: [1; 32],
        erased_at: 300,
        reason: "r".into(),
        sequence: 0,
    };
    store.erase("anyone", &tombstone).unwrap();
    drop(store);

    let store = f.reopen();
    assert_eq!(
        store.wordings(Some("marketing")).unwrap(),
        vec![wording("marketing", 1, 100), wording("marketing", 2, 200)],
        "oldest first"
    );
    assert_eq!(
        store.wordings(Some("marketing.acme")).unwrap(),
        vec![child.clone()]
    );
    assert!(
        store.wordings(Some("market")).unwrap().is_empty(),
        "no prefix bleed"
    );
    assert_eq!(store.wordings(None).unwrap().len(), 4);
    let r = store.recover().unwrap();
    assert_eq!(
        r.wordings,
        vec![
            wording("marketing", 2, 200),
            child,
            wording("surveys", 1, 100)
        ],
        "the latest of each consent, by id"
    );
    assert_eq!(r.last_recorded_at, 300);
}

pub(crate) fn history_comes_in_pages(f: &mut impl Fixture) {
    let store = f.fresh();
    // 25 events of one contact over five batches, another contact between.
    let mut n = 0;
    for _ in 0..5 {
        let mut events = Vec::new();
        for _ in 0..5 {
            n += 1;
            events.push(event("busy", "marketing", Action::Grant, n, n as u64));
            n += 1;
            events.push(event("other", "marketing", Action::Grant, n, n as u64));
        }
        store.commit(&batch(events)).unwrap();
    }
    drop(store);
    let store = f.reopen();
    let all = plain(store.history("busy").unwrap());
    assert_eq!(all.len(), 25);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = plain(store.history_page("busy", after, 10).unwrap());
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        after = last.sequence;
        paged.extend(page);
    }
    assert_eq!(paged, all, "the pages are the history, in order, once");
    assert_eq!(plain(store.history_page("busy", 0, 10).unwrap()).len(), 10);
    assert!(plain(store.history_page("busy", u64::MAX, 10).unwrap()).is_empty());
    assert!(plain(store.history_page("nobody", 0, 10).unwrap()).is_empty());
    assert!(
        plain(store.history_page("bus", 0, 10).unwrap()).is_empty(),
        "no prefix bleed"
    );
}
