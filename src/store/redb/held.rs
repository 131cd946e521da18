//! The writer's redb transaction, held open across group commits.
//!
//! With the log, a group commit is durable once its record is fsync'd
//! (`logged.rs`); redb's own commit only makes the group readable from the
//! file. That commit is a fixed cost (the tables' roots updated, the dirty
//! pages checksummed and handed to the file, the next group copying the
//! same tail pages again), about a third of the writer's CPU at 24 grants a
//! group. So the writer keeps its transaction open for up to
//! [`HELD_GROUPS`] groups, each durable by its record, and commits it once.
//!
//! Nothing may read the file past an acknowledged group, so whoever opens
//! the database (a read, any other write, a close: `RedbStore::db`) first
//! commits the held transaction ([`Held::settle`]). A read that comes
//! while groups are held waits for the group in hand (a fraction of a
//! millisecond) and that commit; otherwise it does not wait.
//!
//! A crash loses only what the log replays: the file's `meta` `log` names
//! the last record its committed state holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::store::StoreError;

/// Groups a held transaction takes before the writer commits it.
pub(super) const HELD_GROUPS: usize = 8;

/// The transaction the writer keeps open, and the log records (number,
/// payload) of the groups it holds: should the next group's append fail,
/// the transaction is dropped and they go into the file again.
pub(super) struct Open {
    pub(super) txn: redb::WriteTransaction,
    pub(super) records: Vec<(u64, Vec<u8>)>,
}

/// The slot for the writer's open transaction.
#[derive(Default)]
pub(super) struct Held {
    slot: Mutex<Option<Open>>,
    /// Whether a transaction holding acknowledged groups is open (in the
    /// slot, or in the writer's hands): a reader that sees `false` reads
    /// the file without waiting.
    pending: AtomicBool,
    /// A held transaction failed to commit: the log holds groups the
    /// file lacks, so no write may land before a restart replays them.
    failed: AtomicBool,
}

impl Held {
    /// The slot, for the writer's group: taken for the whole group, so a
    /// reader waits for the group in hand.
    pub(super) fn lock(&self) -> MutexGuard<'_, Option<Open>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After the writer's group, before its answers: whether `slot` now
    /// holds acknowledged groups, which a reader must commit first.
    pub(super) fn mark(&self, slot: &Option<Open>) {
        self.pending.store(slot.is_some(), Ordering::Release);
    }

    /// `f` over the held transaction, if one is open (it sees the groups
    /// it holds); `None` when none is.
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        self.lock().as_ref().map(|open| f(&open.txn))
    }

    /// Commits the held transaction, if any, without an fsync (its records
    /// are durable in the log): every acknowledged group is then in the
    /// file.
    pub(super) fn settle(&self) -> Result<(), StoreError> {
        if !self.pending.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut slot = self.lock();
        let Some(open) = slot.take() else {
            return Ok(());
        };
        let r = super::logged::commit(open.txn, super::logged::Durable::Later);
        if r.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        self.pending.store(false, Ordering::Release);
        r
    }

    /// Whether a transaction holding acknowledged groups is open.
    #[cfg(test)]
    pub(super) fn holding(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Acknowledged groups are missing from the file: writes are refused
    /// until a restart replays the log.
    pub(super) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Whether a held transaction failed to commit (writes are refused
    /// until a restart replays the log).
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}
