//! The PostgreSQL store: the store of record when several nodes, or a
//! database the company already runs, keep the proof.
//!
//! - **Schema**: the `consentd` schema, created and migrated at open by
//!   embedded, versioned migrations (refinery; `migrations/`), under an
//!   advisory lock so that nodes starting together migrate once.
//! - **Group commit**: one transaction per writer batch; rows go in bulk
//!   (`INSERT ... SELECT FROM UNNEST($arrays)`), `synchronous_commit` on, and
//!   the batch is acknowledged only after COMMIT returns.
//! - **One view per commit** (`commit.rs`): every commit, erasure and
//!   catalog apply takes the one `meta` row's lock first (`SELECT ... FOR
//!   UPDATE`, held to COMMIT), reads what was committed after the node's
//!   cursor, lets the node's writer rule on that view, then writes. So
//!   sequences are given in commit order, once, and a reader that follows
//!   `sequence > last_seen` never sees one while a smaller one is to come.
//! - **The feed** (`feed.rs`, `listen.rs`): pages of what was committed
//!   after a cursor, in one snapshot; a NOTIFY at every commit (naming
//!   nothing) wakes the other nodes.
//! - **Faults**: a lost, refused or timed-out connection is
//!   [`StoreError::Unavailable`], never fail-stop: the writer refuses writes
//!   and retries; `in_doubt` is set when COMMIT was sent and no answer came.
//!
//! The [`Store`] interface is blocking; this store runs its async client
//! (tokio-postgres, pooled by deadpool) on a small runtime of its own and
//! waits for each answer, so it can be called from any thread. Rows are
//! decoded in `decode.rs`, batches become column arrays in `columns.rs`,
//! and `connect.rs` holds TLS and URL redaction.

mod chain;
mod columns;
mod commit;
mod connect;
mod decode;
mod feed;
mod listen;
mod load;
mod open;
mod shared;
mod transfer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

pub use self::connect::redact;
use self::decode::{
    EVENT_COLUMNS, backend, event_from, pending_from, pg, pool_error, state_from, u64_of,
    wording_from,
};
use self::listen::Ears;
use super::{
    Committed, ContactStates, Cursor, IdempotencyRecord, Loaded, Recovered, Store, StoreError,
    Tombstone, Write, WriteBatch,
};
use crate::domain::{CatalogSpec, EventRecord, PendingRecord, StateRecord, UnixNanos, Wording};

/// How long one store operation may wait for PostgreSQL before it is
/// answered "unavailable" (a call is never held longer than this).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections the pool keeps: the writer, reads, the change feed.
const POOL_SIZE: usize = 8;
/// Rows per round trip while the index is rebuilt.
const LOAD_CHUNK: i32 = 20_000;
/// The NOTIFY channel of the change feed.
const FEED_CHANNEL: &str = "consentd_feed";
/// The latest wording of every consent id ever declared.
const LATEST_WORDINGS: &str =
    "SELECT DISTINCT ON (consent) * FROM consentd.wordings ORDER BY consent, version DESC";
/// Key of the advisory lock that serialises migrations across nodes.
const MIGRATION_LOCK: i64 = 0x636f_6e73_656e_7464; // "consentd"

/// The PostgreSQL store (see the module docs).
pub struct PgStore {
    pool: Pool,
    /// Taken by [`Store::close`] (or the drop) and shut down.
    runtime: std::sync::Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    timeout: Duration,
    /// An erasure deleted rows that no vacuum has cleared yet.
    vacuum_due: Arc<AtomicBool>,
    /// Woken by the feed's listening connection.
    ears: Arc<Ears>,
    /// Digests of the wordings events name (the chain's leaves).
    digests: chain::Digests,
    /// Whether commits are linked into the chain (always, but for the
    /// benchmark that measures what the chain costs).
    chained: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(rt) = runtime {
            rt.shutdown_background();
        }
    }
}

impl PgStore {
    /// The same store committing batches without the hash chain: only for
    /// the benchmark that measures what the chain costs
    /// (`benches/audit.rs`). Such a store does not verify.
    #[doc(hidden)]
    pub fn without_chain_for_bench(mut self) -> Self {
        self.chained = false;
        self
    }

