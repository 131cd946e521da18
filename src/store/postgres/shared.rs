//! The store several nodes share: the commit on the latest view
//! (`commit.rs`), the feed (`feed.rs`, `listen.rs`), and the link keys every
//! node verifies with.

use std::time::Duration;

use super::PgStore;
use super::decode::{backend, pg, pool_error};
use crate::store::{Changes, Committed, Cursor, SharedStore, StoreError, Write};

impl SharedStore for PgStore {
    fn commit_on_latest(
        &self,
        cursor: Cursor,
        rule: &mut dyn FnMut(Changes) -> Write,
    ) -> Result<Committed, StoreError> {
        self.commit_with(cursor, rule)
            .map(|(committed, _)| committed)
    }

    fn changes_after(&self, cursor: Cursor, limit: usize) -> Result<Changes, StoreError> {
        self.feed_page(cursor, limit)
    }

    fn wait_for_changes(&self, timeout: Duration) {
        self.ears.wait(timeout);
    }

    fn link_keys(&self, fresh: &str) -> Result<Vec<String>, StoreError> {
        let (id, secret) = fresh
            .split_once('=')
            .ok_or_else(|| StoreError::corrupt("link_keys", "a key line without '='"))?;
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let secret = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|e| StoreError::corrupt("link_keys", format!("the fresh key: {e}")))?;
        let id = id.to_owned();
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let txn = client.transaction().await.map_err(|e| pg(e, false))?;
            // Nodes starting together agree on one first key.
            txn.batch_execute("LOCK TABLE consentd.link_keys IN EXCLUSIVE MODE")
                .await
                .map_err(|e| pg(e, false))?;
            txn.execute(
                "INSERT INTO consentd.link_keys (id, secret, created_at)
                 SELECT $1, $2, (extract(epoch FROM now()) * 1e9)::bigint
                 WHERE NOT EXISTS (SELECT 1 FROM consentd.link_keys)",
                &[&id, &secret],
            )
            .await
            .map_err(|e| pg(e, false))?;
            let rows = txn
                .query(
                    "SELECT id, secret FROM consentd.link_keys ORDER BY created_at, id",
                    &[],
                )
                .await
                .map_err(|e| pg(e, false))?;
            txn.commit().await.map_err(|e| pg(e, false))?;
            rows.iter()
                .map(|r| {
                    let id: String = r.try_get(0).map_err(backend)?;
                    let secret: Vec<u8> = r.try_get(1).map_err(backend)?;
                    Ok(format!("{id}={}", URL_SAFE_NO_PAD.encode(secret)))
                })
                .collect::<Result<Vec<_>, _>>()
        })
    }
}
