//! Time-based upkeep between group commits: forgetting idempotency keys
//! past retention, and purging what erasures deleted from the store's
//! files.

use std::time::{Duration, Instant};

use super::committer::Committer;

/// How often expired idempotency keys are pruned, and the fewest keys a
/// pass may remove. A pass removes up to twice the keys recorded since the
/// last one, so pruning keeps pace with any insert rate.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
const PRUNE_BATCH: usize = 10_000;

impl Committer {
    /// Forgets idempotency keys past retention, between group commits, at
    /// most once a second: up to twice as many as were recorded since.
    pub(super) fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        match self.store.prune_idempotency(
            self.clock.now().saturating_sub(self.retention),
            PRUNE_BATCH.max(2 * std::mem::take(&mut self.keys_since_prune)),
        ) {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "idempotency keys past retention forgotten"),
            Err(e) => self.fail_stop(&e, "pruning idempotency keys"),
        }
    }

    /// Purges what erasures deleted from the store's files once the oldest
    /// erasure waiting for it is `purge_after` old. Writes wait meanwhile
    /// (they queue); CanSend, answered from memory, does not.
    pub(super) fn purge_if_due(&mut self) {
        if self
            .purge_pending_since
            .is_some_and(|t| t.elapsed() >= self.purge_after)
        {
            self.purge();
        }
    }

    pub(super) fn purge(&mut self) {
        let started = Instant::now();
        match self.store.purge_erased() {
            Ok(_) => {
                self.purge_pending_since = None;
                self.metrics.purged(started.elapsed());
                tracing::info!(
                    seconds = started.elapsed().as_secs_f64(),
                    "erased contacts purged from the data files"
                );
            }
            Err(e) => self.fail_stop(&e, "purging erased contacts"),
        }
    }

    /// Signs and keeps a checkpoint of the chain when one is due (or,
    /// `finally`, when anything was committed since the last).
    pub(super) fn checkpoint_if_due(&mut self, finally: bool) {
        let head = self.next_sequence.saturating_sub(1);
        let Some(checkpoints) = &mut self.checkpoints else {
            return;
        };
        if !(checkpoints.due(head) || finally) {
            return;
        }
        if let Err(e) = checkpoints.keep(&*self.store, finally) {
            self.fail_stop(&e, "keeping a signed checkpoint");
        }
    }
}
