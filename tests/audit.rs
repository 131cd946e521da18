//! Evidence an outsider can check (DESIGN.md §11), end to end, on redb and
//! (in `tests/on_postgres.rs`) on PostgreSQL: the server links every
//! record and signs checkpoints; `consentctl audit` prints the key and the
//! latest checkpoint and verifies the store; OpenSSL verifies a checkpoint;
//! a record changed or deleted behind consentd's back is found and named.

mod common;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use consentd::pb;
use redb::ReadableTable;

/// The store of `dir` as `consentctl audit --store` names it in this run.
fn store_of(dir: &Path) -> String {
    if on_postgres() {
        database_for(dir)
    } else {
        format!("redb:{}", dir.display())
    }
}

fn verify(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let key = dir.join("signing.key");
    let (_, public, err) =
        consentctl_alone(&["audit", "key", "--signing-key", key.to_str().unwrap()]);
    assert!(!public.trim().is_empty(), "{err}");
    let store = store_of(dir);
    let mut args = vec![
        "--json",
        "audit",
        "verify",
        "--store",
        &store,
        "--key",
        public.trim(),
    ];
    for e in extra {
        args.extend(["--checkpoint", e]);
    }
    let (_, out, err) = consentctl_alone(&args);
    serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out} {err}"))
}

/// Grants and withdrawals of three contacts, then one erased.
async fn record_some(server: &TestServer) {
    let mut c = server.consents().await;
    for who in ["anna", "bob", "carl"] {
        c.grant(change(who, "marketing", None)).await.unwrap();
        c.withdraw(change(who, "marketing.acme", None))
            .await
            .unwrap();
    }
    c.erase_contact(pb::EraseContactRequest {
        contact_id: "bob".into(),
        reason: "art. 17 ticket 9".into(),
    })
    .await
    .unwrap();
}

/// Checks a signed note with OpenSSL: the body signed, the signature after
/// the 4-byte key id.
fn openssl_verifies(dir: &Path, note: &str) -> bool {
    let key = dir.join("signing.key");
    let (_, pem, _) = consentctl_alone(&[
        "audit",
        "key",
        "--pem",
        "--signing-key",
        key.to_str().unwrap(),
    ]);
    let (body, sigs) = note.split_once("\n\n").unwrap();
    let blob = sigs.trim().rsplit(' ').next().unwrap();
    let blob = B64.decode(blob).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (pub_pem, body_file, sig_file) = (
        work.path().join("pub.pem"),
        work.path().join("body"),
        work.path().join("sig"),
    );
    std::fs::write(&pub_pem, pem).unwrap();
    std::fs::write(&body_file, format!("{body}\n")).unwrap();
    std::fs::write(&sig_file, &blob[4..]).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(&pub_pem)
        .arg("-rawin")
        .arg("-in")
        .arg(&body_file)
        .arg("-sigfile")
        .arg(&sig_file)
        .output()
        .expect("openssl (installed by .ci/run)");
    String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully")
}

