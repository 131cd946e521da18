//! Opening the store: the connection pool, the schema created or migrated
//! (refinery, under an advisory lock so that nodes starting together
//! migrate once), the meta row, and the feed's listening connection.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::connect::{ssl_mode, tls};
use super::decode::{backend, pg, pool_error};
use super::listen::listen;
use super::{DEFAULT_TIMEOUT, MIGRATION_LOCK, POOL_SIZE, PgStore};
use crate::store::StoreError;

mod embedded {
    #![allow(missing_docs, unreachable_pub)]
    refinery::embed_migrations!("src/store/postgres/migrations");
}
use embedded::migrations;

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`, with
    /// `sslmode` as libpq spells it), creates or migrates the schema, and
    /// keeps a pool of connections.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with_timeout(url, DEFAULT_TIMEOUT)
    }

    /// [`PgStore::open`] with the longest wait of one operation.
    pub fn open_with_timeout(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let (url, verify) = ssl_mode(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(backend)?;
        config.connect_timeout(timeout.min(Duration::from_secs(5)));
        config.application_name("consentd");
        config.options("-c synchronous_commit=on");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("consentd-pg")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let tls = tls(verify)?;
        let migrate_config = config.clone();
        let migrate_tls = tls.clone();
        let listen_config = config.clone();
        let listen_tls = tls.clone();
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(backend)?;
        let store = PgStore {
            pool,
            runtime: std::sync::Mutex::new(Some(runtime)),
            handle,
            timeout,
            vacuum_due: Arc::new(AtomicBool::new(false)),
            ears: Arc::default(),
            digests: Arc::default(),
            chained: true,
        };
        store.run_unbounded(async move {
            let (mut client, connection) = migrate_config
                .connect(migrate_tls)
                .await
                .map_err(|e| pg(e, false))?;
            let connection = tokio::spawn(connection);
            client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(|e| pg(e, false))?;
            // The history lives in the schema it describes, named in full
            // (a role named `consentd` would otherwise see another table
            // once the schema exists).
            client
                .batch_execute("CREATE SCHEMA IF NOT EXISTS consentd")
                .await
                .map_err(|e| pg(e, false))?;
            let report = migrations::runner()
                .set_migration_table_name("consentd.schema_history")
                .run_async(&mut client)
                .await;
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .await;
            drop(client);
            let _ = connection.await;
            let report = report.map_err(backend)?;
            for m in report.applied_migrations() {
                tracing::info!(migration = %m, "PostgreSQL schema migrated");
            }
            Ok(())
        })?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let pool = store.pool.clone();
        store.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "INSERT INTO consentd.meta (next_sequence, erasure_key) VALUES (1, $1)
                     ON CONFLICT DO NOTHING",
                    &[&key.as_slice()],
                )
                .await
                .map_err(|e| pg(e, false))?;
            Ok(())
        })?;
        let pool = store.pool.clone();
        store.run_unbounded(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            super::chain::backfill(&mut client).await
        })?;
        // Listening before anything is read: a node that loads the states
        // and then follows the feed hears every erasure after its load.
        let (ready, heard) = tokio::sync::oneshot::channel();
        store
            .handle
            .spawn(listen(listen_config, listen_tls, store.ears.clone(), ready));
        store.run(async move {
            heard.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable {
                    in_doubt: false,
                    cause: "the feed's listener stopped".into(),
                })
            })
        })?;
        Ok(store)
    }
}
