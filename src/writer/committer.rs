//! The writer thread's loop: takes what is queued, folds the changes into
//! one group commit, runs catalog applies and erasures between groups,
//! applies the feed's pages, and does the upkeep between groups.
//!
//! The thread's state is [`Committer`]; its work lives in rooms of one
//! concern each: `rule.rs` (ruling a group of changes into a batch),
//! `commit.rs` (committing it to a store of one node, or under a shared
//! store's lock on the latest view), `follow.rs` (applying what other nodes
//! committed), `erasure.rs`, `catalog.rs`, `faults.rs` (fail-stop, and the
//! up/down/probe states of an unreachable store) and `upkeep.rs` (pruning
//! keys, purging erasures).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Command, WriterStart};
use crate::clock::{Clock, nanos};
use crate::domain::{Catalog, Erasures, UnixNanos};
use crate::error::WriteError;
use crate::index::Index;
use crate::metrics::{Metrics, Shed};
use crate::store::{Cursor, SharedStore, Store};

/// Most commands folded into one transaction.
pub(super) const MAX_GROUP: usize = 4096;

/// The store could not be reached: writes pause until it answers.
pub(super) struct Down {
    pub(super) cause: String,
    pub(super) next_probe: Instant,
    pub(super) backoff: Duration,
    /// Contacts whose commit is in doubt: reloaded from the store when it
    /// answers again.
    pub(super) in_doubt: std::collections::HashSet<crate::domain::ContactId>,
}

/// Where the writer thread says how it is.
pub(super) struct Reports {
    /// A failure for good (the server watches it).
    pub(super) failure: watch::Sender<Option<String>>,
    /// Whether the store takes writes now.
    pub(super) available: watch::Sender<bool>,
    /// How far behind the shared store's feed is, and whether it broke.
    pub(super) lag: Arc<super::Lag>,
}

/// Everything the writer thread owns.
pub(super) struct Committer {
    pub(super) store: Arc<dyn Store>,
    /// Set when other nodes write to the store too: every commit then
    /// rules on the latest view, under the store's commit lock.
    pub(super) shared: Option<Arc<dyn SharedStore>>,
    pub(super) index: Arc<Index>,
    pub(super) catalog: Arc<ArcSwap<Catalog>>,
    pub(super) next_sequence: u64,
    /// How far the index has caught up (see [`WriterStart::applied`]).
    pub(super) applied: Arc<super::Applied>,
    /// The catalog version in force here (a shared store counts them).
    pub(super) catalog_version: u64,
    /// The latest receipt time handed out or applied.
    pub(super) last_recorded: UnixNanos,
    /// Contacts holding state, per interned consent (deletion guard).
    pub(super) usage: Vec<u64>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) erasures: Erasures,
    /// Idempotency retention, in nanoseconds.
    pub(super) retention: i64,
    pub(super) last_prune: Option<Instant>,
    /// Idempotency keys recorded since the last pruning pass.
    pub(super) keys_since_prune: usize,
    pub(super) purge_after: Duration,
    /// When the oldest erasure not yet purged from the store's files was made.
    pub(super) purge_pending_since: Option<Instant>,
    /// When to sign checkpoints of the chain.
    pub(super) checkpoints: Option<crate::audit::Checkpoints>,
    pub(super) clock: Arc<dyn Clock>,
    /// Set once the store failed: every later write is refused.
    pub(super) failed: Option<String>,
    /// Where the failure is reported (the server watches it).
    pub(super) failure: watch::Sender<Option<String>>,
    /// Set while the store cannot be reached.
    pub(super) down: Option<Down>,
    /// Whether the store takes writes now (the server's health watches it).
    pub(super) available: watch::Sender<bool>,
    /// How long a confirmation link works, in nanoseconds.
    pub(super) confirmation_ttl: i64,
    /// At most one new confirmation link per (contact, consent) this often.
    pub(super) confirmation_resend: i64,
    /// How far behind the shared store's feed is, and whether it broke.
    pub(super) lag: Arc<super::Lag>,
}

impl Committer {
    pub(super) fn new(
        store: crate::store::Backend,
        index: Arc<Index>,
        catalog: Arc<ArcSwap<Catalog>>,
        start: WriterStart,
        metrics: Arc<Metrics>,
        reports: Reports,
    ) -> Self {
        let Reports {
            failure,
            available,
            lag,
        } = reports;
        Self {
            shared: store.shared().cloned(),
            store: store.store(),
            index,
            catalog,
            next_sequence: start.next_sequence,
            applied: start.applied,
            catalog_version: start.catalog_version,
            last_recorded: start.last_recorded_at,
            usage: start.usage,
            metrics,
            erasures: start.erasures,
            retention: nanos(start.idempotency_retention),
            last_prune: None,
            keys_since_prune: 0,
            purge_after: start.purge_after,
            purge_pending_since: None,
            checkpoints: start.checkpoints,
            failed: None,
            failure,
            clock: start.clock,
            down: None,
            available,
            confirmation_ttl: nanos(start.confirmation_ttl),
            confirmation_resend: nanos(start.confirmation_resend),
            lag,
        }
    }