#[tokio::test]
async fn a_store_verifies_across_restarts_and_erasures_and_openssl_checks_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    record_some(&server).await;
    server.stop().await;

    let v = verify(dir.path(), &[]);
    assert_eq!(v["verified"], true, "{v}");
    // The catalog, 6 events less bob's 2, and the erasure.
    assert_eq!(v["records"], 1 + 4 + 1, "{v}");
    assert_eq!(v["erased"], 2, "bob's two events keep their links: {v}");
    assert!(v["checkpoints"].as_u64().unwrap() >= 1, "{v}");
    let store = store_of(dir.path());
    let (ok, note, err) = consentctl_alone(&["audit", "checkpoint", "--store", &store]);
    assert!(ok, "{err}");
    assert_eq!(
        note.lines().nth(1),
        Some("8"),
        "the head at shutdown: {note}"
    );
    assert!(
        openssl_verifies(dir.path(), &note),
        "OpenSSL verifies {note}"
    );
    let tampered = note.replacen("\n8\n", "\n7\n", 1);
    assert!(!openssl_verifies(dir.path(), &tampered));
    let kept = dir.path().join("checkpoint-8.note");
    std::fs::write(&kept, &note).unwrap();

    // The chain goes on after a restart, and the note kept outside still
    // verifies against it.
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let mut c = server.consents().await;
    c.grant(change("dora", "marketing", None)).await.unwrap();
    // An address change is a record like any other (a mark: no wording).
    replica::set_addresses(&mut c, "dora", &["dora@example.com"]).await;
    server.stop().await;
    let v = verify(dir.path(), &[kept.to_str().unwrap()]);
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(
        (v["records"].as_u64(), v["head"].as_u64()),
        (Some(8), Some(10))
    );

    // The wrong key: every checkpoint is refused.
    let other = tempfile::tempdir().unwrap();
    let other_key =
        consentd::audit::note::Signer::load_or_create(&other.path().join("k"), "consentd")
            .unwrap()
            .public_key_base64();
    let (ok, _, err) =
        consentctl_alone(&["audit", "verify", "--store", &store, "--key", &other_key]);
    assert!(
        !ok && err.contains("no signature by the given key"),
        "{err}"
    );
}

/// Changes the first event of `contact` behind consentd's back (redb: one
/// byte of its stored record; PostgreSQL: `change`, SQL on its row), runs the
/// verifier, then puts it back. Returns (the sequence changed, the
/// verifier's answer while it was changed).
async fn tampered(dir: &Path, contact: &str, change: &str) -> (u64, serde_json::Value) {
    let sequence;
    if on_postgres() {
        let client = sql(dir).await;
        client.batch_execute("BEGIN").await.unwrap();
        let row = client
            .query_one(
                "SELECT min(sequence) FROM consentd.events WHERE contact = $1",
                &[&contact],
            )
            .await
            .unwrap();
        let s: i64 = row.get(0);
        sequence = s as u64;
        client
            .batch_execute(&change.replace("$S", &s.to_string()))
            .await
            .unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        let found = verify(dir, &[]);
        // Undo through a saved copy is not possible for a DELETE: the
        // caller runs each case on its own store.
        return (sequence, found);
    }
    const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    let path = dir.join("consentd.redb");
    let (s, original) = {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let found;
        {
            let mut t = txn.open_table(EVENTS).unwrap();
            let rows: Vec<(u64, Vec<u8>)> = t
                .range::<u64>(..)
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    (k.value(), v.value().to_vec())
                })
                .collect();
            found = rows
                .into_iter()
                .find(|(_, v)| v.windows(contact.len()).any(|w| w == contact.as_bytes()))
                .unwrap();
            if change == "delete" {
                t.remove(found.0).unwrap();
            } else {
                let mut changed = found.1.clone();
                // One byte of the evidence value ("signup-2026" → "signup-2027").
                let at = changed
                    .windows(4)
                    .position(|w| w == b"2026")
                    .expect("the evidence");
                changed[at + 3] = b'7';
                t.insert(found.0, changed.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        found
    };
    sequence = s;
    let found = verify(dir, &[]);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(EVENTS)
        .unwrap()
        .insert(s, original.as_slice())
        .unwrap();
    txn.commit().unwrap();
    (sequence, found)
}

/// A connection to the database that stands for `dir` (PostgreSQL run).
async fn sql(dir: &Path) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&database_for(dir), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

async fn a_store_with_records() -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    record_some(&server).await;
    server.stop().await;
    let v = verify(dir.path(), &[]);
    assert_eq!(v["verified"], true, "{v}");
    (dir, v["head"].as_u64().unwrap())
}

