//! Committing a group: rule it, write it in one transaction, then update
//! the index and answer. A failed commit changes nothing: not the index,
//! not the sequence counter.
//!
//! With a store of one node the writer's view is the whole truth: it rules,
//! then commits. With a shared store the commit is a transaction the writer
//! drives (DESIGN.md §5, "one view per commit"): under the store's commit
//! lock it first applies what the other nodes committed since its cursor
//! (the same code as the feed), then rules the group on that view, then
//! the store writes and commits. Every rule therefore gives on N nodes
//! exactly what it gives on one.

use std::time::Instant;

use super::Reply;
use super::batch::GroupBatch;
use super::committer::Committer;
use crate::domain::{Change, ChangeOutcome, ContactId};
use crate::error::{ChangeError, WriteError};
use crate::store::{Committed, SharedStore, StoreError, Write};

impl Committer {
    /// Rules every change, commits those that record something in one
    /// transaction, then updates the index and answers.
    pub(super) fn commit_changes(
        &mut self,
        changes: Vec<(Change, Reply<ChangeOutcome, ChangeError>)>,
    ) {
        if changes.is_empty() {
            return;
        }
        match self.shared.clone() {
            None => {
                let started = Instant::now();
                if let Some(batch) = self.rule_group(changes) {
                    let ruled = started.elapsed();
                    // The store times its own steps; the ruling is the writer's.
                    let result = self.store.commit(&batch.write).map(|mut c| {
                        if let Some(p) = &mut c.phases {
                            p.rule = ruled;
                        }
                        c
                    });
                    let contacts = || batch.contacts().collect();
                    let in_doubt =
                        matches!(result, Err(StoreError::Unavailable { in_doubt: true, .. }))
                            .then(contacts)
                            .unwrap_or_default();
                    self.committed(batch, result, in_doubt, started);
                }
            }
            Some(shared) => self.commit_on_latest(&*shared, changes),
        }
    }

    /// The shared store's commit: catch up, rule, write, under its lock.
    fn commit_on_latest(
        &mut self,
        shared: &dyn SharedStore,
        changes: Vec<(Change, Reply<ChangeOutcome, ChangeError>)>,
    ) {
        let started = Instant::now();
        let mut queued = Some(changes);
        let mut ruled: Option<GroupBatch> = None;
        let cursor = self.cursor();
        let result = shared.commit_on_latest(cursor, &mut |latest| {
            self.apply_changes(latest);
            let Some(mut batch) = self.rule_group(queued.take().unwrap_or_default()) else {
                return Write::Nothing;
            };
            let write = std::mem::take(&mut batch.write);
            ruled = Some(batch);
            Write::Batch(write)
        });
        if let Some(changes) = queued.take() {
            // The lock or the view could not be had: nothing was ruled.
            let error = match result {
                Err(e) => e,
                Ok(_) => unreachable!("a commit that succeeds hands out its view"),
            };
            self.fail_stop(&error, "catching up before a commit");
            for (_, reply) in changes {
                let _ = reply.send(Err(match &error {
                    StoreError::Unavailable { cause, .. } => {
                        WriteError::Unavailable(cause.clone()).into()
                    }
                    e if self.failed.is_none() => WriteError::Unavailable(e.to_string()).into(),
                    e => WriteError::Stopped(e.to_string()).into(),
                }));
            }
            return;
        }
        if let Some(batch) = ruled {
            // No contacts in doubt to keep: what a commit in doubt did comes
            // back through the feed, in order, if it landed.
            self.committed(batch, result, Vec::new(), started);
        } else if let Err(e) = result {
            // Nothing was to be written; the rollback's error changes nothing.
            tracing::debug!(error = %e, "a commit with nothing to write ended in an error");
        }
    }

    /// Answers a group after its commit: acknowledged (index, then
    /// replies), or refused, or "outcome unknown" with the contacts in
    /// doubt kept for reloading.
    fn committed(
        &mut self,
        batch: GroupBatch,
        result: Result<Committed, StoreError>,
        contacts: Vec<ContactId>,
        started: Instant,
    ) {
        let n = batch.len();
        let first_sequence = batch.first_sequence();
        self.keys_since_prune += batch.keys();
        match result {
            Ok(committed) => {
                // Counted before anyone is answered: a caller that reads the
                // metrics after its answer sees its commit.
                self.metrics.commit(n, started.elapsed());
                if let Some(phases) = &committed.phases {
                    self.metrics.commit_phases(phases);
                }
                let events = batch.events() as u64;
                batch.acknowledge(&self.index, &mut self.usage);
                if events > 0 {
                    self.applied.advance(first_sequence + events - 1);
                }
            }
            Err(StoreError::Unavailable { in_doubt, cause }) => {
                tracing::error!(cause = %cause, changes = n, in_doubt, "commit failed: the store cannot be reached");
                self.metrics.commit_failed();
                self.next_sequence = first_sequence;
                self.went_down(format!("committing a batch: {cause}"));
                if in_doubt {
                    if let Some(down) = &mut self.down {
                        down.in_doubt.extend(contacts);
                    }
                    batch.fail(&cause);
                } else {
                    batch.refuse_unavailable(&cause);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, changes = n, "commit failed; this batch is answered \"outcome unknown\"");
                self.metrics.commit_failed();
                self.next_sequence = first_sequence;
                // Reported before anyone is answered.
                self.fail_stop(&e, "committing a batch");
                batch.fail(&e);
            }
        }
    }
}
