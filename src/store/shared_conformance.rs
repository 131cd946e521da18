//! The conformance suite of [`SharedStore`]: what several writers on one
//! store rely on (DESIGN.md §5, "one view per commit"). The shared memory
//! store and PostgreSQL pass it alike, so the simulation test, which runs
//! nodes over the memory store, tells the truth about PostgreSQL too.
//!
//! Each case gets two handles on one store, as two nodes hold them.

use std::sync::Arc;
use std::time::Duration;

use super::{Changes, Cursor, SharedStore, StoreError, Tombstone, Write, WriteBatch};
use crate::domain::{Action, CatalogSpec, ConsentId, ContactId, EventRecord, Source, Wording};
use crate::store::conformance::plain;

/// How the suite gets two nodes' handles on one fresh store.
pub(crate) trait SharedFixture {
    /// Two handles on one store over empty storage.
    fn pair(&mut self) -> (Arc<dyn SharedStore>, Arc<dyn SharedStore>);
    /// Whether the backend can run here.
    fn available(&self) -> bool {
        true
    }
}

/// One `#[test]` per case, over the fixture `$fixture`.
macro_rules! shared_conformance_suite {
    ($fixture:expr) => {
        $crate::store::shared_conformance::shared_conformance_suite!(@cases $fixture;
            a_commit_rules_on_what_the_other_node_committed,
            a_batch_numbered_on_a_stale_view_is_refused_whole,
            the_lock_is_held_from_the_view_to_the_commit,
            erasures_and_catalogs_reach_the_view_and_the_feed,
            one_wording_version_names_one_text,
            the_feed_comes_in_pages,
            link_keys_are_shared,
        );
    };
    (@cases $fixture:expr; $($case:ident),* $(,)?) => {$(
        #[test]
        fn $case() {
            let mut fixture = $fixture;
            if !$crate::store::shared_conformance::SharedFixture::available(&fixture) {
                println!("SKIPPED: {}: the backend cannot run here", stringify!($case));
                return;
            }
            $crate::store::shared_conformance::$case(&mut fixture);
        }
    )*};
}
pub(crate) use shared_conformance_suite;

fn event(who: &str, at: i64, sequence: u64) -> EventRecord {
    EventRecord {
        contact: ContactId::parse("contact", who).unwrap(),
        consent: ConsentId::parse("consent", "marketing").unwrap(),
        action: Action::Grant,
        occurred_at: at,
        recorded_at: at,
        source: Source::Api,
        evidence: Default::default(),
        version: 1,
        sequence,
        idempotency_key: None,
        applied: true,
        actor: "node".into(),
        pending: false,
        confirmed: false,
        confirmation_link: false,
        chain: None,
    }
}

/// A batch of grants for `who`, numbered from the view's head.
fn grants(view: &Changes, who: &[&str]) -> Write {
    let first = view.head + 1;
    let events: Vec<EventRecord> = who
        .iter()
        .enumerate()
        .map(|(i, w)| event(w, 100 + i as i64, first + i as u64))
        .collect();
    Write::Batch(WriteBatch {
        next_sequence: first + events.len() as u64,
        events,
        ..Default::default()
    })
}

fn sequences(changes: &Changes) -> Vec<u64> {
    changes.events.iter().map(|e| e.sequence).collect()
}

pub(crate) fn a_commit_rules_on_what_the_other_node_committed(f: &mut impl SharedFixture) {
    let (a, b) = f.pair();
    let start = Cursor::default();
    let mut seen_by_a = None;
    let committed = a
        .commit_on_latest(start, &mut |view| {
            seen_by_a = Some(sequences(&view));
            grants(&view, &["anna", "bob"])
        })
        .unwrap();
    assert_eq!(seen_by_a, Some(vec![]), "nothing before");
    assert_eq!(committed.first_sequence, 1);
    // B has applied nothing yet: its commit's view brings A's two events,
    // and it numbers after them.
    let mut seen_by_b = None;
    let committed = b
        .commit_on_latest(start, &mut |view| {
            seen_by_b = Some((sequences(&view), view.head, view.through));
            grants(&view, &["carl"])
        })
        .unwrap();
    assert_eq!(seen_by_b, Some((vec![1, 2], 2, 2)));
    assert_eq!(committed.first_sequence, 3);
    // A, at its own commit's end, catches up on B's alone.
    let mut seen = None;
    a.commit_on_latest(
        Cursor {
            sequence: 2,
            catalog_version: 0,
        },
        &mut |view| {
            seen = Some(sequences(&view));
            Write::Nothing
        },
    )
    .unwrap();
    assert_eq!(seen, Some(vec![3]));
    assert_eq!(
        a.next_sequence().unwrap(),
        4,
        "nothing written changes nothing"
    );
    assert_eq!(b.contact_states("carl").unwrap()[0].sequence, 3);
}

pub(crate) fn a_batch_numbered_on_a_stale_view_is_refused_whole(f: &mut impl SharedFixture) {
    let (a, b) = f.pair();
    a.commit_on_latest(Cursor::default(), &mut |view| grants(&view, &["anna"]))
        .unwrap();
    // A writer that ignores its view and numbers from 1 again.
    let stale = b.commit_on_latest(Cursor::default(), &mut |_| {
        Write::Batch(WriteBatch {
            events: vec![event("bob", 100, 1)],
            next_sequence: 2,
            ..Default::default()
        })
    });
    assert!(
        matches!(&stale, Err(StoreError::Corrupt { what, .. }) if what.contains("stale view")),
        "{stale:?}"
    );
    assert!(
        plain(b.history("bob").unwrap()).is_empty(),
        "nothing of it kept"
    );
    assert_eq!(b.next_sequence().unwrap(), 2);
}

