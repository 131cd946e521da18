//! The log under a crash: the whole conformance suite again, where every
//! reopen is of the files as a `kill -9` leaves them (copied while the
//! store is open: redb's last durable commit, and the log), and what a
//! replay must give back exactly.

use std::path::Path;
use std::sync::Arc;

use super::{DB_FILE, LOG_FILE, RedbStore};
use crate::domain::Action;
use crate::store::conformance::{Fixture, conformance_suite, event};
use crate::store::{Store, Tombstone, Transfer, WriteBatch};

/// The files of the data dir `from`, as they are now, into `to`: what the
/// disk holds after a `kill -9` (the page cache is the file).
fn crash_copy(from: &Path, to: &Path) {
    for name in [DB_FILE, LOG_FILE] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

/// The store a `kill -9` of the one in `dir` leaves (its files copied
/// while it is open), opened: the replay done.
fn reopened_after_crash(dir: &Path) -> (tempfile::TempDir, RedbStore) {
    let to = tempfile::tempdir().unwrap();
    crash_copy(dir, to.path());
    let store = RedbStore::open(to.path()).unwrap();
    (to, store)
}

/// Stores that are never closed: a reopen is of a crash copy.
#[derive(Default)]
struct Crashed {
    dir: Option<tempfile::TempDir>,
    live: Vec<Arc<RedbStore>>,
}

impl Crashed {
    fn keep(&mut self, store: RedbStore) -> Arc<dyn Transfer> {
        let store = Arc::new(store);
        self.live.push(store.clone());
        store
    }
}

impl Fixture for Crashed {
    fn fresh(&mut self) -> Arc<dyn Transfer> {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        self.dir = Some(dir);
        self.keep(store)
    }

    fn reopen(&mut self) -> Arc<dyn Transfer> {
        let to = tempfile::tempdir().unwrap();
        crash_copy(self.dir.as_ref().expect("fresh first").path(), to.path());
        let store = RedbStore::open(to.path()).unwrap();
        self.dir = Some(to);
        self.keep(store)
    }
}

conformance_suite!(Crashed::default());

fn grants(from: u64, n: u64) -> WriteBatch {
    let events: Vec<_> = (from..from + n)
        .map(|s| {
            event(
                &format!("c{}", s % 7),
                "marketing",
                Action::Grant,
                s as i64,
                s,
            )
        })
        .collect();
    WriteBatch {
        events,
        next_sequence: from + n,
        ..Default::default()
    }
}

/// An erasure's tombstone, at `sequence` in the feed (0: none).
fn tombstone(sequence: u64) -> Tombstone {
    Tombstone {
        hash: [7; 32],
        erased_at: 5,
        reason: "r".into(),
        sequence,
    }
}

/// Everything a reader gets: the chain's links (salts included: the
/// receipts given out), the events, the states, the checkpoints.
fn everything(s: &RedbStore) -> String {
    let links = s.links_after(0, usize::MAX).unwrap();
    let events = s.events_after(0, usize::MAX).unwrap();
    let states = s.states_after("", usize::MAX).unwrap();
    let checkpoints = s.checkpoints(0, usize::MAX).unwrap();
    format!("{links:?}\n{events:?}\n{states:?}\n{checkpoints:?}")
}

#[test]
fn a_crash_gives_back_every_logged_commit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    store.commit(&grants(1, 5)).unwrap();
    store.keep_checkpoint(5, "signed note at 5", false).unwrap();
    store.commit(&grants(6, 3)).unwrap();
    store.keep_checkpoint(8, "signed note at 8", false).unwrap();
    let before = everything(&store);
    assert!(before.contains("signed note at 8"));
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let log = std::fs::metadata(crashed.path().join(LOG_FILE))
        .unwrap()
        .len();
    assert!(log > 0, "the commits are in the log, not yet in the file");
    // Without the log, the file alone lacks them: the replay is what
    // gives them back.
    let file_only = tempfile::tempdir().unwrap();
    std::fs::copy(crashed.path().join(DB_FILE), file_only.path().join(DB_FILE)).unwrap();
    let alone = RedbStore::open(file_only.path()).unwrap();
    assert!(alone.events_after(0, usize::MAX).unwrap().is_empty());
    let after = RedbStore::open(crashed.path()).unwrap();
    assert_eq!(everything(&after), before);
    // The replay is durable, the log empty, and numbering goes on: a
    // second crash after more commits gives back both.
    assert_eq!(
        std::fs::metadata(crashed.path().join(LOG_FILE))
            .unwrap()
            .len(),
        0
    );
    after.commit(&grants(9, 2)).unwrap();
    let before = everything(&after);
    let again = tempfile::tempdir().unwrap();
    crash_copy(crashed.path(), again.path());
    assert_eq!(everything(&RedbStore::open(again.path()).unwrap()), before);
}

