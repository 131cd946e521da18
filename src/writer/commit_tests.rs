//! Group commit over the in-memory store, driven without the thread so
//! that what lands in one batch is exact.

use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};

use super::WriterStart;
use super::committer::Committer;
use crate::clock::ManualClock;
use crate::domain::{
    Action, ConsentId, ConsentSpec, Decision, Evidence, IdempotencyRecord, Source, StateRecord,
    Wording,
};
use crate::domain::{
    Catalog, CatalogSpec, Change, ChangeOutcome, ContactId, Erasures, EventRecord, UnixNanos,
};
use crate::error::{ChangeError, WriteError};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::store::{Backend, Store, Tombstone, WriteBatch};
use crate::store::{MemoryStore, Recovered, StoreError};

const S: i64 = 1_000_000_000;

/// The memory store, with commits that fail while `fail` is set, and
/// a connection that `reach` can cut (see the `REACH_*` modes).
struct Flaky {
    inner: MemoryStore,
    fail: AtomicBool,
    reach: std::sync::atomic::AtomicU8,
}

/// Reachable.
const REACH_UP: u8 = 0;
/// Unreachable: nothing lands.
const REACH_DOWN: u8 = 1;
/// A commit lands, then the connection drops before its answer.
const REACH_LOST_ANSWER: u8 = 2;

impl Flaky {
    fn unreachable(&self) -> Result<(), StoreError> {
        match self.reach.load(Ordering::Relaxed) {
            REACH_DOWN => Err(StoreError::Unavailable {
                in_doubt: false,
                cause: "connection refused".into(),
            }),
            _ => Ok(()),
        }
    }
}

impl Store for Flaky {
    fn chain_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.inner.chain_head()
    }
    fn links_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(crate::audit::Link, crate::audit::Held)>, StoreError> {
        self.inner.links_after(after, limit)
    }
    fn keep_checkpoint(&self, sequence: u64, note: &str, sync: bool) -> Result<(), StoreError> {
        self.inner.keep_checkpoint(sequence, note, sync)
    }
    fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.inner.checkpoints(after, limit)
    }
    fn recover(&self) -> Result<Recovered, StoreError> {
        self.inner.recover()
    }
    fn load_states(
        &self,
        sink: &mut dyn FnMut(&str, &str, crate::store::Loaded),
    ) -> Result<u64, StoreError> {
        self.inner.load_states(sink)
    }
    fn contact_pending(
        &self,
        contact: &str,
    ) -> Result<Vec<(String, crate::domain::PendingRecord)>, StoreError> {
        self.unreachable()?;
        self.inner.contact_pending(contact)
    }
    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency(key)
    }
    fn erased_at(&self, hash: &[u8; 32]) -> Result<Option<UnixNanos>, StoreError> {
        self.unreachable()?;
        self.inner.erased_at(hash)
    }
    fn catalog_at(
        &self,
        at: crate::domain::UnixNanos,
    ) -> Result<Option<(crate::domain::UnixNanos, crate::domain::CatalogSpec)>, StoreError> {
        self.unreachable()?;
        self.inner.catalog_at(at)
    }

    fn states_after(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<crate::store::ContactStates, StoreError> {
        self.unreachable()?;
        self.inner.states_after(after, limit)
    }

    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
        self.unreachable()?;
        self.inner.contact_states(contact)
    }
    fn next_sequence(&self) -> Result<u64, StoreError> {
        self.unreachable()?;
        self.inner.next_sequence()
    }
    fn history_page(
        &self,
        contact: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.inner.history_page(contact, after, limit)
    }
    fn wordings(&self, consent: Option<&str>) -> Result<Vec<Wording>, StoreError> {
        self.inner.wordings(consent)
    }
    fn commit(&self, batch: &WriteBatch) -> Result<crate::store::Committed, StoreError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(StoreError::Io(std::io::Error::other("disk full")));
        }
        self.unreachable()?;
        let assigned = self.inner.commit(batch)?;
        if self.reach.load(Ordering::Relaxed) == REACH_LOST_ANSWER {
            return Err(StoreError::Unavailable {
                in_doubt: true,
                cause: "connection reset during COMMIT".into(),
            });
        }
        Ok(assigned)
    }
    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        self.inner.erase(contact, tombstone)
    }
    fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError> {
        self.inner.prune_idempotency(before, max)
    }
    fn purge_erased(&self) -> Result<bool, StoreError> {
        self.inner.purge_erased()
    }
}

fn setup() -> (
    Committer,
    Arc<Flaky>,
    Arc<Index>,
    watch::Receiver<Option<String>>,
) {
    let (c, store, index, failed, _) = setup_with_clock();
    (c, store, index, failed)
}

/// A committer, its store, its index, its failure report, its clock.
type Setup = (
    Committer,
    Arc<Flaky>,
    Arc<Index>,
    watch::Receiver<Option<String>>,
    Arc<ManualClock>,
);