    /// Where this node stands with a shared store.
    pub(super) fn cursor(&self) -> Cursor {
        Cursor {
            sequence: self.applied.get(),
            catalog_version: self.catalog_version,
        }
    }

    /// The receipt time the next recorded change gets: wall-clock time,
    /// but strictly after everything recorded or applied before (on any
    /// node: a node whose clock runs behind cannot put a change before one
    /// it has seen).
    pub(super) fn receipt_time(&self) -> UnixNanos {
        self.clock.now().max(self.last_recorded + 1)
    }

    /// Runs until closed (or until every handle is gone), then answers the
    /// close once everything queued is done.
    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut queue = Vec::with_capacity(MAX_GROUP);
        let mut closers: Vec<oneshot::Sender<()>> = Vec::new();
        let mut follows = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            queue.push(first);
            while queue.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => queue.push(c),
                    Err(_) => break,
                }
            }
            self.probe_if_due();
            let mut changes = Vec::with_capacity(queue.len());
            for cmd in queue.drain(..) {
                if let Some(cause) = &self.failed {
                    refuse(cmd, cause, &mut closers, &mut rx);
                    continue;
                }
                // While the store is unreachable writes are refused; the
                // rest (a close, the feed's pages) goes on.
                let cmd = match &self.down {
                    Some(down) => {
                        let unavailable = WriteError::Unavailable(down.cause.clone());
                        match refuse_unavailable(cmd, unavailable) {
                            Some(cmd) => cmd,
                            None => continue,
                        }
                    }
                    None => cmd,
                };
                match cmd {
                    Command::Change(c, deadline, reply) => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            // The caller has given up: applying it now would
                            // record what it was told failed.
                            self.metrics.shed(Shed::Deadline);
                            let _ = reply.send(Err(WriteError::DeadlineExceeded.into()));
                        } else {
                            changes.push((c, reply));
                        }
                    }
                    Command::Catalog(spec, reply) => {
                        // Everything queued before the apply commits first.
                        self.commit_changes(std::mem::take(&mut changes));
                        let _ = reply.send(self.apply_catalog(spec));
                    }
                    Command::Erase(contact, reason, reply) => {
                        self.commit_changes(std::mem::take(&mut changes));
                        let _ = reply.send(self.erase(contact, reason));
                    }
                    Command::Close(done) => {
                        // What is already queued still runs; nothing new gets in.
                        rx.close();
                        closers.push(done);
                    }
                    Command::Tick => {}
                    // Applied after this group commits (which catches up
                    // on its own): what the commit already applied is
                    // skipped, by sequence.
                    Command::Follow(page) => follows.push(page),
                }
            }
            self.commit_changes(changes);
            for page in follows.drain(..) {
                self.apply_changes(page);
            }
            if self.failed.is_none() && self.down.is_none() {
                self.prune_if_due();
                self.purge_if_due();
                self.checkpoint_if_due(false);
            }
        }
        // Nothing erased may stay in the files because the server stopped.
        if self.purge_pending_since.is_some() && self.failed.is_none() && self.down.is_none() {
            self.purge();
        }
        // The last records get their checkpoint.
        if self.failed.is_none() && self.down.is_none() {
            self.checkpoint_if_due(true);
        }
        tracing::info!("writer stopped: queue drained");
        for done in closers {
            let _ = done.send(());
        }
    }
}

/// Answers a write while the store is unreachable; hands back what is not
/// a write (a close, a tick, a page of the feed).
fn refuse_unavailable(cmd: Command, unavailable: WriteError) -> Option<Command> {
    match cmd {
        Command::Change(_, _, reply) => {
            let _ = reply.send(Err(unavailable.into()));
        }
        Command::Catalog(_, reply) => {
            let _ = reply.send(Err(unavailable.into()));
        }
        Command::Erase(_, _, reply) => {
            let _ = reply.send(Err(unavailable.into()));
        }
        other => return Some(other),
    }
    None
}

/// Answers a command after a store failure: nothing is recorded any more.
fn refuse(
    cmd: Command,
    cause: &str,
    closers: &mut Vec<oneshot::Sender<()>>,
    rx: &mut mpsc::Receiver<Command>,
) {
    let stopped = || WriteError::Stopped(cause.to_owned());
    match cmd {
        Command::Change(_, _, reply) => {
            let _ = reply.send(Err(stopped().into()));
        }
        Command::Catalog(_, reply) => {
            let _ = reply.send(Err(stopped().into()));
        }
        Command::Erase(_, _, reply) => {
            let _ = reply.send(Err(stopped().into()));
        }
        Command::Close(done) => {
            rx.close();
            closers.push(done);
        }
        // After a failure nothing is applied any more; the process exits.
        Command::Tick | Command::Follow(_) => {}
    }
}