#[test]
fn a_torn_last_record_loses_that_commit_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    store.commit(&grants(1, 4)).unwrap();
    let first = everything(&store);
    store.commit(&grants(5, 4)).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    // Power lost inside the second record's write: its last bytes never
    // reached the disk (so its fsync never returned: not acknowledged).
    let log = crashed.path().join(LOG_FILE);
    let bytes = std::fs::read(&log).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0; 8], end as u64 - 7).unwrap();
    let after = RedbStore::open(crashed.path()).unwrap();
    assert_eq!(everything(&after), first);
    // The sequence goes on from the first commit's.
    after.commit(&grants(5, 1)).unwrap();
    assert_eq!(after.events_after(0, usize::MAX).unwrap().len(), 5);
}

#[test]
fn a_missing_record_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    store.commit(&grants(1, 2)).unwrap();
    store.commit(&grants(3, 2)).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    // The log's first record replaced by zeros: the second follows a gap.
    let log = crashed.path().join(LOG_FILE);
    let bytes = std::fs::read(&log).unwrap();
    let first_len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize + 16;
    let mut cut = bytes[first_len..].to_vec();
    cut.resize(bytes.len(), 0);
    std::fs::write(&log, cut).unwrap();
    let err = match RedbStore::open(crashed.path()) {
        Ok(_) => panic!("opened over a gap in the log"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn an_erasure_leaves_nothing_of_the_contact_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let mut erin = event("erin.secret", "marketing", Action::Grant, 1, 1);
    erin.evidence = [("ip".to_string(), "ip-of-erin".to_string())].into();
    let fred = event("fred", "marketing", Action::Grant, 2, 2);
    store
        .commit(&WriteBatch {
            events: vec![erin, fred],
            next_sequence: 3,
            ..Default::default()
        })
        .unwrap();
    let log = dir.path().join(LOG_FILE);
    let holds = |needle: &str| {
        let bytes = std::fs::read(&log).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    assert!(holds("ip-of-erin"));
    assert!(store.erase("erin.secret", &tombstone(3)).unwrap());
    assert!(!holds("ip-of-erin") && !holds("erin.secret"));
    // A crash now loses nothing: the erasure and what came before are
    // durable in the file.
    store.commit(&grants(4, 1)).unwrap();
    let before = everything(&store);
    assert_eq!(everything(&reopened_after_crash(dir.path()).1), before);
}

#[test]
fn a_clean_close_leaves_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    store.commit(&grants(1, 3)).unwrap();
    let before = everything(&store);
    store.close().unwrap();
    drop(store);
    // The log is not needed: the file alone holds everything.
    std::fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
    assert_eq!(everything(&RedbStore::open(dir.path()).unwrap()), before);
}

#[test]
fn a_batch_too_big_for_the_log_is_a_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let mut big = grants(1, 2);
    big.events[0].evidence = [("blob".to_string(), "x".repeat(super::log::LIMIT as usize))].into();
    store.commit(&big).unwrap();
    store.commit(&grants(3, 1)).unwrap();
    let before = everything(&store);
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    assert!(
        std::fs::metadata(crashed.path().join(LOG_FILE))
            .unwrap()
            .len()
            < super::log::LIMIT
    );
    assert_eq!(
        everything(&RedbStore::open(crashed.path()).unwrap()),
        before
    );
}

