//! Reading the memory store out for a move, and adopting another's
//! erasure key and tombstones.

use super::MemoryStore;
use crate::domain::EventRecord;
use crate::store::{IdempotencyRecord, StoreError, Tombstone, Transfer};

impl Transfer for MemoryStore {
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let c = self.lock();
        Ok(c.events
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    fn idempotency_keys(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, IdempotencyRecord)>, StoreError> {
        let c = self.lock();
        let mut keys: Vec<(String, IdempotencyRecord)> = c
            .idempotency
            .iter()
            .filter(|(k, _)| k.as_str() > after)
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.truncate(limit);
        Ok(keys)
    }

    fn event_at(&self, sequence: u64) -> Result<Option<EventRecord>, StoreError> {
        Ok(self.lock().events.get(&sequence).cloned())
    }

    fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        let c = self.lock();
        Ok(c.erasures
            .iter()
            .map(|(hash, (erased_at, reason))| Tombstone {
                hash: *hash,
                erased_at: *erased_at,
                reason: reason.clone(),
                sequence: c
                    .erasure_log
                    .iter()
                    .find(|(_, t)| t.hash == *hash)
                    .map_or(0, |(s, _)| *s),
            })
            .collect())
    }

    fn adopt(
        &self,
        erasure_key: &[u8; 32],
        tombstones: &[Tombstone],
        link_keys: &[String],
    ) -> Result<(), StoreError> {
        let mut c = self.lock();
        c.erasure_key = *erasure_key;
        for t in tombstones {
            c.erasures.insert(t.hash, (t.erased_at, t.reason.clone()));
            if t.sequence > 0 {
                c.erasure_log.insert(t.sequence, t.clone());
            }
        }
        if !link_keys.is_empty() {
            c.link_keys = link_keys.to_vec();
        }
        Ok(())
    }
}
