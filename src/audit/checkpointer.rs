//! Signs checkpoints of the chain as it grows: every `records` records or
//! every `interval`, whichever comes first, and once more at shutdown.
//! Several nodes sharing a store each sign with the same key: Ed25519
//! signatures are deterministic, so two nodes signing the same head write
//! the same note, and the store keeps the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::note::Signer;
use crate::store::{Store, StoreError};

/// How often the head is looked at.
const TICK: Duration = Duration::from_secs(1);

/// Signs and keeps checkpoints of one store's chain.
#[derive(Clone)]
pub struct Checkpointer {
    store: Arc<dyn Store>,
    signer: Signer,
    /// A checkpoint at least every this many records...
    records: u64,
    /// ...or this often, when anything was committed.
    interval: Duration,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("signer", &self.signer)
            .field("records", &self.records)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// A checkpointer of `store`'s chain.
    pub fn new(store: Arc<dyn Store>, signer: Signer, records: u64, interval: Duration) -> Self {
        Checkpointer {
            store,
            signer,
            records: records.max(1),
            interval,
        }
    }

    /// The signer (its public key, for the log at start).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Signs and keeps a checkpoint of the head unless it is at `last`;
    /// returns the head's sequence. Blocks on the store.
    pub fn checkpoint(&self, last: u64) -> Result<u64, StoreError> {
        let Some((sequence, chain)) = self.store.chain_head()? else {
            return Ok(last);
        };
        if sequence != last {
            let note = self.signer.checkpoint(sequence, &chain);
            self.store.keep_checkpoint(sequence, &note)?;
        }
        Ok(sequence)
    }

    /// Runs until `stop` is told, then signs the head once more. A store
    /// that fails is retried at the next tick (the writer's own fail-stop
    /// handles a broken store).
    pub async fn run(self, stop: Arc<tokio::sync::Notify>) {
        let mut last = 0u64;
        let mut since = Instant::now() - self.interval;
        let mut tick =
            tokio::time::interval(TICK.min(self.interval.max(Duration::from_millis(10))));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = stop.notified() => true,
            };
            let me = self.clone();
            let due_by_time = since.elapsed() >= self.interval;
            let result = tokio::task::spawn_blocking(move || {
                let head = me.store.chain_head()?.map_or(0, |(s, _)| s);
                let due = head > last && (stopping || due_by_time || head >= last + me.records);
                if due {
                    me.checkpoint(last).map(Some)
                } else {
                    Ok(None)
                }
            })
            .await;
            match result {
                Ok(Ok(Some(sequence))) => {
                    last = sequence;
                    since = Instant::now();
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not keep a checkpoint"),
                Err(e) => tracing::warn!(error = %e, "the checkpoint task failed"),
            }
            if stopping {
                return;
            }
        }
    }
}