#[test]
fn after_a_failed_append_nothing_lands_until_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    store.commit(&grants(1, 2)).unwrap();
    store.log.as_ref().unwrap().lock().unwrap().fail_next = true;
    // The record is written, its fsync fails: the commit is refused and
    // nothing of it is seen. The group before it, held in the writer's
    // open transaction (`held.rs`), which the failure drops, is seen.
    assert!(store.held.holding());
    assert!(store.commit(&grants(3, 2)).is_err());
    assert_eq!(store.events_after(0, usize::MAX).unwrap().len(), 2);
    // Nothing else lands either: the record may be whole on disk.
    assert!(store.commit(&grants(3, 1)).is_err());
    assert!(store.erase("c1", &tombstone(0)).is_err());
    assert!(store.keep_checkpoint(2, "note", true).is_err());
    // A restart replays it: a write reported failed that lands, as after a
    // timeout, on the state it was ruled on.
    let (_crashed, after) = reopened_after_crash(dir.path());
    assert_eq!(after.events_after(0, usize::MAX).unwrap().len(), 4);
    after.commit(&grants(5, 1)).unwrap();
}

/// The schema version the data file in `dir` says, read as any build
/// reads it before anything else (the check a build that knows only
/// schema 3 makes: it refuses any other).
fn schema_on_file(dir: &Path) -> u32 {
    use redb::ReadableDatabase;
    let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(super::META).unwrap();
    let v = meta.get("schema_version").unwrap().unwrap();
    u32::from_le_bytes(v.value().try_into().unwrap())
}

#[test]
fn a_build_that_does_not_replay_the_log_refuses_a_crashed_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    store.commit(&grants(1, 3)).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    // The commits are in the log only: an older build, which would open
    // the file and never read the log, finds a schema it does not know.
    assert_eq!(schema_on_file(crashed.path()), super::LOGGING_SCHEMA);
    let before = everything(&store);
    assert_eq!(
        everything(&RedbStore::open(crashed.path()).unwrap()),
        before
    );
    // A clean close makes the file whole: any build of schema 3 opens it.
    store.close().unwrap();
    drop(store);
    assert_eq!(schema_on_file(dir.path()), super::SCHEMA_VERSION);
    let reopened = RedbStore::open(dir.path()).unwrap();
    assert_eq!(everything(&reopened), before);
    // Open again, the log in use: 4 until the next clean close.
    reopened.commit(&grants(4, 2)).unwrap();
    let again = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), again.path());
    assert_eq!(schema_on_file(again.path()), super::LOGGING_SCHEMA);
}

#[test]
fn the_writer_holds_its_transaction_for_a_few_groups_then_commits_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    for g in 0..super::held::HELD_GROUPS as u64 - 1 {
        store.commit(&grants(1 + 2 * g, 2)).unwrap();
        assert!(store.held.holding(), "group {g} is held");
    }
    // The last group it takes commits it (without fsync).
    let n = super::held::HELD_GROUPS as u64;
    store.commit(&grants(2 * n - 1, 2)).unwrap();
    assert!(!store.held.holding());
    store.commit(&grants(2 * n + 1, 2)).unwrap();
    assert!(store.held.holding());
    // A crash (the file as its last durable commit left it, the log)
    // gives back the committed groups and the held one.
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let before = everything(&store);
    assert_eq!(
        everything(&RedbStore::open(crashed.path()).unwrap()),
        before
    );
}

