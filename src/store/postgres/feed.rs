//! Reading what was committed after a [`Cursor`]: the change feed's pages
//! (in one read-only snapshot) and a commit's catch-up (under the commit
//! lock). One function reads both, so that a node applies the same records
//! whichever way they reach it.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

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
    /// The chain through the last record linked (none before the first).
    pub(super) chain: Option<Vec<u8>>,
    /// When the meta row came back: with `lock`, the commit lock was held
    /// from then.
    pub(super) locked_at: std::time::Instant,
}

/// Everything committed after `cursor` (at most `limit` events): events,
/// the erasures among them, and the catalog when its version moved past
/// the cursor's; with `lock`, under the commit lock, taken first. One round
/// trip: the statements are prepared once per connection and sent together;
/// they run in order, so the reads see every commit before the lock (or
/// the snapshot the caller's transaction took).
pub(super) async fn read_changes(
    txn: &deadpool_postgres::Transaction<'_>,
    cursor: Cursor,
    limit: Option<usize>,
    lock: bool,
) -> Result<(Head, Changes), StoreError> {
    let err = |e| pg(e, false);
    let after = i64::try_from(cursor.sequence).unwrap_or(i64::MAX);
    let limit_i = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let events_sql = format!(
        "SELECT {EVENT_COLUMNS} FROM consentd.events
         WHERE sequence > $1 ORDER BY sequence LIMIT $2"
    );
    let (meta, events, erasures) = tokio::try_join!(
        txn.prepare_cached(if lock {
            "SELECT next_sequence, catalog_version, chain_head FROM consentd.meta FOR UPDATE"
        } else {
            "SELECT next_sequence, catalog_version, chain_head FROM consentd.meta"
        }),
        txn.prepare_cached(&events_sql),
        txn.prepare_cached(
            "SELECT sequence, hash, erased_at, reason FROM consentd.erasures
             WHERE sequence > $1 ORDER BY sequence"
        ),
    )
    .map_err(err)?;
    let page: [&(dyn ToSql + Sync); 2] = [&after, &limit_i];
    let from: [&(dyn ToSql + Sync); 1] = [&after];
    let (meta, events, erasures) = tokio::join!(
        async {
            let meta = txn.query_one(&meta, &[]).await;
            (meta, std::time::Instant::now())
        },
        txn.query(&events, &page),
        txn.query(&erasures, &from),
    );
    let (meta, locked_at) = meta;
    let meta = meta.map_err(err)?;
    let head = Head {
        locked_at,
        next_sequence: meta.try_get(0).map_err(backend)?,
        catalog_version: meta.try_get(1).map_err(backend)?,
        chain: meta.try_get(2).map_err(backend)?,
    };
    let last = u64_of(head.next_sequence - 1, "meta")?.max(cursor.sequence);
    let events = events
        .map_err(err)?
        .iter()
        .map(event_from)
        .collect::<Result<Vec<_>, _>>()?;
    // Commits are ordered by sequence, so everything below the counter this
    // view sees is in it; a full page ends at its last event.
    let through = match events.last() {
        Some(e) if limit.is_some_and(|l| events.len() == l) => e.sequence,
        _ => last,
    };
    let erasures = erasures
        .map_err(err)?
        .iter()
        .map(erasure_from)
        .filter(|r| r.as_ref().map_or(true, |(s, _)| *s <= through))
        .collect::<Result<Vec<_>, _>>()?;
    let mut changes = Changes {
        events,
        erasures,
        through,
        head: last,
        catalog: None,
    };
    let catalog_version = u64_of(head.catalog_version, "meta")?;
    if catalog_version > cursor.catalog_version {
        // Rare (a catalog applied elsewhere): one more round trip.
        let (spec, latest) = read_catalog(txn).await?;
        changes.catalog = spec.map(|spec| CatalogChange {
            spec,
            latest,
            version: catalog_version,
        });
    }
    Ok((head, changes))
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
            let (_, changes) = read_changes(&txn, cursor, Some(limit), false).await?;
            txn.commit().await.map_err(err)?;
            Ok(changes)
        })
    }
}

/// What Watch reads ([`crate::store::Store::feed`]): the feed's page after
/// `after`, without the catalog.
pub(super) fn watch_page(
    store: &PgStore,
    after: u64,
    limit: usize,
) -> Result<crate::store::FeedPage, StoreError> {
    let cursor = crate::store::Cursor {
        sequence: after,
        catalog_version: u64::MAX,
    };
    let mut page = crate::store::FeedPage::of(store.feed_page(cursor, limit)?);
    if page.through > after {
        // Append-only, and numbered at or below what the page saw: read
        // after it, the catalogs among its records are all there.
        let range = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        page.catalogs = store.rows(
            "SELECT sequence, version FROM consentd.catalogs
             WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence",
            vec![Box::new(range(after)), Box::new(range(page.through))],
            |r| {
                let sequence: i64 = r.try_get(0).map_err(backend)?;
                let version: i64 = r.try_get(1).map_err(backend)?;
                Ok((u64_of(sequence, "catalogs")?, u64_of(version, "catalogs")?))
            },
        )?;
    }
    Ok(page)
}

/// One page of a snapshot ([`crate::store::Store::states_after`]): the
/// next `limit` contacts after `after` by id, each with all its states,
/// read in one statement.
pub(super) fn states_page(
    store: &PgStore,
    after: &str,
    limit: usize,
) -> Result<crate::store::ContactStates, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = store.rows(
        "SELECT * FROM consentd.states WHERE contact IN (
             SELECT DISTINCT contact FROM consentd.states WHERE contact > $1
             ORDER BY contact LIMIT $2)
         ORDER BY contact, sequence",
        vec![Box::new(after.to_owned()), Box::new(limit)],
        |row| {
            let contact: String = row.try_get("contact").map_err(backend)?;
            Ok((contact, super::decode::state_from(row)?))
        },
    )?;
    let mut out: crate::store::ContactStates = Vec::new();
    for (contact, state) in rows {
        match out.last_mut() {
            Some((last, states)) if *last == contact => states.push(state),
            _ => out.push((contact, vec![state])),
        }
    }
    Ok(out)
}