    /// Runs `fut` on the store's runtime and waits for it, at most the
    /// store's timeout (then [`StoreError::Unavailable`], not in doubt).
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let timeout = self.timeout;
        self.run_unbounded(async move {
            tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable {
                        in_doubt: false,
                        cause: format!("no answer from PostgreSQL within {timeout:?}"),
                    })
                })
        })
    }

    fn run_unbounded<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                in_doubt: true,
                cause: "the store's runtime stopped".into(),
            })
        })
    }

    /// One query's rows, mapped.
    fn rows<T: Send + 'static>(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
        map: fn(&tokio_postgres::Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = client.query(sql, &refs).await.map_err(|e| pg(e, false))?;
            rows.iter().map(map).collect()
        })
    }
}

impl Store for PgStore {
    fn recover(&self) -> Result<Recovered, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let err = |e| pg(e, false);
            let meta = client
                .query_one(
                    "SELECT next_sequence, erasure_key, catalog, catalog_version,
                         (SELECT count(DISTINCT contact) FROM consentd.states) AS contacts,
                         GREATEST(
                             -- The newest events by sequence, not a scan of all.
                             (SELECT max(recorded_at) FROM (SELECT recorded_at
                                 FROM consentd.events ORDER BY sequence DESC LIMIT 1000) AS newest),
                             (SELECT max(erased_at) FROM consentd.erasures),
                             (SELECT max(in_force_from) FROM consentd.wordings)) AS last
                     FROM consentd.meta",
                    &[],
                )
                .await
                .map_err(err)?;
            let key: Vec<u8> = meta.try_get("erasure_key").map_err(backend)?;
            let catalog: Option<serde_json::Value> = meta.try_get("catalog").map_err(backend)?;
            let catalog: Option<CatalogSpec> = catalog
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| StoreError::corrupt("meta", format!("catalog: {e}")))?;
            let erasures = client
                .query("SELECT hash, erased_at FROM consentd.erasures", &[])
                .await
                .map_err(err)?
                .iter()
                .map(|r| {
                    let hash: Vec<u8> = r.try_get(0).map_err(backend)?;
                    let hash: [u8; 32] = hash
                        .try_into()
                        .map_err(|_| StoreError::corrupt("erasures", "hash length"))?;
                    Ok((hash, r.try_get(1).map_err(backend)?))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let wordings = client
                .query(
                    "SELECT DISTINCT ON (consent) * FROM consentd.wordings
                     ORDER BY consent, version DESC",
                    &[],
                )
                .await
                .map_err(err)?
                .iter()
                .map(wording_from)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Recovered {
                catalog,
                next_sequence: u64_of(meta.try_get("next_sequence").map_err(backend)?, "meta")?,
                contacts: u64_of(meta.try_get("contacts").map_err(backend)?, "states")?,
                erasure_key: key
                    .try_into()
                    .map_err(|_| StoreError::corrupt("meta", "erasure_key length"))?,
                erasures,
                wordings,
                last_recorded_at: meta
                    .try_get::<_, Option<i64>>("last")
                    .map_err(backend)?
                    .unwrap_or(0),
                catalog_version: u64_of(meta.try_get("catalog_version").map_err(backend)?, "meta")?,
            })
        })
    }

    fn load_states(&self, sink: &mut dyn FnMut(&str, &str, Loaded)) -> Result<u64, StoreError> {
        load::load_states(self, sink)
    }

    fn catalog_at(&self, at: UnixNanos) -> Result<Option<(UnixNanos, CatalogSpec)>, StoreError> {
        load::catalog_at(self, at)
    }

    fn contact_pending(&self, contact: &str) -> Result<Vec<(String, PendingRecord)>, StoreError> {
        Ok(self
            .rows(
                "SELECT contact, consent, count, last_at, link_at FROM consentd.pending
                 WHERE contact = $1 ORDER BY consent",
                vec![Box::new(contact.to_owned())],
                pending_from,
            )?
            .into_iter()
            .map(|(_, consent, p)| (consent, p))
            .collect())
    }

    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let rows = self.rows(
            "SELECT sequence, recorded_at, fingerprint FROM consentd.idempotency WHERE key = $1",
            vec![Box::new(key.to_owned())],
            |r| {
                let fingerprint: Vec<u8> = r.try_get(2).map_err(backend)?;
                Ok(IdempotencyRecord {
                    sequence: u64_of(r.try_get(0).map_err(backend)?, "idempotency")?,
                    recorded_at: r.try_get(1).map_err(backend)?,
                    fingerprint: fingerprint
                        .try_into()
                        .map_err(|_| StoreError::corrupt("idempotency", "fingerprint length"))?,
                })
            },
        )?;
        Ok(rows.into_iter().next())
    }

    fn states_after(&self, after: &str, limit: usize) -> Result<ContactStates, StoreError> {
        feed::states_page(self, after, limit)
    }

    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
        self.rows(
            "SELECT * FROM consentd.states WHERE contact = $1 ORDER BY sequence",
            vec![Box::new(contact.to_owned())],
            state_from,
        )
    }

    fn chain_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let rows = self.rows(
            "SELECT chain_sequence, chain_head FROM consentd.meta WHERE chain_head IS NOT NULL",
            Vec::new(),
            |r| {
                let sequence = u64_of(r.try_get(0).map_err(backend)?, "meta")?;
                Ok((sequence, chain::head_of(r.try_get(1).map_err(backend)?)?))
            },
        )?;
        Ok(rows.into_iter().next())
    }

    fn links_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(crate::audit::Link, crate::audit::Held)>, StoreError> {
        self.links_page(after, limit)
    }

    fn keep_checkpoint(&self, sequence: u64, note: &str, sync: bool) -> Result<(), StoreError> {
        self.keep_note(sequence, note, sync)
    }

    fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let at = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.rows(
            "SELECT sequence, note FROM consentd.checkpoints WHERE sequence > $1
             ORDER BY sequence LIMIT $2",
            vec![Box::new(at(after)), Box::new(at(limit as u64))],
            |r| {
                let sequence = u64_of(r.try_get(0).map_err(backend)?, "checkpoints")?;
                Ok((sequence, r.try_get(1).map_err(backend)?))
            },
        )
    }

    fn erased_at(&self, hash: &[u8; 32]) -> Result<Option<UnixNanos>, StoreError> {
        let at = self.rows(
            "SELECT erased_at FROM consentd.erasures WHERE hash = $1",
            vec![Box::new(hash.to_vec())],
            |r| r.try_get::<_, i64>(0).map_err(backend),
        )?;
        Ok(at.into_iter().max())
    }

    fn history_page(
        &self,
        contact: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let pool = self.pool.clone();
        let contact = contact.to_owned();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM consentd.events
                 WHERE contact = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
            );
            client
                .query(&sql, &[&contact, &after, &limit])
                .await
                .map_err(|e| pg(e, false))?
                .iter()
                .map(event_from)
                .collect()
        })
    }

    fn wordings(&self, consent: Option<&str>) -> Result<Vec<Wording>, StoreError> {
        match consent {
            Some(c) => self.rows(
                "SELECT * FROM consentd.wordings WHERE consent = $1 ORDER BY version",
                vec![Box::new(c.to_owned())],
                wording_from,
            ),
            None => self.rows(
                "SELECT * FROM consentd.wordings ORDER BY consent, version",
                Vec::new(),
                wording_from,
            ),
        }
    }

    /// A batch that catches up on nothing (a tool filling an empty store):
    /// the writer of a node commits through [`SharedStore::commit_on_latest`].
    fn commit(&self, batch: &WriteBatch) -> Result<Committed, StoreError> {
        let mut batch = Some(batch.clone());
        self.commit_with(Cursor::END, &mut |_| {
            batch.take().map_or(Write::Nothing, Write::Batch)
        })
        .map(|(committed, _)| committed)
    }

    fn next_sequence(&self) -> Result<u64, StoreError> {
        let n = self.rows("SELECT next_sequence FROM consentd.meta", Vec::new(), |r| {
            u64_of(r.try_get(0).map_err(backend)?, "meta")
        })?;
        n.into_iter()
            .next()
            .ok_or_else(|| StoreError::corrupt("meta", "the meta row is missing"))
    }

    fn feed(&self, after: u64, limit: usize) -> Result<super::FeedPage, StoreError> {
        feed::watch_page(self, after, limit)
    }

    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        let mut write = Some(Write::Erase {
            contact: contact.to_owned(),
            tombstone: tombstone.clone(),
        });
        self.commit_with(Cursor::END, &mut |_| write.take().unwrap_or(Write::Nothing))
            .map(|(_, held)| held)
    }

    /// The rows are gone from consentd's tables when [`Store::erase`]
    /// returns; this vacuums the tables so that the dead row versions are
    /// cleared from their pages too. WAL and backups keep them until their
    /// retention ends (README, "PostgreSQL").
    fn purge_erased(&self) -> Result<bool, StoreError> {
        if !self.vacuum_due.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        let pool = self.pool.clone();
        let due = self.vacuum_due.clone();
        self.run_unbounded(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .batch_execute("VACUUM consentd.events, consentd.states, consentd.idempotency")
                .await
                .map_err(|e| {
                    due.store(true, Ordering::SeqCst);
                    pg(e, false)
                })?;
            Ok(true)
        })
    }

    /// Closes the pool's connections and stops the store's runtime (the
    /// feed's listening connection with it). Later calls answer
    /// "unavailable: the store's runtime stopped".
    fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(rt) = runtime {
            rt.shutdown_background();
        }
        Ok(())
    }

    fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let n = client
                .execute(
                    "DELETE FROM consentd.idempotency WHERE key IN (SELECT key
                         FROM consentd.idempotency WHERE recorded_at < $1
                         ORDER BY recorded_at LIMIT $2)",
                    &[&before, &max],
                )
                .await
                .map_err(|e| pg(e, false))?;
            Ok(n as usize)
        })
    }
}

