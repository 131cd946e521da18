//! Reading a redb store out in full, and an empty one adopting another's
//! erasure key and tombstones: what `consentctl migrate` needs.

use redb::ReadableDatabase;

use super::codec::{decode_event, decode_idempotency, tombstone_erased_at};
use super::{ERASURE_FEED, ERASURES, EVENTS, IDEMPOTENCY, RedbStore};
use crate::domain::EventRecord;
use crate::store::{IdempotencyRecord, StoreError, Tombstone, Transfer};

impl Transfer for RedbStore {
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in events.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            out.push(decode_event(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn idempotency_keys(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, IdempotencyRecord)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        let mut out = Vec::new();
        for row in table.range::<&str>(after..)? {
            let (k, v) = row?;
            if k.value() == after {
                continue;
            }
            if out.len() == limit {
                break;
            }
            out.push((k.value().to_owned(), decode_idempotency(v.value())?));
        }
        Ok(out)
    }

    fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let mut sequences = std::collections::HashMap::new();
        if let Some(feed) = super::open_if_any(&txn, ERASURE_FEED)? {
            for row in feed.range::<u64>(..)? {
                let (k, v) = row?;
                sequences.insert(*v.value(), k.value());
            }
        }
        let mut out = Vec::new();
        for row in txn.open_table(ERASURES)?.range::<&[u8; 32]>(..)? {
            let (k, v) = row?;
            let bytes = v.value();
            out.push(Tombstone {
                hash: *k.value(),
                erased_at: tombstone_erased_at(bytes)?,
                reason: String::from_utf8(bytes[8..].to_vec())
                    .map_err(|_| StoreError::corrupt("erasures", "reason encoding"))?,
                sequence: sequences.get(k.value()).copied().unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn adopt(
        &self,
        erasure_key: &[u8; 32],
        tombstones: &[Tombstone],
        _link_keys: &[String],
    ) -> Result<(), StoreError> {
        self.adopt_in(erasure_key, tombstones)
    }

    fn event_at(&self, sequence: u64) -> Result<Option<EventRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        events
            .get(sequence)?
            .map(|v| decode_event(sequence, v.value()))
            .transpose()
    }
}
