//! A node's connection to the shared memory store, with the faults the
//! scheduler injects: the store out of reach, and a commit whose answer is
//! lost after it landed (a commit in doubt).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::domain::{
    EventRecord, IdempotencyRecord, PendingRecord, StateRecord, UnixNanos, Wording,
};
use crate::store::{
    Changes, Committed, Cursor, Loaded, MemoryStore, Recovered, SharedStore, Store, StoreError,
    Tombstone, Write, WriteBatch,
};

/// One node's way to the store.
pub(super) struct Wire {
    pub(super) store: Arc<MemoryStore>,
    /// The store cannot be reached from this node.
    pub(super) cut: AtomicBool,
    /// The next commit lands, then its answer is lost.
    pub(super) lose_answer: AtomicBool,
}

impl Wire {
    pub(super) fn new(store: Arc<MemoryStore>) -> Arc<Wire> {
        Arc::new(Wire {
            store,
            cut: AtomicBool::new(false),
            lose_answer: AtomicBool::new(false),
        })
    }

    fn reach(&self) -> Result<(), StoreError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                in_doubt: false,
                cause: "simulated: connection refused".into(),
            });
        }
        Ok(())
    }
}

impl SharedStore for Wire {
    fn commit_on_latest(
        &self,
        cursor: Cursor,
        rule: &mut dyn FnMut(Changes) -> Write,
    ) -> Result<Committed, StoreError> {
        self.reach()?;
        let committed = self.store.commit_on_latest(cursor, rule)?;
        if self.lose_answer.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                in_doubt: true,
                cause: "simulated: connection reset during COMMIT".into(),
            });
        }
        Ok(committed)
    }

    fn changes_after(&self, cursor: Cursor, limit: usize) -> Result<Changes, StoreError> {
        self.reach()?;
        self.store.changes_after(cursor, limit)
    }

    fn wait_for_changes(&self, _timeout: Duration) {}

    fn link_keys(&self, fresh: &str) -> Result<Vec<String>, StoreError> {
        self.store.link_keys(fresh)
    }
}

impl Store for Wire {
    fn chain_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.reach()?;
        self.store.chain_head()
    }
    fn links_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(crate::audit::Link, crate::audit::Held)>, StoreError> {
        self.reach()?;
        self.store.links_after(after, limit)
    }
    fn keep_checkpoint(&self, sequence: u64, note: &str, sync: bool) -> Result<(), StoreError> {
        self.reach()?;
        self.store.keep_checkpoint(sequence, note, sync)
    }
    fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.reach()?;
        self.store.checkpoints(after, limit)
    }
    fn recover(&self) -> Result<Recovered, StoreError> {
        self.reach()?;
        self.store.recover()
    }
    fn load_states(&self, sink: &mut dyn FnMut(&str, &str, Loaded)) -> Result<u64, StoreError> {
        self.reach()?;
        self.store.load_states(sink)
    }
    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.reach()?;
        self.store.idempotency(key)
    }
    fn contact_pending(&self, contact: &str) -> Result<Vec<(String, PendingRecord)>, StoreError> {
        self.reach()?;
        self.store.contact_pending(contact)
    }
    fn erased_at(&self, hash: &[u8; 32]) -> Result<Option<UnixNanos>, StoreError> {
        self.reach()?;
        self.store.erased_at(hash)
    }
    fn catalog_at(
        &self,
        at: crate::domain::UnixNanos,
    ) -> Result<Option<(crate::domain::UnixNanos, crate::domain::CatalogSpec)>, StoreError> {
        self.reach()?;
        self.store.catalog_at(at)
    }

    fn states_after(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<crate::store::ContactStates, StoreError> {
        self.reach()?;
        self.store.states_after(after, limit)
    }

    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
        self.reach()?;
        self.store.contact_states(contact)
    }
    fn history_page(
        &self,
        contact: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.reach()?;
        self.store.history_page(contact, after, limit)
    }
    fn wordings(&self, consent: Option<&str>) -> Result<Vec<Wording>, StoreError> {
        self.reach()?;
        self.store.wordings(consent)
    }
    fn commit(&self, batch: &WriteBatch) -> Result<Committed, StoreError> {
        self.reach()?;
        self.store.commit(batch)
    }
    fn next_sequence(&self) -> Result<u64, StoreError> {
        self.reach()?;
        self.store.next_sequence()
    }
    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        self.reach()?;
        self.store.erase(contact, tombstone)
    }
    fn purge_erased(&self) -> Result<bool, StoreError> {
        self.reach()?;
        self.store.purge_erased()
    }
    fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError> {
        self.reach()?;
        self.store.prune_idempotency(before, max)
    }
}