pub(crate) fn the_lock_is_held_from_the_view_to_the_commit(f: &mut impl SharedFixture) {
    let (a, b) = f.pair();
    let (in_lock_tx, in_lock_rx) = std::sync::mpsc::channel();
    let first = std::thread::spawn(move || {
        a.commit_on_latest(Cursor::default(), &mut |view| {
            in_lock_tx.send(()).unwrap();
            // B tries meanwhile; it must not get a view without this.
            std::thread::sleep(Duration::from_millis(300));
            grants(&view, &["anna"])
        })
        .unwrap()
    });
    in_lock_rx.recv().unwrap();
    let mut seen = None;
    let second = b
        .commit_on_latest(Cursor::default(), &mut |view| {
            seen = Some(sequences(&view));
            grants(&view, &["bob"])
        })
        .unwrap();
    let first = first.join().unwrap();
    assert_eq!(first.first_sequence, 1);
    assert_eq!(seen, Some(vec![1]), "B ruled after A's commit, on it");
    assert_eq!(second.first_sequence, 2);
}

pub(crate) fn erasures_and_catalogs_reach_the_view_and_the_feed(f: &mut impl SharedFixture) {
    let (a, b) = f.pair();
    let spec = CatalogSpec {
        channels: vec!["email".into()],
        ..Default::default()
    };
    let applied = a
        .commit_on_latest(Cursor::default(), &mut |view| {
            let Write::Batch(mut batch) = grants(&view, &["anna", "bob"]) else {
                unreachable!()
            };
            batch.catalog = Some(spec.clone());
            Write::Batch(batch)
        })
        .unwrap();
    let version = applied.catalog_version;
    assert!(version > 0, "a catalog apply counts");
    let tombstone = Tombstone {
        hash: [7; 32],
        erased_at: 500,
        reason: "asked".into(),
        sequence: 0,
    };
    let erased = a
        .commit_on_latest(Cursor::default(), &mut |_| Write::Erase {
            contact: "anna".into(),
            tombstone: tombstone.clone(),
        })
        .unwrap();
    assert_eq!(erased.first_sequence, 3, "an erasure takes a sequence");
    assert!(plain(a.history("anna").unwrap()).is_empty());
    // B's view: the surviving event, the erasure by its sequence (a keyed
    // hash, no contact), the catalog with its version.
    let mut view = None;
    b.commit_on_latest(Cursor::default(), &mut |v| {
        view = Some(v);
        Write::Nothing
    })
    .unwrap();
    let view = view.unwrap();
    assert_eq!(sequences(&view), vec![2], "anna's event is gone");
    let numbered = Tombstone {
        sequence: 3,
        ..tombstone.clone()
    };
    assert_eq!(view.erasures, vec![(3, numbered.clone())]);
    let catalog = view.catalog.expect("the catalog moved past the cursor");
    assert_eq!((catalog.spec, catalog.version), (spec, version));
    // The feed gives the same; a cursor at the version skips the catalog.
    let page = b
        .changes_after(
            Cursor {
                sequence: 0,
                catalog_version: version,
            },
            100,
        )
        .unwrap();
    assert_eq!(sequences(&page), vec![2]);
    assert_eq!(page.erasures, vec![(3, numbered)]);
    assert!(page.catalog.is_none());
    assert_eq!((page.through, page.head), (3, 3));
}

fn wording(text: &str) -> Wording {
    Wording {
        consent: ConsentId::parse("consent", "marketing").unwrap(),
        version: 2,
        title: "News".into(),
        text: text.into(),
        parent: None,
        channels: vec!["email".into()],
        brands: vec![],
        in_force_from: 10,
    }
}

pub(crate) fn one_wording_version_names_one_text(f: &mut impl SharedFixture) {
    let (a, b) = f.pair();
    let with = |w: Wording| {
        move |view: Changes| {
            Write::Batch(WriteBatch {
                wordings: vec![w.clone()],
                next_sequence: view.head + 1,
                ..Default::default()
            })
        }
    };
    a.commit_on_latest(Cursor::default(), &mut with(wording("v2 as A wrote it")))
        .unwrap();
    // The same words again are harmless; other words under v2 are refused.
    b.commit_on_latest(Cursor::default(), &mut with(wording("v2 as A wrote it")))
        .unwrap();
    let other = b.commit_on_latest(Cursor::default(), &mut with(wording("v2 as B wrote it")));
    assert!(
        matches!(other, Err(StoreError::Corrupt { .. })),
        "{other:?}"
    );
    assert_eq!(
        b.wordings(Some("marketing")).unwrap(),
        vec![wording("v2 as A wrote it")]
    );
}

pub(crate) fn the_feed_comes_in_pages(f: &mut impl SharedFixture) {
    let (a, b) = f.pair();
    a.commit_on_latest(Cursor::default(), &mut |view| {
        grants(&view, &["a", "b", "c", "d", "e"])
    })
    .unwrap();
    let page = b.changes_after(Cursor::default(), 2).unwrap();
    assert_eq!(sequences(&page), vec![1, 2]);
    assert_eq!(
        (page.through, page.head),
        (2, 5),
        "behind: the page is full"
    );
    let rest = b
        .changes_after(
            Cursor {
                sequence: page.through,
                catalog_version: 0,
            },
            10,
        )
        .unwrap();
    assert_eq!(sequences(&rest), vec![3, 4, 5]);
    assert_eq!((rest.through, rest.head), (5, 5));
}

pub(crate) fn link_keys_are_shared(f: &mut impl SharedFixture) {
    let (a, b) = f.pair();
    let first = a.link_keys("k1=AAAA").unwrap();
    assert_eq!(first, vec!["k1=AAAA".to_string()]);
    assert_eq!(
        b.link_keys("k2=BBBB").unwrap(),
        first,
        "the first node's key"
    );
}
