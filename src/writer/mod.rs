//! The single writer: every mutation and every catalog change goes through
//! one thread, which groups whatever is queued into one durable store
//! transaction (group commit).
//!
//! Invariants:
//! - a reply is sent only after the batch holding the change has committed;
//! - the index is updated only after that commit, so a failed commit leaves
//!   it untouched and readers never see a decision that could be lost;
//! - `recorded_at` and `sequence` strictly increase in recording order;
//! - a catalog apply or an erasure is serialized with the mutations around
//!   it, so a consent cannot gain state while it is being deleted.
//!
//! Layout: this file is the handle callers hold ([`Writer`]); `committer.rs`
//! is the thread's loop and state, with its work in rooms of one concern:
//! `rule.rs` (rulings from [`crate::domain::ruling`]), `commit.rs` (one
//! node's commit, or a shared store's commit on the latest view),
//! `follow.rs` (applying what other nodes committed), `erasure.rs`,
//! `catalog.rs`, `faults.rs` (fail-stop; down and probing), `upkeep.rs`;
//! `batch.rs` is what one group commit has ruled so far; `follower.rs` the
//! feed thread of a shared store; `applied.rs` how far the index caught up.
//!
//! Shutdown is explicit: [`Writer::close`] stops taking commands, finishes
//! what is queued and joins the thread.

mod applied;
mod batch;
mod catalog;
mod commit;
#[cfg(test)]
mod commit_tests;
mod committer;
mod erasure;
mod faults;
mod follow;
mod follower;
mod marks;
mod rule;
#[cfg(test)]
mod simulation;
mod start;
mod upkeep;

pub(crate) use applied::Applied;
pub(crate) use follower::Lag;
pub(crate) use marks::place;
pub use start::{LoadReport, Options};
pub(crate) use start::{Rebuilt, rebuild};

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};

use crate::domain::{Catalog, CatalogSpec, Change, ChangeOutcome, ContactId, Erasures, UnixNanos};
use crate::error::{CatalogError, ChangeError, EraseError, WriteError};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::store::{Backend, Changes};
use committer::Committer;

/// Queue depth before callers wait (back-pressure).
const QUEUE: usize = 16 * 1024;

/// A reply the writer sends once the command is durable (or refused).
pub(crate) type Reply<T, E> = oneshot::Sender<Result<T, E>>;

enum Command {
    /// A change, and the instant after which it must not be applied (the
    /// caller's deadline).
    Change(Change, Option<Instant>, Reply<ChangeOutcome, ChangeError>),
    Catalog(CatalogSpec, Reply<Arc<Catalog>, CatalogError>),
    Erase(ContactId, String, Reply<UnixNanos, EraseError>),
    /// Stop taking commands; answer once everything queued is done.
    Close(oneshot::Sender<()>),
    /// Once a second: time-based upkeep (pruning keys, purging erasures)
    /// runs even when no write comes.
    Tick,
    /// A page of a shared store's change feed.
    Follow(Changes),
}

/// What the writer takes over from the store at start.
pub(crate) struct WriterStart {
    /// The sequence the next event gets.
    pub(crate) next_sequence: u64,
    /// How far the index has caught up; with a store of its own, the writer
    /// advances it at every commit (with a shared one, the feed does).
    pub(crate) applied: Arc<Applied>,
    /// The catalog version loaded (a shared store's feed compares it).
    pub(crate) catalog_version: u64,
    /// The latest receipt time already on file.
    pub(crate) last_recorded_at: UnixNanos,
    /// Contacts holding state, per interned consent, as loaded.
    pub(crate) usage: Vec<u64>,
    /// How long idempotency keys are remembered (at least 24 hours).
    pub(crate) idempotency_retention: std::time::Duration,
    /// Every erasure on file.
    pub(crate) erasures: Erasures,
    /// How long after an erasure the store purges what it deleted (so
    /// that several erasures share one purge).
    pub(crate) purge_after: std::time::Duration,
    /// When to sign checkpoints of the chain (none: no signing key).
    pub(crate) checkpoints: Option<crate::audit::Checkpoints>,
    /// Where receipt times and pruning cutoffs come from.
    pub(crate) clock: Arc<dyn crate::clock::Clock>,
    /// How long a confirmation link works (a pending grant waits as long).
    pub(crate) confirmation_ttl: std::time::Duration,
    /// At most one new confirmation link per (contact, consent) this often.
    pub(crate) confirmation_resend: std::time::Duration,
}