#[tokio::test]
async fn a_changed_record_is_found_and_named() {
    let cases: &[&str] = if on_postgres() {
        &[
            "UPDATE consentd.events SET action = 2 WHERE sequence = $S",
            "UPDATE consentd.events SET occurred_at = occurred_at + 1 WHERE sequence = $S",
            "UPDATE consentd.events SET evidence = '{\"form\": \"signup-2027\"}' WHERE sequence = $S",
            "DELETE FROM consentd.events WHERE sequence = $S",
            // Made to look erased: its link kept without its salt.
            "INSERT INTO consentd.chain (sequence, kind, salt, leaf, chain, body)
                 SELECT sequence, 1, NULL, link_leaf, link_chain, ''::bytea
                 FROM consentd.events WHERE sequence = $S;
             DELETE FROM consentd.events WHERE sequence = $S",
            "UPDATE consentd.events SET link_chain = NULL WHERE sequence = $S",
        ]
    } else {
        &["evidence byte", "delete"]
    };
    for change in cases {
        let (dir, _) = a_store_with_records().await;
        let (sequence, found) = tampered(dir.path(), "carl", change).await;
        assert_eq!(found["verified"], false, "{change}: {found}");
        assert_eq!(found["sequence"], sequence, "{change}: {found}");
        if !on_postgres() {
            let v = verify(dir.path(), &[]);
            assert_eq!(v["verified"], true, "put back, it verifies again: {v}");
        }
    }
}

#[tokio::test]
async fn a_changed_wording_names_the_first_event_given_under_it() {
    if !on_postgres() {
        return;
    }
    let (dir, _) = a_store_with_records().await;
    let client = sql(dir.path()).await;
    client
        .execute(
            "UPDATE consentd.wordings SET text = text || ' ' WHERE consent = 'marketing.acme'",
            &[],
        )
        .await
        .unwrap();
    let first: i64 = client
        .query_one(
            "SELECT min(sequence) FROM consentd.events WHERE consent = 'marketing.acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let found = verify(dir.path(), &[]);
    assert_eq!(found["verified"], false, "{found}");
    assert_eq!(found["sequence"], first, "{found}");
}

/// The strongest attack on the database alone: a record changed, its leaf
/// recomputed with its salt and every link after it rewritten, the head
/// moved. The chain is consistent again; only the signed checkpoint,
/// which needs the key, tells.
#[tokio::test]
async fn a_rewritten_chain_is_caught_by_its_signed_checkpoint() {
    use consentd::audit::{Canonical, Held, leaf, link, wording_digest};
    use consentd::store::Store;
    if !on_postgres() {
        return;
    }
    let (dir, head) = a_store_with_records().await;
    let client = sql(dir.path()).await;
    let first: i64 = client
        .query_one(
            "UPDATE consentd.events SET action = 3 - action WHERE sequence =
                 (SELECT min(sequence) FROM consentd.events WHERE contact = 'carl')
             RETURNING sequence",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let url = database_for(dir.path());
    let store = tokio::task::spawn_blocking(move || consentd::store::PgStore::open(&url).unwrap())
        .await
        .unwrap();
    let (links, wordings) = tokio::task::spawn_blocking({
        let store = std::sync::Arc::new(store);
        move || {
            (
                store.links_after(0, 1000).unwrap(),
                store.wordings(None).unwrap(),
            )
        }
    })
    .await
    .unwrap();
    let mut prev = [0u8; 32];
    let mut c = Canonical::default();
    for (l, held) in &links {
        let mut new_leaf = l.leaf;
        if l.sequence == first as u64 {
            let Held::Event(e) = held else {
                panic!("an event")
            };
            let w = wordings
                .iter()
                .find(|w| w.consent == e.consent && w.version == e.version)
                .map_or([0; 32], wording_digest);
            new_leaf = leaf(&l.salt.unwrap(), c.event(e, &w));
        }
        let chain = link(&prev, l.sequence, &new_leaf);
        // Events keep their links in their rows, other records in the
        // chain table: one of the two statements touches a row.
        for table in [
            "UPDATE consentd.events SET link_leaf = $1, link_chain = $2 WHERE sequence = $3",
            "UPDATE consentd.chain SET leaf = $1, chain = $2 WHERE sequence = $3",
        ] {
            client
                .execute(
                    table,
                    &[&new_leaf.to_vec(), &chain.to_vec(), &(l.sequence as i64)],
                )
                .await
                .unwrap();
        }
        prev = chain;
    }
    client
        .execute(
            "UPDATE consentd.meta SET chain_head = $1",
            &[&prev.to_vec()],
        )
        .await
        .unwrap();
    let found = verify(dir.path(), &[]);
    assert_eq!(found["verified"], false, "{found}");
    assert_eq!(found["sequence"], head, "named at the checkpoint: {found}");
    let error = found["error"].as_str().unwrap();
    assert!(error.contains("signed checkpoint"), "{error}");
}

/// A database linked under migration V5 (every link in the chain table)
/// gets its event links moved into their rows by V6, once: the same chain,
/// its signed checkpoints still verify, and it goes on from there.
#[tokio::test]
async fn a_database_linked_under_v5_moves_its_event_links_into_their_rows() {
    if !on_postgres() {
        return;
    }
    let (dir, head) = a_store_with_records().await;
    let client = sql(dir.path()).await;
    client
        .batch_execute(
            "INSERT INTO consentd.chain (sequence, kind, salt, leaf, chain, body)
                 SELECT sequence, 1, link_salt, link_leaf, link_chain, ''::bytea
                 FROM consentd.events;
             ALTER TABLE consentd.events DROP COLUMN link_salt, DROP COLUMN link_leaf,
                 DROP COLUMN link_chain;
             DELETE FROM consentd.schema_history WHERE version >= 6",
        )
        .await
        .unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM consentd.chain c JOIN consentd.events e
                         ON e.sequence = c.sequence),
                    (SELECT count(*) FROM consentd.events WHERE link_chain IS NULL),
                    (SELECT count(*) FROM consentd.events)",
            &[],
        )
        .await
        .unwrap();
    let (left, unlinked, events): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (left, unlinked),
        (0, 0),
        "every event link moved, none twice"
    );
    assert_eq!(events, 4, "six events, bob's two erased");
    let mut c = server.consents().await;
    c.grant(change("dora", "marketing", None)).await.unwrap();
    server.stop().await;
    let v = verify(dir.path(), &[]);
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["head"].as_u64(), Some(head + 1), "{v}");
    assert!(v["checkpoints"].as_u64().unwrap() >= 2, "old and new: {v}");
}