/// As `setup`, on a clock the test moves (at 1,000,000 s).
fn setup_with_clock() -> Setup {
    let clock = ManualClock::new(1_000_000 * S);
    let (failure, failed) = watch::channel(None);
    let (available, _) = watch::channel(true);
    let store = Arc::new(Flaky {
        inner: MemoryStore::new().unwrap(),
        fail: AtomicBool::new(false),
        reach: Default::default(),
    });
    let spec = CatalogSpec {
        channels: vec!["email".into()],
        brands: vec!["acme".into()],
        consents: vec![ConsentSpec {
            id: "marketing".into(),
            text: "News from all our brands".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let catalog = Catalog::empty(None).compile(spec, 0).unwrap().catalog;
    let index = Arc::new(Index::default());
    let committer = Committer::new(
        Backend::Local(store.clone()),
        index.clone(),
        Arc::new(ArcSwap::from_pointee(catalog)),
        WriterStart {
            next_sequence: 1,
            applied: Arc::default(),
            catalog_version: 0,
            last_recorded_at: 0,
            usage: vec![0],
            idempotency_retention: Duration::from_secs(24 * 3600),
            erasures: Erasures::new(&[0; 32], []),
            purge_after: Duration::ZERO,
            checkpoints: None,
            clock: clock.clone(),
            confirmation_ttl: Duration::from_secs(3600),
            confirmation_resend: Duration::from_secs(60),
        },
        Arc::new(Metrics::default()),
        super::committer::Reports {
            failure,
            available,
            lag: Arc::default(),
        },
    );
    (committer, store, index, failed, clock)
}

fn change(action: Action, seconds: i64, key: Option<&str>) -> Change {
    Change {
        contact: ContactId::parse("contact_id", "anna").unwrap(),
        consent: ConsentId::parse("consent_id", "marketing").unwrap(),
        action,
        occurred_at: Some(seconds * S),
        source: Source::Form,
        evidence: Evidence::new(),
        idempotency_key: key.map(str::to_owned),
        issued_at: None,
        actor: "crm-sync".into(),
        confirmed: false,
        resend: false,
        bulk: false,
        by_page: false,
        addresses: Vec::new(),
    }
}

/// Commits `changes` as one group and returns each answer.
fn group(c: &mut Committer, changes: Vec<Change>) -> Vec<Result<ChangeOutcome, ChangeError>> {
    let mut answers = Vec::new();
    let mut queued = Vec::new();
    for change in changes {
        let (tx, rx) = oneshot::channel();
        queued.push((change, tx));
        answers.push(rx);
    }
    c.commit_changes(queued);
    answers
        .into_iter()
        .map(|mut rx| rx.try_recv().expect("answered by the end of the group"))
        .collect()
}

fn held(index: &Index) -> Option<Decision> {
    index.get("anna", 0).map(|h| h.decision())
}

#[test]
fn two_changes_to_one_contact_in_one_batch() {
    let (mut c, store, index, _) = setup();
    let answers = group(
        &mut c,
        vec![
            change(Action::Grant, 10, None),
            change(Action::Withdraw, 20, None),
            // Older than the withdrawal ahead of it in the same batch:
            // the batch's view, not the index, must refuse it.
            change(Action::Grant, 15, None),
        ],
    );
    let answers: Vec<ChangeOutcome> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        answers
            .iter()
            .map(|a| (a.applied, a.sequence))
            .collect::<Vec<_>>(),
        vec![(true, 1), (true, 2), (false, 3)]
    );
    let standing = answers[2].state.as_ref().expect("the withdrawal stands");
    assert_eq!((standing.action, standing.sequence), (Action::Withdraw, 2));
    assert_eq!(
        held(&index),
        Some(Decision {
            occurred_at: 20 * S,
            action: Action::Withdraw
        })
    );
    assert_eq!(store.history("anna").unwrap().len(), 3);
    assert_eq!(store.contact_states("anna").unwrap()[0].sequence, 2);
    assert_eq!(store.recover().unwrap().next_sequence, 4);
}

#[test]
fn a_key_repeated_within_a_batch() {
    let (mut c, store, _, _) = setup();
    let mut other = change(Action::Grant, 10, Some("k1"));
    other.evidence.insert("form".into(), "another".into());
    let answers = group(
        &mut c,
        vec![
            change(Action::Grant, 10, Some("k1")),
            change(Action::Grant, 10, Some("k1")),
            other,
        ],
    );
    let first = answers[0].as_ref().unwrap();
    let replay = answers[1].as_ref().unwrap();
    assert_eq!((first.applied, first.sequence), (true, 1));
    assert_eq!((replay.applied, replay.sequence), (false, 1));
    assert_eq!(replay.state, first.state, "the replay answers the state");
    assert!(matches!(&answers[2], Err(ChangeError::KeyReused(k)) if k == "k1"));
    assert_eq!(store.history("anna").unwrap().len(), 1, "recorded once");
    assert_eq!(store.idempotency("k1").unwrap().unwrap().sequence, 1);
    // And in the next batch, from the store.
    let again = group(&mut c, vec![change(Action::Grant, 10, Some("k1"))]);
    assert_eq!(again[0].as_ref().unwrap().sequence, 1);
}

#[test]
fn a_failed_commit_stops_all_writing() {
    let (mut c, store, index, failed) = setup();
    store.fail.store(true, Ordering::Relaxed);
    let answers = group(
        &mut c,
        vec![
            change(Action::Grant, 10, Some("k1")),
            change(Action::Withdraw, 20, None),
        ],
    );
    for a in &answers {
        assert!(
            matches!(a, Err(ChangeError::Write(WriteError::OutcomeUnknown(m))) if m.contains("disk full")),
            "{a:?}"
        );
    }
    assert_eq!(held(&index), None, "the index never saw it");
    assert_eq!(c.usage, vec![0], "nor the deletion guard");
    assert!(store.history("anna").unwrap().is_empty());
    let cause = failed.borrow().clone().expect("the failure is reported");
    assert!(cause.contains("disk full"), "{cause}");

    // Fail-stop: even once the disk works again, nothing more is written.
    store.fail.store(false, Ordering::Relaxed);
    let answers = group(&mut c, vec![change(Action::Grant, 30, None)]);
    assert!(
        matches!(&answers[0], Err(ChangeError::Write(WriteError::Stopped(_)))),
        "{:?}",
        answers[0]
    );
    assert!(store.history("anna").unwrap().is_empty());
    assert_eq!(held(&index), None);
}

#[test]
fn an_unreachable_store_pauses_writes_and_a_commit_in_doubt_is_reloaded() {
    let (mut c, store, index, failed) = setup();
    let available = c.available.subscribe();
    // The commit lands, its answer is lost.
    store.reach.store(REACH_LOST_ANSWER, Ordering::Relaxed);
    let answers = group(&mut c, vec![change(Action::Grant, 10, None)]);
    assert!(
        matches!(&answers[0], Err(ChangeError::Write(WriteError::OutcomeUnknown(m))) if m.contains("COMMIT")),
        "{:?}",
        answers[0]
    );
    assert!(!*available.borrow(), "writes are paused");
    assert!(failed.borrow().is_none(), "not fail-stop");
    assert_eq!(held(&index), None, "not known to be durable yet");

    // While it is down, writes are refused at once and nothing lands.
    store.reach.store(REACH_DOWN, Ordering::Relaxed);
    let answers = group(&mut c, vec![change(Action::Withdraw, 20, None)]);
    assert!(
        matches!(
            &answers[0],
            Err(ChangeError::Write(WriteError::Unavailable(_)))
        ),
        "{:?}",
        answers[0]
    );
    assert_eq!(store.history("anna").unwrap().len(), 1);
    let due = |c: &mut Committer| c.down.as_mut().expect("down").next_probe = Instant::now();
    due(&mut c);
    c.probe_if_due();
    assert!(c.down.is_some(), "a failed probe keeps writes paused");

    // It answers again: the contact in doubt is reloaded from the
    // store, so CanSend sees the grant that did land.
    store.reach.store(REACH_UP, Ordering::Relaxed);
    due(&mut c);
    c.probe_if_due();
    assert!(c.down.is_none());
    assert!(*available.borrow());
    assert_eq!(
        held(&index),
        Some(Decision {
            occurred_at: 10 * S,
            action: Action::Grant
        })
    );
    assert_eq!(c.usage, vec![1]);
    // And the next write follows the sequence the landed commit took.
    let answers = group(&mut c, vec![change(Action::Withdraw, 20, None)]);
    let outcome = answers[0].as_ref().unwrap();
    assert_eq!((outcome.applied, outcome.sequence), (true, 2));
}

#[test]
fn receipt_times_never_go_back_when_the_clock_does() {
    let (mut c, store, _, _, clock) = setup_with_clock();
    let now = |c: &Change| {
        let mut c = c.clone();
        c.occurred_at = None;
        c
    };
    let first = group(&mut c, vec![now(&change(Action::Grant, 0, None))]);
    assert!(first[0].is_ok());
    clock.step(-3_600 * S); // NTP steps the clock back an hour
    let second = group(&mut c, vec![now(&change(Action::Withdraw, 0, None))]);
    let second = second[0].as_ref().unwrap();
    let history = store.history("anna").unwrap();
    assert!(history[1].recorded_at > history[0].recorded_at);
    assert!(second.applied, "the later withdrawal still wins");
    clock.step(7_200 * S);
    group(&mut c, vec![now(&change(Action::Grant, 0, None))]);
    let history = store.history("anna").unwrap();
    assert_eq!(history[2].recorded_at, 1_003_600 * S, "back on the clock");
}

#[test]
fn keys_expire_by_the_clock() {
    let (mut c, store, _, _, clock) = setup_with_clock();
    group(&mut c, vec![change(Action::Grant, 10, Some("k1"))]);
    c.last_prune = None;
    c.prune_if_due();
    assert!(
        store.idempotency("k1").unwrap().is_some(),
        "within retention"
    );
    clock.step(25 * 3_600 * S); // past the 24 h retention
    c.last_prune = None;
    c.prune_if_due();
    assert_eq!(store.idempotency("k1").unwrap(), None);
    // The same key is now a new change.
    let again = group(&mut c, vec![change(Action::Grant, 10, Some("k1"))]);
    assert_eq!(again[0].as_ref().unwrap().sequence, 2);
}
