//! The case of the suite about the hash chain (DESIGN.md §11): every
//! record committed is linked in sequence order (events, catalog applies,
//! erasures); an erasure keeps the links of what it deleted, without their
//! salts, and lists them; checkpoints are kept once; everything verifies
//! after a reopen.

use super::*;
use crate::audit::{Held, Kind, note::Signer};

pub(crate) fn the_chain_links_every_record_and_verifies(f: &mut impl Fixture) {
    let store = f.fresh();
    assert_eq!(store.chain_head().unwrap(), None);
    let wording = Wording {
        consent: ConsentId::parse("consent", "marketing").unwrap(),
        version: 1,
        title: "News".into(),
        text: "I agree to news by mail".into(),
        parent: None,
        channels: vec!["email".into()],
        brands: vec!["acme".into()],
        in_force_from: 5,
    };
    let mut b = batch(vec![
        event("anna", "marketing", Action::Grant, 10, 2),
        event("anna", "marketing", Action::Withdraw, 11, 3),
        event("bob", "marketing", Action::Grant, 12, 4),
    ]);
    b.catalog = Some(CatalogSpec::default());
    b.catalog_at = 5;
    b.catalog_sequence = 1;
    b.wordings = vec![wording];
    store.commit(&b).unwrap();
    let tombstone = Tombstone {
        hash: [5; 32],
        erased_at: 20,
        reason: "art. 17".into(),
        sequence: 5,
    };
    store.erase("anna", &tombstone).unwrap();
    store
        .commit(&batch(vec![event(
            "anna",
            "marketing",
            Action::Grant,
            30,
            6,
        )]))
        .unwrap();

    let links = store.links_after(0, 100).unwrap();
    let shape: Vec<(u64, Kind, bool)> = links
        .iter()
        .map(|(l, _)| (l.sequence, l.kind, l.salt.is_some()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (1, Kind::Catalog, true),
            (2, Kind::Event, false),
            (3, Kind::Event, false),
            (4, Kind::Event, true),
            (5, Kind::Erasure, true),
            (6, Kind::Event, true),
        ],
        "every record in order; the erased ones keep their links, not their salts"
    );
    assert!(matches!(links[1].1, Held::Missing));
    assert!(matches!(links[0].1, Held::Catalog(5, _)));
    assert_eq!(
        store.chain_head().unwrap(),
        Some((6, links[5].0.chain)),
        "the head is the last link"
    );
    let signer = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&[3; 32]), "test");
    let note = signer.checkpoint(6, &links[5].0.chain);
    store.keep_checkpoint(6, &note, true).unwrap();
    store.keep_checkpoint(6, "another note", false).unwrap();
    assert_eq!(store.checkpoints(0, 10).unwrap(), vec![(6, note.clone())]);
    drop(store);

    let store = f.reopen();
    let key = signer.verifying_key();
    let v = crate::audit::verify(&*store, &key, &[], &mut |_| {}).unwrap();
    assert_eq!(
        (v.records, v.erased, v.checkpoints),
        (4, 2, 1),
        "records, erased records, checkpoints"
    );
    // The same contact erased again: the first erasure still verifies (its
    // record is its link's own), and so does the second.
    let again = Tombstone {
        sequence: 7,
        erased_at: 40,
        ..tombstone
    };
    store.erase("anna", &again).unwrap();
    let v = crate::audit::verify(&*store, &key, &[note], &mut |_| {}).unwrap();
    assert_eq!((v.records, v.erased, v.checkpoints), (4, 3, 2));
    assert_eq!(v.head.map(|(s, _)| s), Some(7));
    // A checkpoint from another key is refused, named.
    let other = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&[4; 32]), "test");
    let forged = other.checkpoint(7, &v.head.unwrap().1);
    let err = crate::audit::verify(&*store, &key, &[forged], &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("#1 given"), "{err}");
}
