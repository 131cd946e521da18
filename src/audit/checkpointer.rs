//! When to sign a checkpoint of the chain: every `records` records or
//! every `interval`, whichever comes first, and once more when the writer
//! stops. The writer calls it between group commits (it alone writes to
//! the store; a checkpoint that cannot be kept is a storage failure like
//! any other). Several nodes sharing a store each sign with the same key:
//! Ed25519 signatures are deterministic, so two nodes signing the same
//! head write the same note, and the store keeps the first.

use std::time::{Duration, Instant};

use super::note::Signer;
use crate::store::{Store, StoreError};

/// A checkpoint policy and where it stands.
#[derive(Clone)]
pub struct Checkpoints {
    signer: Signer,
    /// A checkpoint at least every this many records...
    records: u64,
    /// ...or this often, when anything was committed.
    interval: Duration,
    /// The sequence of the last checkpoint kept by this node.
    last: u64,
    /// When it was kept (none yet: due at once).
    since: Option<Instant>,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints")
            .field("signer", &self.signer)
            .field("records", &self.records)
            .field("interval", &self.interval)
            .field("last", &self.last)
            .finish()
    }
}

impl Checkpoints {
    /// Checkpoints signed by `signer`, every `records` records or
    /// `interval`.
    pub fn new(signer: Signer, records: u64, interval: Duration) -> Self {
        Checkpoints {
            signer,
            records: records.max(1),
            interval,
            last: 0,
            since: None,
        }
    }

    /// Whether a checkpoint is due with the chain reaching about `head`
    /// (the writer's own count; the store's head is read only when due).
    pub fn due(&self, head: u64) -> bool {
        head > self.last
            && (head >= self.last.saturating_add(self.records)
                || self.since.is_none_or(|t| t.elapsed() >= self.interval))
    }

    /// Signs and keeps a checkpoint of the store's head, unless this node
    /// kept one there already; with `sync`, durable before it returns
    /// (else with the next commit: no fsync of its own between commits).
    pub fn keep(&mut self, store: &dyn Store, sync: bool) -> Result<(), StoreError> {
        let Some((sequence, chain)) = store.chain_head()? else {
            // Nothing linked (a store with the chain off): not asked again
            // before the next interval.
            self.since = Some(Instant::now());
            return Ok(());
        };
        if sequence != self.last {
            store.keep_checkpoint(sequence, &self.signer.checkpoint(sequence, &chain), sync)?;
            self.last = sequence;
        }
        self.since = Some(Instant::now());
        Ok(())
    }
}