#[test]
fn a_read_on_another_thread_sees_every_group_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path()).unwrap());
    let (ask, asked) = std::sync::mpsc::sync_channel::<u64>(0);
    let (tell, told) = std::sync::mpsc::sync_channel::<u64>(0);
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            for _ in asked {
                let n = store.events_after(0, usize::MAX).unwrap().len() as u64;
                let contact = store.contact_states("c0").unwrap().len() as u64;
                tell.send(n * 10 + contact).unwrap();
            }
        })
    };
    let mut held = 0;
    for g in 0..40u64 {
        store.commit(&grants(1 + 3 * g, 3)).unwrap();
        held += u64::from(store.held.holding());
        // Every third group, a read from the other thread: it waits for
        // nothing and commits what the writer holds.
        if g % 3 == 2 {
            ask.send(g).unwrap();
            let answer = told.recv().unwrap();
            assert_eq!(answer / 10, 3 * (g + 1), "events after group {g}");
            assert_eq!(answer % 10, 1, "c0's state after group {g}");
            assert!(!store.held.holding());
        }
    }
    assert!(held > 20, "groups were held: {held}");
    drop(ask);
    reader.join().unwrap();
}

#[test]
fn an_erasure_commits_the_held_groups_first_and_a_crash_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    store.commit(&grants(1, 7)).unwrap();
    store.commit(&grants(8, 7)).unwrap();
    assert!(store.held.holding());
    assert!(store.erase("c1", &tombstone(15)).unwrap());
    assert!(!store.held.holding());
    store.commit(&grants(16, 2)).unwrap();
    let before = everything(&store);
    assert!(!before.contains("\"c1\""), "{before}");
    let (_crashed, after) = reopened_after_crash(dir.path());
    assert_eq!(everything(&after), before);
    let log = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    assert!(!log.windows(2).any(|w| w == b"c1"));
}

#[test]
fn a_key_is_found_in_the_held_transaction_without_committing_it() {
    use crate::store::IdempotencyRecord;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path()).unwrap());
    let record = IdempotencyRecord {
        sequence: 1,
        recorded_at: 1,
        fingerprint: [9; 32],
    };
    let mut keyed = grants(1, 1);
    keyed.idempotency = vec![("form-42".into(), record)];
    store.commit(&keyed).unwrap();
    store.commit(&grants(2, 1)).unwrap();
    assert!(store.held.holding());
    // The writer, ruling a retry, finds the key: the held transaction
    // sees it, and stays open.
    assert_eq!(store.idempotency("form-42").unwrap(), Some(record));
    assert_eq!(store.idempotency("form-43").unwrap(), None);
    assert!(store.held.holding());
    // So does a reader on another thread, and a crash loses nothing.
    let other = store.clone();
    let found = std::thread::spawn(move || other.idempotency("form-42").unwrap());
    assert_eq!(found.join().unwrap(), Some(record));
    let (_crashed, after) = reopened_after_crash(dir.path());
    assert_eq!(after.idempotency("form-42").unwrap(), Some(record));
}

#[test]
fn a_group_that_fails_gives_back_the_held_groups_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    // A contact record the store cannot read: the group that touches it
    // fails in its inserts, before its record is logged.
    {
        let txn = store.db().unwrap().begin_write().unwrap();
        txn.open_table(super::CONTACTS)
            .unwrap()
            .insert("c5", [0xff_u8; 3].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    store.commit(&grants(1, 2)).unwrap();
    store.commit(&grants(3, 1)).unwrap();
    assert!(store.held.holding());
    assert!(store.commit(&grants(5, 1)).is_err());
    // The acknowledged groups the failure dropped with the transaction
    // are in the file again, and writes go on.
    assert!(!store.held.holding());
    assert_eq!(store.events_after(0, usize::MAX).unwrap().len(), 3);
    {
        let txn = store.db().unwrap().begin_write().unwrap();
        txn.open_table(super::CONTACTS)
            .unwrap()
            .remove("c5")
            .unwrap();
        txn.commit().unwrap();
    }
    store.commit(&grants(4, 1)).unwrap();
    let before = everything(&store);
    assert_eq!(store.events_after(0, usize::MAX).unwrap().len(), 4);
    // A crash after it gives back exactly the same: no record is skipped.
    let (_crashed, after) = reopened_after_crash(dir.path());
    assert_eq!(everything(&after), before);
}