/// The throwaway PostgreSQL server of the tests (test support, not part of
/// the release library).
#[cfg(test)]
#[path = "../../../tests/support/throwaway.rs"]
pub(crate) mod throwaway;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::PgStore;
    use super::throwaway::Throwaway;
    use crate::store::conformance::{Fixture, conformance_suite};

    /// A fresh database of the test cluster per fresh store; reopen
    /// connects a new store to the same database.
    struct Pg(Option<String>);

    impl Fixture for Pg {
        fn fresh(&mut self) -> Arc<dyn crate::store::Transfer> {
            let url = Throwaway::shared()
                .expect("PostgreSQL for the conformance suite")
                .fresh_database();
            let store = PgStore::open(&url).unwrap();
            self.0 = Some(url);
            Arc::new(store)
        }

        fn reopen(&mut self) -> Arc<dyn crate::store::Transfer> {
            Arc::new(PgStore::open(self.0.as_ref().expect("fresh first")).unwrap())
        }

        fn available(&self) -> bool {
            Throwaway::shared().is_some()
        }
    }

    conformance_suite!(Pg(None));

    #[test]
    fn sslmode_require_encrypts_and_verify_full_checks_the_certificate() {
        if Throwaway::shared().is_none() {
            println!("SKIPPED: no PostgreSQL server here");
            return;
        }
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let server =
            Throwaway::start_with_tls(Some((&cert.cert.pem(), &cert.signing_key.serialize_pem())))
                .unwrap();
        let url = server.fresh_database();
        // As libpq: `require` encrypts, whatever the certificate.
        let store = PgStore::open(&format!("{url}?sslmode=require")).unwrap();
        let encrypted = store
            .rows(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                Vec::new(),
                |r| r.try_get::<_, bool>(0).map_err(super::backend),
            )
            .unwrap();
        assert_eq!(encrypted, vec![true]);
        // `verify-full` refuses a certificate no trusted root signed.
        let refused = PgStore::open_with_timeout(
            &format!("{url}?sslmode=verify-full"),
            std::time::Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(
            refused.to_string().to_lowercase().contains("certificate"),
            "{refused}"
        );
    }

    /// Two nodes: two stores over one fresh database.
    struct PgPair;

    impl crate::store::shared_conformance::SharedFixture for PgPair {
        fn pair(
            &mut self,
        ) -> (
            Arc<dyn crate::store::SharedStore>,
            Arc<dyn crate::store::SharedStore>,
        ) {
            let url = Throwaway::shared()
                .expect("PostgreSQL for the conformance suite")
                .fresh_database();
            (
                Arc::new(PgStore::open(&url).unwrap()),
                Arc::new(PgStore::open(&url).unwrap()),
            )
        }

        fn available(&self) -> bool {
            Throwaway::shared().is_some()
        }
    }

    mod shared {
        use super::PgPair;
        use crate::store::shared_conformance::shared_conformance_suite;

        shared_conformance_suite!(PgPair);
    }
}