/// A queued command whose reply never came: the writer died with it.
fn unanswered() -> WriteError {
    WriteError::OutcomeUnknown("the writer stopped before answering".into())
}

/// A cheap, cloneable handle to the writer thread.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Command>,
    /// The writer thread, then the threads around it (the feed, the
    /// ticker): joined by [`Writer::close`], in that order.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    helpers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Dropped by [`Writer::close`]: the ticker stops at once.
    ticker_stop: Arc<Mutex<Option<std::sync::mpsc::Sender<()>>>>,
    /// `Some(cause)` once the store failed or the thread panicked.
    failure: watch::Receiver<Option<String>>,
    /// Whether the store takes writes now (false while it is unreachable).
    available: watch::Receiver<bool>,
    /// How far behind a shared store's feed is.
    lag: Arc<Lag>,
}

impl Writer {
    /// Starts the writer thread over the store, the index it updates and
    /// the catalog it swaps.
    pub(crate) fn start(
        store: Backend,
        index: Arc<Index>,
        catalog: Arc<ArcSwap<Catalog>>,
        start: WriterStart,
        metrics: Arc<Metrics>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (failure_tx, failure) = watch::channel(None);
        let (available_tx, available) = watch::channel(true);
        let on_panic = failure_tx.clone();
        let lag = Arc::new(Lag::default());
        let mut helpers = Vec::new();
        if let Some(shared) = store.shared() {
            let (feed_store, weak) = (shared.clone(), tx.downgrade());
            let (applied, version) = (start.applied.clone(), start.catalog_version);
            let feed_lag = lag.clone();
            helpers.push(
                std::thread::Builder::new()
                    .name("consentd-feed".into())
                    .spawn(move || follower::run(feed_store, weak, applied, version, feed_lag))
                    .expect("spawning the feed thread at start-up"),
            );
        }
        let mut committer = Committer::new(
            store,
            index,
            catalog,
            start,
            metrics,
            committer::Reports {
                failure: failure_tx,
                available: available_tx,
                lag: lag.clone(),
            },
        );
        let thread = std::thread::Builder::new()
            .name("consentd-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| committer.run(rx));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "the writer panicked: writes stop, the server goes down");
                    let _ = on_panic.send(Some(format!("the writer panicked: {what}")));
                }
            })
            .expect("spawning the writer thread at start-up");
        // The ticker holds only a weak handle, and waits on a channel that
        // the close drops: it ends at once with the writer.
        let weak = tx.downgrade();
        let (ticker_stop, stopped) = std::sync::mpsc::channel::<()>();
        helpers.push(
            std::thread::Builder::new()
                .name("consentd-writer-tick".into())
                .spawn(move || {
                    while let Some(tx) = weak.upgrade() {
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(Command::Tick)
                        {
                            return;
                        }
                        drop(tx);
                        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                            stopped.recv_timeout(std::time::Duration::from_secs(1))
                        {
                            return;
                        }
                    }
                })
                .expect("spawning the writer ticker at start-up"),
        );
        Writer {
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
            helpers: Arc::new(Mutex::new(helpers)),
            ticker_stop: Arc::new(Mutex::new(Some(ticker_stop))),
            failure,
            available,
            lag,
        }
    }

    /// How far behind a shared store's feed is: changes committed but not
    /// read yet, and for how long it has been behind.
    pub(crate) fn feed_lag(&self) -> (u64, std::time::Duration) {
        self.lag.get()
    }

    /// Why this node's view of a shared store cannot be kept up: a record
    /// it cannot read (its checks are then NOT_SERVING).
    pub(crate) fn feed_broken(&self) -> Option<(u64, String)> {
        self.lag.broken()
    }

    /// Whether the store takes writes, now and as it changes: false while
    /// it cannot be reached (a database down), true again once it answers.
    pub(crate) fn available(&self) -> watch::Receiver<bool> {
        self.available.clone()
    }

    /// Commands waiting in the queue.
    pub(crate) fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Resolves with the cause once writing has stopped for good (a store
    /// failure, a panic); never while the writer is healthy.
    pub(crate) async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        let cause = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|c| c.clone());
        match cause {
            Some(cause) => cause,
            // The writer ended cleanly (closed): it will never fail now.
            None => std::future::pending().await,
        }
    }

    /// Records a Grant or Withdraw; returns once it is durable and visible.
    /// A full queue is [`WriteError::Overloaded`] at once (nothing recorded); a
    /// change still queued at `deadline` is not applied
    /// ([`WriteError::DeadlineExceeded`]).
    pub(crate) async fn change(
        &self,
        change: Change,
        deadline: Option<Instant>,
    ) -> Result<ChangeOutcome, ChangeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Change(change, deadline, tx))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    WriteError::Overloaded("the writer queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
            })?;
        rx.await.map_err(|_| unanswered())?
    }

    /// Records a change, waiting for room in the queue when it is full:
    /// for what a person did (an unsubscribe click), which must not be lost
    /// to a busy moment.
    pub(crate) async fn change_waiting(
        &self,
        change: Change,
    ) -> Result<ChangeOutcome, ChangeError> {
        self.submit(change).await?.await.map_err(|_| unanswered())?
    }

    /// Queues a change without waiting for it to be recorded: the receiver
    /// answers once it is durable. Waits while the writer's queue is full
    /// (an import's back-pressure).
    pub(crate) async fn submit(
        &self,
        change: Change,
    ) -> Result<oneshot::Receiver<Result<ChangeOutcome, ChangeError>>, WriteError> {
        self.send(|tx| Command::Change(change, None, tx)).await
    }

    /// Erases a contact; returns the erasure time once durable.
    pub(crate) async fn erase(
        &self,
        contact: ContactId,
        reason: String,
    ) -> Result<UnixNanos, EraseError> {
        let rx = self.send(|tx| Command::Erase(contact, reason, tx)).await?;
        rx.await.map_err(|_| unanswered())?
    }

    /// Validates and installs a new catalog, durably, or changes nothing.
    pub(crate) async fn apply_catalog(
        &self,
        spec: CatalogSpec,
    ) -> Result<Arc<Catalog>, CatalogError> {
        let rx = self.send(|tx| Command::Catalog(spec, tx)).await?;
        rx.await.map_err(|_| unanswered())?
    }

    /// Stops taking commands, commits everything already queued, and joins
    /// the writer thread, then the feed and the ticker. Later calls to any
    /// method answer [`WriteError::Closed`]; closing again is harmless.
    pub(crate) async fn close(&self) -> Result<(), WriteError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Close(tx)).await.is_ok() {
            // An error here means the thread ended without answering: the
            // join below tells whether it panicked.
            let _ = rx.await;
        }
        drop(
            self.ticker_stop
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let helpers = std::mem::take(
            &mut *self
                .helpers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        tokio::task::spawn_blocking(move || {
            let writer = thread.map_or(Ok(()), JoinHandle::join);
            // The feed sees the writer closed within its idle wait.
            for helper in helpers {
                let _ = helper.join();
            }
            writer
        })
        .await
        .map_err(|_| WriteError::WriterPanicked)?
        .map_err(|_| WriteError::WriterPanicked)
    }

    /// Queues a command carrying a reply channel; returns that channel.
    async fn send<T, E>(
        &self,
        command: impl FnOnce(Reply<T, E>) -> Command,
    ) -> Result<oneshot::Receiver<Result<T, E>>, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(command(tx))
            .await
            .map_err(|_| WriteError::Closed)?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Action, ConsentId, ConsentSpec, Evidence, Source};
    use crate::store::{MemoryStore, Store};

    /// A writer over `store` with a one-consent catalog applied.
    async fn started(store: Arc<MemoryStore>, index: Arc<Index>) -> Writer {
        started_over(Backend::Local(store), index).await
    }

    async fn started_over(store: Backend, index: Arc<Index>) -> Writer {
        let writer = Writer::start(
            store,
            index,
            Arc::new(ArcSwap::from_pointee(Catalog::empty(None))),
            WriterStart {
                next_sequence: 1,
                applied: Arc::default(),
                catalog_version: 0,
                last_recorded_at: 0,
                usage: Vec::new(),
                idempotency_retention: std::time::Duration::from_secs(24 * 3600),
                erasures: Erasures::new(&[0; 32], []),
                purge_after: std::time::Duration::ZERO,
                checkpoints: None,
                clock: Arc::new(crate::clock::SystemClock),
                confirmation_ttl: std::time::Duration::from_secs(3600),
                confirmation_resend: std::time::Duration::from_secs(60),
            },
            Arc::new(Metrics::default()),
        );
        writer
            .apply_catalog(CatalogSpec {
                channels: vec!["email".into()],
                consents: vec![ConsentSpec {
                    id: "marketing".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        writer
    }

    fn grant(who: &str) -> Change {
        Change {
            contact: ContactId::parse("contact_id", who).unwrap(),
            consent: ConsentId::parse("consent_id", "marketing").unwrap(),
            action: Action::Grant,
            occurred_at: None,
            source: Source::Api,
            evidence: Evidence::new(),
            idempotency_key: None,
            issued_at: None,
            actor: String::new(),
            confirmed: false,
            resend: false,
            bulk: false,
            by_page: false,
            addresses: Vec::new(),
        }
    }

    #[tokio::test]
    async fn close_joins_the_writer_the_feed_and_the_ticker() {
        let store = Arc::new(MemoryStore::new().unwrap());
        let shared: Arc<dyn crate::store::SharedStore> = store.clone();
        let writer = started_over(Backend::Shared(shared), Arc::default()).await;
        assert!(Arc::strong_count(&store) > 1, "the threads hold it");
        writer.close().await.unwrap();
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "every thread has ended and let go of the store"
        );
    }

    #[tokio::test]
    async fn close_finishes_what_is_queued_then_refuses() {
        let store = Arc::new(MemoryStore::new().unwrap());
        let index = Arc::new(Index::default());
        let writer = started(store.clone(), index.clone()).await;
        // Queued but not awaited: the close must still commit it.
        let queued = writer.submit(grant("anna")).await.unwrap();
        writer.close().await.unwrap();
        assert!(queued.await.unwrap().unwrap().applied);
        assert_eq!(store.history("anna").unwrap().len(), 1);
        assert!(index.get("anna", 0).is_some());
        assert!(matches!(
            writer.change(grant("bob"), None).await,
            Err(ChangeError::Write(WriteError::Closed))
        ));
        writer.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_late_change_is_not_applied() {
        // A queue of one that nobody drains: the second change finds it full.
        let (tx, rx) = mpsc::channel(1);
        let (_failure_tx, failure) = watch::channel(None);
        let (_available_tx, available) = watch::channel(true);
        let stalled = Writer {
            tx,
            thread: Arc::new(Mutex::new(None)),
            helpers: Arc::default(),
            ticker_stop: Arc::default(),
            failure,
            available,
            lag: Arc::default(),
        };
        let first = tokio::spawn({
            let w = stalled.clone();
            async move { w.change(grant("anna"), None).await }
        });
        while rx.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            stalled.change(grant("bob"), None).await,
            Err(ChangeError::Write(WriteError::Overloaded(_)))
        ));
        drop(rx);
        assert!(matches!(
            first.await.unwrap(),
            Err(ChangeError::Write(WriteError::OutcomeUnknown(_)))
        ));

        // A change whose deadline passed while it waited is not applied.
        let store = Arc::new(MemoryStore::new().unwrap());
        let writer = started(store.clone(), Arc::new(Index::default())).await;
        let past = Instant::now();
        assert!(matches!(
            writer.change(grant("carl"), Some(past)).await,
            Err(ChangeError::Write(WriteError::DeadlineExceeded))
        ));
        assert!(store.history("carl").unwrap().is_empty(), "not applied");
        let later = Instant::now() + std::time::Duration::from_secs(60);
        assert!(
            writer
                .change(grant("carl"), Some(later))
                .await
                .unwrap()
                .applied
        );
        writer.close().await.unwrap();
    }
}
