//! Reading a store whole or at a time: the states every node loads at
//! start, and the catalog in force at a past time (as-of reads).

use super::decode::{action_of, backend, pending_from, pg, pool_error, source_of};
use super::{LOAD_CHUNK, PgStore};
use crate::domain::{CatalogSpec, Decision, UnixNanos};
use crate::store::{Loaded, StoreError};

/// Every state, then every pending record, as [`crate::store::Store::load_states`].
pub(super) fn load_states(
    store: &PgStore,
    sink: &mut dyn FnMut(&str, &str, Loaded),
) -> Result<u64, StoreError> {
    type Chunk = Vec<(String, String, i16, i64, i32, i16)>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, StoreError>>(2);
    let pool = store.pool.clone();
    store.handle.spawn(async move {
        let result: Result<(), StoreError> = async {
            let mut client = pool.get().await.map_err(pool_error)?;
            let txn = client.transaction().await.map_err(|e| pg(e, false))?;
            let portal = txn
                .bind(
                    "SELECT contact, consent, action, occurred_at, version, source
                     FROM consentd.states ORDER BY contact",
                    &[],
                )
                .await
                .map_err(|e| pg(e, false))?;
            loop {
                let rows = txn
                    .query_portal(&portal, LOAD_CHUNK)
                    .await
                    .map_err(|e| pg(e, false))?;
                if rows.is_empty() {
                    return Ok(());
                }
                let chunk = rows
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                            r.try_get(5)?,
                        ))
                    })
                    .collect::<Result<Chunk, tokio_postgres::Error>>()
                    .map_err(backend)?;
                let sent = tokio::task::block_in_place(|| tx.send(Ok(chunk)));
                if sent.is_err() {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::task::block_in_place(|| tx.send(Err(e)));
        }
    });
    let mut n = 0;
    for chunk in rx {
        for (contact, consent, action, occurred_at, version, source) in chunk? {
            let loaded = Loaded::State {
                decision: Decision {
                    occurred_at,
                    action: action_of(action, "states")?,
                },
                version: u32::try_from(version)
                    .map_err(|_| StoreError::corrupt("states", "version"))?,
                source: source_of(source, "states")?,
            };
            sink(&contact, &consent, loaded);
            n += 1;
        }
    }
    // Few rows (grants waiting for a click): one query.
    for (contact, consent, p) in store.rows(
        "SELECT contact, consent, count, last_at, link_at FROM consentd.pending",
        Vec::new(),
        pending_from,
    )? {
        sink(&contact, &consent, Loaded::Pending(p));
    }
    Ok(n)
}

/// The catalog in force at `at` ([`crate::store::Store::catalog_at`]).
pub(super) fn catalog_at(
    store: &PgStore,
    at: UnixNanos,
) -> Result<Option<(UnixNanos, CatalogSpec)>, StoreError> {
    let rows = store.rows(
        "SELECT in_force_from, catalog FROM (
             (SELECT 1 AS rank, in_force_from, catalog FROM consentd.catalogs
              WHERE in_force_from <= $1 ORDER BY version DESC LIMIT 1)
             UNION ALL
             (SELECT 2, in_force_from, catalog FROM consentd.catalogs ORDER BY version LIMIT 1)
             UNION ALL
             (SELECT 3, 0::bigint, catalog FROM consentd.meta WHERE catalog IS NOT NULL)
         ) AS kept ORDER BY rank LIMIT 1",
        vec![Box::new(at)],
        |r| {
            let from: i64 = r.try_get(0).map_err(backend)?;
            let json: serde_json::Value = r.try_get(1).map_err(backend)?;
            Ok((from, json))
        },
    )?;
    rows.into_iter()
        .next()
        .map(|(from, json)| {
            serde_json::from_value(json)
                .map(|spec| (from, spec))
                .map_err(|e| StoreError::corrupt("catalogs", format!("catalog: {e}")))
        })
        .transpose()
}