/// A PostgreSQL database from before the chain (its records, no links) is
/// linked once by the first node that opens it, and verifies.
#[tokio::test]
async fn a_database_from_before_the_chain_is_linked_once_at_open() {
    if !on_postgres() {
        return;
    }
    let (dir, head) = a_store_with_records().await;
    let client = sql(dir.path()).await;
    client
        .batch_execute(
            "DELETE FROM consentd.chain; DELETE FROM consentd.checkpoints;
             UPDATE consentd.events SET link_salt = NULL, link_leaf = NULL, link_chain = NULL;
             UPDATE consentd.meta SET chain_head = NULL, chain_sequence = NULL",
        )
        .await
        .unwrap();
    let server = TestServer::start_in(dir.path(), Some(example_catalog_path())).await;
    let salts: Vec<Option<Vec<u8>>> = client
        .query(
            "SELECT salt FROM consentd.chain
             UNION ALL SELECT link_salt FROM consentd.events",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(salts.len(), 6, "the catalog, four events, the erasure");
    assert!(salts.iter().all(|s| s.as_deref() == Some(&[0u8; 16][..])));
    let mut c = server.consents().await;
    c.grant(change("dora", "marketing", None)).await.unwrap();
    server.stop().await;
    let v = verify(dir.path(), &[]);
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(
        (v["records"].as_u64(), v["head"].as_u64()),
        (Some(7), Some(head + 1))
    );
}
