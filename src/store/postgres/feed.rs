//! Reading what was committed after a [`Cursor`]: the change feed's pages
//! (in one read-only snapshot) and a commit's catch-up (under the commit
//! lock). One function reads both, so that a node applies the same records
//! whichever way they reach it.

use deadpool_postgres::GenericClient;

use super::decode::{
    EVENT_COLUMNS, backend, erasure_from, event_from, pg, pool_error, u64_of, wording_from,
};
use super::{LATEST_WORDINGS, PgStore};
use crate::domain::CatalogSpec;
use crate::store::{CatalogChange, Changes, Cursor, StoreError};

/// The store's counters as read with the changes: the next sequence and
/// the catalog version.
pub(super) struct Head {
    pub(super) next_sequence: i64,
    pub(super) catalog_version: i64,
}

/// Everything committed after `cursor` up to `head` (at most `limit`
/// events): events, erasures among them, and the catalog when its version
/// moved past the cursor's. The caller's snapshot or lock makes it whole.
pub(super) async fn read_changes(
    client: &impl GenericClient,
    cursor: Cursor,
    limit: Option<usize>,
    head: &Head,
) -> Result<Changes, StoreError> {
    let err = |e| pg(e, false);
    let after = i64::try_from(cursor.sequence).unwrap_or(i64::MAX);
    let last = u64_of(head.next_sequence - 1, "meta")?;
    let catalog_version = u64_of(head.catalog_version, "meta")?;
    let mut changes = Changes {
        through: last.max(cursor.sequence),
        head: last.max(cursor.sequence),
        ..Default::default()
    };
    if last > cursor.sequence {
        let limit_i = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM consentd.events
             WHERE sequence > $1 ORDER BY sequence LIMIT $2"
        );
        changes.events = client
            .query(&sql, &[&after, &limit_i])
            .await
            .map_err(err)?
            .iter()
            .map(event_from)
            .collect::<Result<Vec<_>, _>>()?;
        // Commits are ordered by sequence, so everything below the counter
        // this view sees is in it.
        if let Some(last_read) = changes.events.last()
            && limit.is_some_and(|l| changes.events.len() == l)
        {
            changes.through = last_read.sequence;
        }
        let through = i64::try_from(changes.through).unwrap_or(i64::MAX);
        changes.erasures = client
            .query(
                "SELECT sequence, hash, erased_at, reason FROM consentd.erasures
                 WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence",
                &[&after, &through],
            )
            .await
            .map_err(err)?
            .iter()
            .map(erasure_from)
            .collect::<Result<Vec<_>, _>>()?;
    }
    if catalog_version > cursor.catalog_version {
        let (spec, latest) = read_catalog(client).await?;
        changes.catalog = spec.map(|spec| CatalogChange {
            spec,
            latest,
            version: catalog_version,
        });
    }
    Ok(changes)
}

/// The catalog in force and the latest wording of every consent.
pub(super) async fn read_catalog(
    client: &impl GenericClient,
) -> Result<(Option<CatalogSpec>, Vec<crate::domain::Wording>), StoreError> {
    let catalog: Option<serde_json::Value> = client
        .query_one("SELECT catalog FROM consentd.meta", &[])
        .await
        .map_err(|e| pg(e, false))?
        .try_get(0)
        .map_err(backend)?;
    let catalog = catalog
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| StoreError::corrupt("meta", format!("catalog: {e}")))?;
    let wordings = client
        .query(LATEST_WORDINGS, &[])
        .await
        .map_err(|e| pg(e, false))?
        .iter()
        .map(wording_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((catalog, wordings))
}

impl PgStore {
    /// One page of the feed, read in one read-only snapshot.
    pub(super) fn feed_page(&self, cursor: Cursor, limit: usize) -> Result<Changes, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let err = |e| pg(e, false);
            let mut client = pool.get().await.map_err(pool_error)?;
            let txn = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(err)?;
            let meta = txn
                .query_one(
                    "SELECT next_sequence, catalog_version FROM consentd.meta",
                    &[],
                )
                .await
                .map_err(err)?;
            let head = Head {
                next_sequence: meta.try_get(0).map_err(backend)?,
                catalog_version: meta.try_get(1).map_err(backend)?,
            };
            let changes = read_changes(&txn, cursor, Some(limit), &head).await?;
            txn.commit().await.map_err(err)?;
            Ok(changes)
        })
    }
}
