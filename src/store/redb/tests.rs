//! The redb store's own tests: its file, its migration, its purge (the
//! behaviour every store shares is the conformance suite's).

use std::sync::Arc;

use super::RedbStore;
use crate::store::Store;
use crate::store::conformance::{Fixture, conformance_suite, plain};

/// A temp data dir per fresh store; reopen opens the same dir again
/// (and so also runs the post-erasure rewrite).
struct Redb(Option<tempfile::TempDir>);

impl Fixture for Redb {
    fn fresh(&mut self) -> Arc<dyn crate::store::Transfer> {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        self.0 = Some(dir);
        Arc::new(store)
    }

    fn reopen(&mut self) -> Arc<dyn crate::store::Transfer> {
        let dir = self.0.as_ref().expect("fresh first");
        Arc::new(RedbStore::open(dir.path()).unwrap())
    }
}

conformance_suite!(Redb(None));

#[test]
fn a_schema_1_file_is_migrated_once_and_keeps_its_history() {
    use prost::Message;

    use super::{CONTACTS, EVENTS, META};
    use crate::domain::{Action, ConsentId, ContactId, EventRecord, Source};
    use crate::store::redb::codec::{ContactRecord, encode_event, state_to};

    let dir = tempfile::tempdir().unwrap();
    let event = |n: u64| EventRecord {
        contact: ContactId::parse("c", "anna").unwrap(),
        consent: ConsentId::parse("c", "marketing").unwrap(),
        action: Action::Grant,
        occurred_at: n as i64,
        recorded_at: n as i64,
        source: Source::Form,
        evidence: Default::default(),
        version: 1,
        sequence: n,
        idempotency_key: None,
        applied: true,
        actor: String::new(),
        pending: false,
        confirmed: false,
        confirmation_link: false,
        chain: None,
    };
    // What schema 1 wrote: the event list inside the contact's record.
    {
        let db = redb::Database::create(dir.path().join(super::DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("schema_version", 1u32.to_le_bytes().as_slice())
                .unwrap();
            meta.insert("erasure_key", [5u8; 32].as_slice()).unwrap();
            let mut events = txn.open_table(EVENTS).unwrap();
            let mut buf = Vec::new();
            for n in 1..=3 {
                buf.clear();
                encode_event(&event(n), None, &mut buf);
                events.insert(n, buf.as_slice()).unwrap();
            }
            let record = ContactRecord {
                states: vec![state_to(&event(3))],
                events: vec![1, 2, 3],
                pending: Vec::new(),
            };
            txn.open_table(CONTACTS)
                .unwrap()
                .insert("anna", record.encode_to_vec().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(
        plain(store.history("anna").unwrap()),
        vec![event(1), event(2), event(3)]
    );
    assert_eq!(
        plain(store.history_page("anna", 1, 1).unwrap()),
        vec![event(2)]
    );
    assert_eq!(store.contact_states("anna").unwrap().len(), 1);
    // Linked into the chain on the way (schema 3), and it verifies.
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    let v = crate::audit::verify(&store, &key, &[], &mut |_| {}).unwrap();
    assert_eq!(v.records, 3);
    drop(store);
    // Opened again: already migrated, nothing duplicated.
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(plain(store.history("anna").unwrap()).len(), 3);
}

#[test]
fn a_closed_store_answers_closed_and_reopens_cleanly() {
    use crate::store::{Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let next = store.recover().unwrap().next_sequence;
    store.close().unwrap();
    assert!(matches!(store.recover(), Err(StoreError::Closed)));
    store.close().unwrap();
    // The file was released: another opens it at once, as it was.
    let again = RedbStore::open(dir.path()).unwrap();
    assert_eq!(again.recover().unwrap().next_sequence, next);
}

#[test]
fn purge_leaves_no_byte_of_an_erased_contact_while_open() {
    use crate::domain::{Action, ConsentId, ContactId, EventRecord, Source};
    use crate::store::{Tombstone, WriteBatch};

    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let event = |who: &str, sequence| EventRecord {
        contact: ContactId::parse("c", who).unwrap(),
        consent: ConsentId::parse("c", "marketing").unwrap(),
        action: Action::Grant,
        occurred_at: 1,
        recorded_at: 2,
        source: Source::Form,
        evidence: [("ip".to_string(), format!("ip-of-{who}"))].into(),
        version: 1,
        sequence,
        idempotency_key: Some(format!("key-of-{who}")),
        applied: true,
        actor: "crm".into(),
        pending: false,
        confirmed: false,
        confirmation_link: false,
        chain: None,
    };
    store
        .commit(&WriteBatch {
            events: vec![event("erin.secret@example.com", 1), event("fred", 2)],
            next_sequence: 3,
            ..Default::default()
        })
        .unwrap();
    let tombstone = Tombstone {
        hash: [7; 32],
        erased_at: 5,
        reason: "r".into(),
        sequence: 0,
    };
    store.erase("erin.secret@example.com", &tombstone).unwrap();
    let file = dir.path().join(super::DB_FILE);
    let holds = |needle: &str| {
        let bytes = std::fs::read(&file).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    assert!(
        holds("ip-of-erin"),
        "redb keeps freed pages: the bytes stay until the purge"
    );
    assert!(store.purge_erased().unwrap());
    for needle in ["erin.secret", "ip-of-erin", "key-of-erin"] {
        assert!(!holds(needle), "{needle} still in the file");
    }
    assert!(holds("ip-of-fred"));
    // The store goes on in the new file: writes land and survive a reopen.
    store
        .commit(&WriteBatch {
            events: vec![event("gina", 3)],
            next_sequence: 4,
            ..Default::default()
        })
        .unwrap();
    drop(store);
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(plain(store.history("gina").unwrap()).len(), 1);
    assert_eq!(plain(store.history("fred").unwrap()).len(), 1);
    assert!(!holds("erin.secret"));
}

/// A file of schema 2 (before the chain) is linked once when opened: every
/// record on file, in sequence order, with no salt (events, the catalog's
/// record, an erasure), and the chain goes on from there and verifies.
#[test]
fn a_schema_2_file_is_linked_once_and_verifies() {
    use super::{META, chain};
    use crate::audit::{Kind, NO_SALT};
    use crate::domain::{Action, CatalogSpec, ConsentId, ContactId, EventRecord, Source};
    use crate::store::{Tombstone, WriteBatch};

    let event = |who: &str, n: u64| EventRecord {
        contact: ContactId::parse("c", who).unwrap(),
        consent: ConsentId::parse("c", "marketing").unwrap(),
        action: Action::Grant,
        occurred_at: n as i64,
        recorded_at: n as i64,
        source: Source::Form,
        evidence: Default::default(),
        version: 1,
        sequence: n,
        idempotency_key: None,
        applied: true,
        actor: String::new(),
        pending: false,
        confirmed: false,
        confirmation_link: false,
        chain: None,
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path()).unwrap();
        store
            .commit(&WriteBatch {
                catalog: Some(CatalogSpec::default()),
                catalog_at: 1,
                catalog_sequence: 1,
                events: vec![event("anna", 2), event("bob", 3)],
                next_sequence: 4,
                ..Default::default()
            })
            .unwrap();
        let t = Tombstone {
            hash: [1; 32],
            erased_at: 9,
            reason: "r".into(),
            sequence: 4,
        };
        store.erase("bob", &t).unwrap();
    }
    // Back to what schema 2 wrote: no chain, no head.
    {
        let db = redb::Database::open(dir.path().join("consentd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(chain::CHAIN).unwrap();
        txn.delete_table(chain::CHECKPOINTS).unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.remove("chain_head").unwrap();
            meta.insert("schema_version", 2u32.to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(dir.path()).unwrap();
    let links = store.links_after(0, 10).unwrap();
    let shape: Vec<(u64, Kind, Option<[u8; 16]>)> = links
        .iter()
        .map(|(l, _)| (l.sequence, l.kind, l.salt))
        .collect();
    assert_eq!(
        shape,
        vec![
            (1, Kind::Catalog, Some(NO_SALT)),
            (2, Kind::Event, Some(NO_SALT)),
            (4, Kind::Erasure, Some(NO_SALT)),
        ],
        "what is on file, linked without salts (bob's event went before)"
    );
    store
        .commit(&WriteBatch {
            events: vec![event("cleo", 5)],
            next_sequence: 6,
            ..Default::default()
        })
        .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    let v = crate::audit::verify(&store, &key, &[], &mut |_| {}).unwrap();
    assert_eq!((v.records, v.head.map(|h| h.0)), (4, Some(5)));
    drop(store);
    // Opened again: linked once, not twice.
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(store.links_after(0, 10).unwrap().len(), 4);
}

/// The data file grows many times under group commits while its growth is
/// zeroed ahead of redb's writes (`zeroed.rs`), then again after a reopen
/// (when where the zeroed part ends is not known until the next growth):
/// every event and every contact's state reads back after each reopen, and
/// each commit says where its time went.
#[test]
fn a_file_grown_while_zeroed_ahead_reads_back_whole_after_reopening() {
    use crate::domain::{Action, EventRecord};
    use crate::store::WriteBatch;
    use crate::store::conformance::event as recorded;

    let dir = tempfile::tempdir().unwrap();
    let event = |n: u64| EventRecord {
        evidence: [("form".to_string(), format!("{n:0>300}"))].into(),
        ..recorded(
            &format!("c-{n:06}"),
            "marketing",
            Action::Grant,
            n as i64,
            n,
        )
    };
    let commit_groups = |store: &RedbStore, from: u64, groups: u64| {
        for g in 0..groups {
            let first = from + g * 25;
            let committed = store
                .commit(&WriteBatch {
                    events: (first..first + 25).map(event).collect(),
                    next_sequence: first + 25,
                    ..Default::default()
                })
                .unwrap();
            let phases = committed.phases.expect("redb times its commits");
            assert!(!phases.commit.is_zero() && phases.begin.is_zero());
        }
    };
    let file = dir.path().join(super::DB_FILE);
    let size = || std::fs::metadata(&file).unwrap().len();
    let reads_back = |upto: u64| {
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.recover().unwrap().next_sequence, upto);
        let mut states = 0;
        store.load_states(&mut |_, _, _| states += 1).unwrap();
        assert_eq!(states, upto - 1, "one state per contact");
        for n in [1, upto / 2, upto - 1] {
            let history = plain(store.history(&format!("c-{n:06}")).unwrap());
            assert_eq!(history.len(), 1, "c-{n:06}");
            assert_eq!(history[0].evidence["form"], format!("{n:0>300}"));
        }
        store
    };

    let store = RedbStore::open(dir.path()).unwrap();
    let small = size();
    commit_groups(&store, 1, 400);
    assert!(size() > 4 * small, "the file grew: {small} → {}", size());
    drop(store);
    let store = reads_back(10_001);
    let before = size();
    commit_groups(&store, 10_001, 400);
    assert!(size() > before, "and grew again after the reopen");
    drop(store);
    reads_back(20_001);
}
