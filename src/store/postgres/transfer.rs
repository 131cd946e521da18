//! Reading the database out in full, and an empty one adopting another
//! store's erasure key, tombstones and link keys: what `consentctl
//! migrate` needs.

use super::PgStore;
use super::decode::{EVENT_COLUMNS, backend, event_from, pg, pool_error, u64_of};
use crate::domain::EventRecord;
use crate::store::{IdempotencyRecord, StoreError, Tombstone, Transfer};

impl Transfer for PgStore {
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM consentd.events
                 WHERE sequence > $1 ORDER BY sequence LIMIT $2"
            );
            client
                .query(&sql, &[&after, &limit])
                .await
                .map_err(|e| pg(e, false))?
                .iter()
                .map(event_from)
                .collect()
        })
    }

    fn idempotency_keys(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, IdempotencyRecord)>, StoreError> {
        self.rows(
            "SELECT key, sequence, recorded_at, fingerprint FROM consentd.idempotency
             WHERE key COLLATE \"C\" > $1 ORDER BY key COLLATE \"C\" LIMIT $2",
            vec![
                Box::new(after.to_owned()),
                Box::new(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
            |r| {
                let fingerprint: Vec<u8> = r.try_get(3).map_err(backend)?;
                Ok((
                    r.try_get(0).map_err(backend)?,
                    IdempotencyRecord {
                        sequence: u64_of(r.try_get(1).map_err(backend)?, "idempotency")?,
                        recorded_at: r.try_get(2).map_err(backend)?,
                        fingerprint: fingerprint.try_into().map_err(|_| {
                            StoreError::corrupt("idempotency", "fingerprint length")
                        })?,
                    },
                ))
            },
        )
    }

    fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        self.rows(
            "SELECT hash, erased_at, reason, sequence FROM consentd.erasures ORDER BY hash",
            Vec::new(),
            |r| {
                let hash: Vec<u8> = r.try_get(0).map_err(backend)?;
                let sequence: Option<i64> = r.try_get(3).map_err(backend)?;
                Ok(Tombstone {
                    hash: hash
                        .try_into()
                        .map_err(|_| StoreError::corrupt("erasures", "hash length"))?,
                    erased_at: r.try_get(1).map_err(backend)?,
                    reason: r.try_get(2).map_err(backend)?,
                    sequence: sequence.map_or(0, |s| s.max(0) as u64),
                })
            },
        )
    }

    fn adopt(
        &self,
        erasure_key: &[u8; 32],
        tombstones: &[Tombstone],
        link_keys: &[String],
    ) -> Result<(), StoreError> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = erasure_key.to_vec();
        let tombstones = tombstones.to_vec();
        let mut keys = Vec::new();
        for (i, line) in link_keys.iter().enumerate() {
            let (id, secret) = line
                .split_once('=')
                .ok_or_else(|| StoreError::corrupt("link_keys", "a key line without '='"))?;
            let secret = URL_SAFE_NO_PAD
                .decode(secret.trim())
                .map_err(|e| StoreError::corrupt("link_keys", e.to_string()))?;
            keys.push((id.trim().to_owned(), secret, i as i64));
        }
        let pool = self.pool.clone();
        self.run(async move {
            let err = |e| pg(e, false);
            let mut client = pool.get().await.map_err(pool_error)?;
            let txn = client.transaction().await.map_err(err)?;
            txn.execute("UPDATE consentd.meta SET erasure_key = $1", &[&key])
                .await
                .map_err(err)?;
            for t in &tombstones {
                txn.execute(
                    "INSERT INTO consentd.erasures (hash, erased_at, reason, sequence)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (hash) DO UPDATE SET erased_at = EXCLUDED.erased_at,
                         reason = EXCLUDED.reason, sequence = EXCLUDED.sequence",
                    &[
                        &t.hash.as_slice(),
                        &t.erased_at,
                        &t.reason,
                        &(t.sequence > 0).then_some(t.sequence as i64),
                    ],
                )
                .await
                .map_err(err)?;
            }
            if !keys.is_empty() {
                // The adopted ring replaces any key generated meanwhile,
                // oldest first as it was.
                txn.execute("DELETE FROM consentd.link_keys", &[])
                    .await
                    .map_err(err)?;
                for (id, secret, order) in &keys {
                    txn.execute(
                        "INSERT INTO consentd.link_keys (id, secret, created_at) VALUES ($1, $2, $3)",
                        &[id, secret, order],
                    )
                    .await
                    .map_err(err)?;
                }
            }
            txn.commit().await.map_err(|e| pg(e, true))
        })
    }

    fn event_at(&self, sequence: u64) -> Result<Option<EventRecord>, StoreError> {
        let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let sql = format!("SELECT {EVENT_COLUMNS} FROM consentd.events WHERE sequence = $1");
            client
                .query_opt(&sql, &[&sequence])
                .await
                .map_err(|e| pg(e, false))?
                .as_ref()
                .map(event_from)
                .transpose()
        })
    }
}
