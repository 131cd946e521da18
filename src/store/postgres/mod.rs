//! The PostgreSQL store: the store of record when several nodes, or a
//! database the company already runs, keep the proof.
//!
//! - **Schema**: the `consentd` schema, created and migrated at open by
//!   embedded, versioned migrations (refinery; `migrations/`), under an
//!   advisory lock so that nodes starting together migrate once.
//! - **Group commit**: one transaction per writer batch; rows go in bulk
//!   (`INSERT ... SELECT FROM UNNEST($arrays)`), `synchronous_commit` on, and
//!   the batch is acknowledged only after COMMIT returns.
//! - **Sequences in commit order**: every commit that records events first
//!   locks the one `meta` row (`SELECT ... FOR UPDATE`), checks and advances
//!   `next_sequence` there, and holds that lock until COMMIT. Committers are
//!   serialised from the moment they take sequences until their commit is
//!   visible, so a reader that follows `sequence > last_seen` can never see
//!   a sequence while a smaller one is still to come.
//! - **Faults**: a lost, refused or timed-out connection is
//!   [`StoreError::Unavailable`], never fail-stop: the writer refuses writes
//!   and retries; `in_doubt` is set when COMMIT was sent and no answer came.
//!
//! The [`Store`] interface is blocking; this store runs its async client
//! (tokio-postgres, pooled by deadpool) on a small runtime of its own and
//! waits for each answer, so it can be called from any thread.

mod cluster;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::{Json, ToSql};

pub use self::cluster::{Throwaway, test_database_url};
use super::{
    Changes, Committed, Heard, IdempotencyRecord, Loaded, Recovered, Store, StoreError, Tombstone,
    WriteBatch,
};
use crate::domain::{
    Action, CatalogSpec, ConsentId, ContactId, Decision, EventRecord, PendingRecord, Source,
    StateRecord, UnixNanos, Wording,
};

mod embedded {
    #![allow(missing_docs, unreachable_pub)]
    refinery::embed_migrations!("src/store/postgres/migrations");
}
use embedded::migrations;

/// How long one store operation may wait for PostgreSQL before it is
/// answered "unavailable" (a call is never held longer than this).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections the pool keeps: the writer, reads, the change feed.
const POOL_SIZE: usize = 8;
/// Rows per round trip while the index is rebuilt.
const LOAD_CHUNK: i32 = 20_000;
/// The NOTIFY channel of the change feed.
const FEED_CHANNEL: &str = "consentd_feed";
/// Erasure notices kept for a node that has not read them yet; beyond,
/// they are dropped (the node then finds those contacts by keyed hash).
const MAX_HEARD: usize = 100_000;
/// Key of the advisory lock that serialises migrations across nodes.
const MIGRATION_LOCK: i64 = 0x636f_6e73_656e_7464; // "consentd"

/// The PostgreSQL store (see the module docs).
pub struct PgStore {
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    timeout: Duration,
    /// An erasure deleted rows that no vacuum has cleared yet.
    vacuum_due: Arc<AtomicBool>,
    /// What the feed's listening connection heard.
    ears: Arc<Ears>,
}

/// The notices of the change feed, as heard by a connection that LISTENs.
#[derive(Debug, Default)]
struct Ears {
    heard: std::sync::Mutex<Heard>,
    /// Set with every notice, so that a waiting node wakes.
    woke: std::sync::Condvar,
    /// Notices since the node last asked.
    pending: std::sync::atomic::AtomicUsize,
}

impl Ears {
    fn hear(&self, payload: &str) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rest) = payload.strip_prefix("x:")
            && let Some((sequence, contact)) = rest.split_once(':')
            && let Ok(sequence) = sequence.parse()
        {
            // Beyond the bound a notice is dropped: the feed then finds the
            // contact by its keyed hash instead.
            if heard.erasures.len() < MAX_HEARD {
                heard.erasures.push((sequence, contact.to_owned()));
            }
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.woke.notify_all();
    }

    /// The connection dropped: notices may be missed until it is back (the
    /// feed reads the store anyway; an erasure missed costs a hash scan),
    /// so the node reads now.
    fn lose(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.woke.notify_all();
    }

    fn wait(&self, timeout: Duration) -> Heard {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        if self.pending.load(Ordering::SeqCst) == 0 {
            heard = self
                .woke
                .wait_timeout(heard, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        self.pending.store(0, Ordering::SeqCst);
        std::mem::take(&mut *heard)
    }
}

/// Keeps one connection LISTENing on the feed's channel, reconnecting with
/// backoff; `ready` is told once the first LISTEN holds.
async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    ears: Arc<Ears>,
    ready: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
) {
    use futures_util::StreamExt;
    let mut ready = Some(ready);
    let mut backoff = Duration::from_secs(1);
    loop {
        let hearer = ears.clone();
        let outcome = async {
            let (client, mut connection) = config.connect(tls.clone()).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(n) = message {
                        let _ = tx.send(n.payload().to_owned());
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN {FEED_CHANNEL}"))
                .await?;
            Ok::<_, tokio_postgres::Error>((client, driver, async move {
                while let Some(payload) = rx.recv().await {
                    hearer.hear(&payload);
                }
            }))
        }
        .await;
        match outcome {
            Ok((client, driver, hearing)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                backoff = Duration::from_secs(1);
                hearing.await;
                let _ = driver.await;
                drop(client);
            }
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(pg(e, false)));
                    return;
                }
            }
        }
        // Until the next LISTEN holds, notices are missed.
        tracing::warn!("the change feed's listening connection dropped; reconnecting");
        ears.lose();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
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
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A URL with its password, if any, replaced: for logs and errors.
pub fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(s) = url.find("://") {
        let rest = &url[s + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some((user, _)) = rest[..at].split_once(':')
        {
            out = format!("{}{user}:***{}", &url[..s + 3], &rest[at..]);
        }
    }
    match out.find("password=") {
        Some(p) => {
            let end = out[p..].find('&').map_or(out.len(), |e| p + e);
            format!("{}password=***{}", &out[..p], &out[end..])
        }
        None => out,
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// Whether PostgreSQL's error means "not now" rather than "never": the
/// connection is gone or refused, the server is shutting down or starting,
/// out of resources, or the transaction lost a race (nothing committed).
fn transient(code: &str) -> bool {
    ["08", "53", "57P", "40"]
        .iter()
        .any(|c| code.starts_with(c))
}

/// Maps a driver error. `in_doubt`: COMMIT was sent and may have landed.
fn pg(e: tokio_postgres::Error, in_doubt: bool) -> StoreError {
    match e.as_db_error() {
        Some(db) if !transient(db.code().code()) => backend(e),
        // The server answered: whatever it said, the transaction is over.
        Some(db) => StoreError::Unavailable {
            in_doubt: false,
            cause: format!("{} ({})", db.message(), db.code().code()),
        },
        // No answer: the connection failed or closed.
        None => StoreError::Unavailable {
            in_doubt,
            cause: with_sources(&e),
        },
    }
}

/// An error and its causes, `outer: inner: ...` (the driver's own message
/// leaves out why, e.g. which certificate check failed).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e, false),
        other => StoreError::Unavailable {
            in_doubt: false,
            cause: format!("no connection to PostgreSQL: {other}"),
        },
    }
}

fn i64_of(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::corrupt("events", format!("{what} {v} too large")))
}

fn u64_of(v: i64, table: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::corrupt(table, format!("negative value {v}")))
}

fn action_of(raw: i16, table: &'static str) -> Result<Action, StoreError> {
    u8::try_from(raw)
        .ok()
        .and_then(Action::from_u8)
        .ok_or_else(|| StoreError::corrupt(table, format!("action {raw}")))
}

fn source_of(raw: i16, table: &'static str) -> Result<Source, StoreError> {
    u8::try_from(raw)
        .ok()
        .and_then(Source::from_u8)
        .ok_or_else(|| StoreError::corrupt(table, format!("source {raw}")))
}

fn contact_of(raw: &str, table: &'static str) -> Result<ContactId, StoreError> {
    ContactId::parse("contact", raw).map_err(|e| StoreError::corrupt(table, e.to_string()))
}

fn consent_of(raw: &str, table: &'static str) -> Result<ConsentId, StoreError> {
    ConsentId::parse("consent", raw).map_err(|e| StoreError::corrupt(table, e.to_string()))
}

/// TLS as libpq's `sslmode` means it: `disable`; `prefer` and `require`
/// encrypt without checking the server's certificate (as libpq does);
/// `verify-ca` and `verify-full` check it against the system's roots (and,
/// for both here, the host name). The driver itself knows only `disable`,
/// `prefer` and `require`: the verifying modes reach it as `require`.
fn tls(verify: bool) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(backend)?;
    let config = if verify {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode` with the verifying modes mapped to `require`; whether the
/// certificate is to be verified.
fn ssl_mode(url: &str) -> (String, bool) {
    for mode in ["verify-full", "verify-ca"] {
        let needle = format!("sslmode={mode}");
        if url.contains(&needle) {
            return (url.replace(&needle, "sslmode=require"), true);
        }
    }
    (url.to_owned(), false)
}

/// The certificate check of `sslmode=prefer|require`: none (the channel is
/// encrypted, the server not authenticated), while handshake signatures
/// are still verified.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

const EVENT_COLUMNS: &str = "sequence, contact, consent, action, occurred_at, recorded_at, \
                             source, evidence, version, idempotency_key, applied, actor, \
                             pending, confirmed, confirmation_link";

fn event_from(row: &tokio_postgres::Row) -> Result<EventRecord, StoreError> {
    let Json(evidence) = row.try_get("evidence").map_err(backend)?;
    Ok(EventRecord {
        sequence: u64_of(row.try_get("sequence").map_err(backend)?, "events")?,
        contact: contact_of(row.try_get("contact").map_err(backend)?, "events")?,
        consent: consent_of(row.try_get("consent").map_err(backend)?, "events")?,
        action: action_of(row.try_get("action").map_err(backend)?, "events")?,
        occurred_at: row.try_get("occurred_at").map_err(backend)?,
        recorded_at: row.try_get("recorded_at").map_err(backend)?,
        source: source_of(row.try_get("source").map_err(backend)?, "events")?,
        evidence,
        version: u32::try_from(row.try_get::<_, i32>("version").map_err(backend)?)
            .map_err(|_| StoreError::corrupt("events", "version"))?,
        idempotency_key: row.try_get("idempotency_key").map_err(backend)?,
        applied: row.try_get("applied").map_err(backend)?,
        actor: row.try_get("actor").map_err(backend)?,
        pending: row.try_get("pending").map_err(backend)?,
        confirmed: row.try_get("confirmed").map_err(backend)?,
        confirmation_link: row.try_get("confirmation_link").map_err(backend)?,
    })
}

fn pending_from(row: &tokio_postgres::Row) -> Result<(String, String, PendingRecord), StoreError> {
    Ok((
        row.try_get(0).map_err(backend)?,
        row.try_get(1).map_err(backend)?,
        PendingRecord {
            count: u32::try_from(row.try_get::<_, i32>(2).map_err(backend)?)
                .map_err(|_| StoreError::corrupt("pending", "count"))?,
            last_at: row.try_get(3).map_err(backend)?,
            link_at: row.try_get(4).map_err(backend)?,
        },
    ))
}

fn state_from(row: &tokio_postgres::Row) -> Result<StateRecord, StoreError> {
    Ok(StateRecord {
        consent: consent_of(row.try_get("consent").map_err(backend)?, "states")?,
        action: action_of(row.try_get("action").map_err(backend)?, "states")?,
        occurred_at: row.try_get("occurred_at").map_err(backend)?,
        recorded_at: row.try_get("recorded_at").map_err(backend)?,
        source: source_of(row.try_get("source").map_err(backend)?, "states")?,
        version: u32::try_from(row.try_get::<_, i32>("version").map_err(backend)?)
            .map_err(|_| StoreError::corrupt("states", "version"))?,
        sequence: u64_of(row.try_get("sequence").map_err(backend)?, "states")?,
    })
}

fn wording_from(row: &tokio_postgres::Row) -> Result<Wording, StoreError> {
    Ok(Wording {
        consent: consent_of(row.try_get("consent").map_err(backend)?, "wordings")?,
        version: u32::try_from(row.try_get::<_, i32>("version").map_err(backend)?)
            .map_err(|_| StoreError::corrupt("wordings", "version"))?,
        title: row.try_get("title").map_err(backend)?,
        text: row.try_get("text").map_err(backend)?,
        parent: row.try_get("parent").map_err(backend)?,
        channels: row.try_get("channels").map_err(backend)?,
        brands: row.try_get("brands").map_err(backend)?,
        in_force_from: row.try_get("in_force_from").map_err(backend)?,
    })
}

/// A batch as column arrays, owned, ready to be sent.
#[derive(Default)]
struct Columns {
    events: EventColumns,
    states: StateColumns,
    keys: Vec<String>,
    key_sequences: Vec<i64>,
    key_times: Vec<i64>,
    key_fingerprints: Vec<Vec<u8>>,
    wordings: Vec<Wording>,
    catalog: Option<serde_json::Value>,
    next_sequence: i64,
    /// Pending records the batch adds to (`add`), sets afresh after a
    /// decision ended the wait earlier in the batch (`set`), or ends
    /// (`ended`: contact, consent).
    pending_add: PendingColumns,
    pending_set: PendingColumns,
    pending_ended: (Vec<String>, Vec<String>),
}

#[derive(Default)]
struct PendingColumns {
    contact: Vec<String>,
    consent: Vec<String>,
    count: Vec<i32>,
    last_at: Vec<i64>,
    link_at: Vec<i64>,
}

#[derive(Default)]
struct EventColumns {
    sequence: Vec<i64>,
    contact: Vec<String>,
    consent: Vec<String>,
    action: Vec<i16>,
    occurred_at: Vec<i64>,
    recorded_at: Vec<i64>,
    source: Vec<i16>,
    evidence: Vec<Json<crate::domain::Evidence>>,
    version: Vec<i32>,
    idempotency_key: Vec<Option<String>>,
    applied: Vec<bool>,
    actor: Vec<String>,
    pending: Vec<bool>,
    confirmed: Vec<bool>,
    confirmation_link: Vec<bool>,
}

#[derive(Default)]
struct StateColumns {
    contact: Vec<String>,
    consent: Vec<String>,
    action: Vec<i16>,
    occurred_at: Vec<i64>,
    recorded_at: Vec<i64>,
    source: Vec<i16>,
    version: Vec<i32>,
    sequence: Vec<i64>,
}

impl Columns {
    /// Moves the batch's sequences (from `first` on) up by `by`.
    fn shift(&mut self, first: i64, by: i64) {
        for s in self
            .events
            .sequence
            .iter_mut()
            .chain(self.states.sequence.iter_mut())
            .chain(self.key_sequences.iter_mut().filter(|s| **s >= first))
        {
            *s += by;
        }
        self.next_sequence += by;
    }

    /// The batch as column arrays; it is consumed, so evidence, keys and
    /// actors move instead of being copied.
    fn of(batch: WriteBatch) -> Result<Columns, StoreError> {
        let mut c = Columns {
            next_sequence: i64_of(batch.next_sequence, "next_sequence")?,
            catalog: batch
                .catalog
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| StoreError::corrupt("meta", format!("catalog: {e}")))?,
            wordings: batch.wordings,
            ..Default::default()
        };
        // The last applied event of a (contact, consent) in the batch is its
        // state; one row each, so that the upsert touches a row once.
        let mut last_state = std::collections::HashMap::new();
        for (i, e) in batch.events.iter().enumerate() {
            if e.applied {
                last_state.insert((e.contact.as_str(), e.consent.as_str()), i);
            }
        }
        // Pending records, folded per (contact, consent) in batch order:
        // (ended earlier in the batch, what the batch adds).
        let mut pending: std::collections::BTreeMap<(&str, &str), (bool, Option<PendingRecord>)> =
            std::collections::BTreeMap::new();
        for e in &batch.events {
            let slot = pending
                .entry((e.contact.as_str(), e.consent.as_str()))
                .or_insert((false, None));
            match PendingRecord::after(slot.1, e) {
                Some(p) => slot.1 = Some(p),
                None => *slot = (true, None),
            }
        }
        for ((contact, consent), (ended, added)) in pending {
            match added {
                None => {
                    c.pending_ended.0.push(contact.to_owned());
                    c.pending_ended.1.push(consent.to_owned());
                }
                Some(p) => {
                    let cols = if ended {
                        &mut c.pending_set
                    } else {
                        &mut c.pending_add
                    };
                    cols.contact.push(contact.to_owned());
                    cols.consent.push(consent.to_owned());
                    cols.count.push(i32::try_from(p.count).unwrap_or(i32::MAX));
                    cols.last_at.push(p.last_at);
                    cols.link_at.push(p.link_at);
                }
            }
        }
        let mut winners: Vec<usize> = last_state.into_values().collect();
        winners.sort_unstable();
        for i in winners {
            let e = &batch.events[i];
            let st = &mut c.states;
            st.contact.push(e.contact.to_string());
            st.consent.push(e.consent.to_string());
            st.action.push(e.action as i16);
            st.occurred_at.push(e.occurred_at);
            st.recorded_at.push(e.recorded_at);
            st.source.push(e.source as i16);
            st.version.push(e.version as i32);
            st.sequence.push(i64_of(e.sequence, "sequence")?);
        }
        for e in batch.events {
            let ev = &mut c.events;
            ev.sequence.push(i64_of(e.sequence, "sequence")?);
            ev.contact.push(e.contact.to_string());
            ev.consent.push(e.consent.to_string());
            ev.action.push(e.action as i16);
            ev.occurred_at.push(e.occurred_at);
            ev.recorded_at.push(e.recorded_at);
            ev.source.push(e.source as i16);
            ev.evidence.push(Json(e.evidence));
            ev.version.push(e.version as i32);
            ev.idempotency_key.push(e.idempotency_key);
            ev.applied.push(e.applied);
            ev.actor.push(e.actor);
            ev.pending.push(e.pending);
            ev.confirmed.push(e.confirmed);
            ev.confirmation_link.push(e.confirmation_link);
        }
        for (key, r) in batch.idempotency {
            c.keys.push(key);
            c.key_sequences.push(i64_of(r.sequence, "sequence")?);
            c.key_times.push(r.recorded_at);
            c.key_fingerprints.push(r.fingerprint.to_vec());
        }
        Ok(c)
    }
}

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
            runtime: Some(runtime),
            handle,
            timeout,
            vacuum_due: Arc::new(AtomicBool::new(false)),
            ears: Arc::default(),
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

    /// Whether PostgreSQL answers now.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.rows("SELECT 1", Vec::new(), |_| Ok(())).map(drop)
    }

    async fn commit_async(
        pool: Pool,
        mut batch: WriteBatch,
        commit_sent: Arc<AtomicBool>,
    ) -> Result<Committed, StoreError> {
        let before = |e| pg(e, false);
        let batch_first = batch.events.first().map(|e| e.sequence);
        let mut client = pool.get().await.map_err(pool_error)?;
        let txn = client.transaction().await.map_err(before)?;
        // The meta row's lock serialises committers from here to COMMIT;
        // under it, erasures committed since the writer ruled (on another
        // node) refuse the events they made stale (rule 5). Both queries go
        // out together: the second runs once the first holds the lock.
        let guarded = batch.event_hashes.len() == batch.events.len() && !batch.events.is_empty();
        let hashes: Vec<Vec<u8>> = batch.event_hashes.iter().map(|h| h.to_vec()).collect();
        let lock = txn.query_one("SELECT next_sequence FROM consentd.meta FOR UPDATE", &[]);
        let guard = async {
            if guarded {
                txn.query(
                    "SELECT hash, erased_at FROM consentd.erasures WHERE hash = ANY($1)",
                    &[&hashes],
                )
                .await
            } else {
                Ok(Vec::new())
            }
        };
        // Keys another node recorded since this one ruled: replays.
        let keys: Vec<&str> = batch.idempotency.iter().map(|(k, _)| k.as_str()).collect();
        let key_guard = async {
            if guarded && !keys.is_empty() {
                txn.query(
                    "SELECT key, sequence FROM consentd.idempotency WHERE key = ANY($1)",
                    &[&keys],
                )
                .await
            } else {
                Ok(Vec::new())
            }
        };
        let (lock, guard, key_guard) = futures_util::future::join3(lock, guard, key_guard).await;
        let stored: i64 = lock.map_err(before)?.get(0);
        let taken: std::collections::HashMap<String, i64> = key_guard
            .map_err(before)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        drop(keys);
        let erased: std::collections::HashMap<Vec<u8>, i64> = guard
            .map_err(before)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let refused = if guarded && !erased.is_empty() {
            let refused: Vec<usize> = batch
                .events
                .iter()
                .zip(&hashes)
                .enumerate()
                .filter(|(_, (e, h))| erased.get(*h).is_some_and(|&at| e.occurred_at <= at))
                .map(|(i, _)| i)
                .collect();
            if !refused.is_empty() {
                let gone: std::collections::HashSet<u64> =
                    refused.iter().map(|&i| batch.events[i].sequence).collect();
                batch.events.retain(|e| !gone.contains(&e.sequence));
                batch
                    .idempotency
                    .retain(|(_, r)| !gone.contains(&r.sequence));
            }
            refused
        } else {
            Vec::new()
        };
        let mut replayed = Vec::new();
        if !taken.is_empty() {
            for (i, e) in batch.events.iter().enumerate() {
                if let Some(first) = e.idempotency_key.as_ref().and_then(|k| taken.get(k)) {
                    replayed.push((i, u64_of(*first, "idempotency")?));
                }
            }
            let gone: std::collections::HashSet<u64> = replayed
                .iter()
                .map(|&(i, _)| batch.events[i].sequence)
                .collect();
            batch.events.retain(|e| !gone.contains(&e.sequence));
            batch
                .idempotency
                .retain(|(k, _)| !taken.contains_key(k.as_str()));
        }
        let mut c = Columns::of(batch)?;
        // Sequences are assigned here, in commit order: a batch numbered
        // below what others committed meanwhile moves up past it, whole.
        let first = batch_first
            .map(|f| i64_of(f, "sequence"))
            .transpose()?
            .unwrap_or(c.next_sequence);
        let shift = (stored - first).max(0);
        if shift > 0 && batch_first.is_some() {
            c.shift(first, shift);
        }
        // The rest goes out pipelined: one round trip for every statement.
        type Param<'a> = &'a (dyn ToSql + Sync);
        type Pending<'a> =
            std::pin::Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;
        let e = &c.events;
        let event_params: [Param<'_>; 15] = [
            &e.sequence,
            &e.contact,
            &e.consent,
            &e.action,
            &e.occurred_at,
            &e.recorded_at,
            &e.source,
            &e.evidence,
            &e.version,
            &e.idempotency_key,
            &e.applied,
            &e.actor,
            &e.pending,
            &e.confirmed,
            &e.confirmation_link,
        ];
        let s = &c.states;
        let state_params: [Param<'_>; 8] = [
            &s.contact,
            &s.consent,
            &s.action,
            &s.occurred_at,
            &s.recorded_at,
            &s.source,
            &s.version,
            &s.sequence,
        ];
        let key_params: [Param<'_>; 4] =
            [&c.keys, &c.key_sequences, &c.key_times, &c.key_fingerprints];
        let wording_rows: Vec<(&str, i32, &crate::domain::Wording)> = c
            .wordings
            .iter()
            .map(|w| (w.consent.as_str(), w.version as i32, w))
            .collect();
        let wording_params: Vec<[Param<'_>; 8]> = wording_rows
            .iter()
            .map(|(consent, version, w)| -> [Param<'_>; 8] {
                [
                    consent,
                    version,
                    &w.title,
                    &w.text,
                    &w.parent,
                    &w.channels,
                    &w.brands,
                    &w.in_force_from,
                ]
            })
            .collect();
        let notify_params: [Param<'_>; 1] = [&FEED_CHANNEL];
        let pa = &c.pending_add;
        let pending_add: [Param<'_>; 5] = [
            &pa.contact,
            &pa.consent,
            &pa.count,
            &pa.last_at,
            &pa.link_at,
        ];
        let ps = &c.pending_set;
        let pending_set: [Param<'_>; 5] = [
            &ps.contact,
            &ps.consent,
            &ps.count,
            &ps.last_at,
            &ps.link_at,
        ];
        let pending_ended: [Param<'_>; 2] = [&c.pending_ended.0, &c.pending_ended.1];
        let mut statements: Vec<Pending<'_>> = Vec::new();
        if !e.sequence.is_empty() {
            statements.push(Box::pin(txn.execute(
                "INSERT INTO consentd.events (sequence, contact, consent, action, occurred_at,
                     recorded_at, source, evidence, version, idempotency_key, applied, actor,
                     pending, confirmed, confirmation_link)
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::smallint[],
                     $5::bigint[], $6::bigint[], $7::smallint[], $8::jsonb[], $9::int[],
                     $10::text[], $11::bool[], $12::text[], $13::bool[], $14::bool[],
                     $15::bool[])",
                &event_params,
            )));
        }
        if !s.contact.is_empty() {
            statements.push(Box::pin(txn.execute(
                "INSERT INTO consentd.states (contact, consent, action, occurred_at,
                     recorded_at, source, version, sequence)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::smallint[], $4::bigint[],
                     $5::bigint[], $6::smallint[], $7::int[], $8::bigint[])
                 ON CONFLICT (contact, consent) DO UPDATE SET action = EXCLUDED.action,
                     occurred_at = EXCLUDED.occurred_at, recorded_at = EXCLUDED.recorded_at,
                     source = EXCLUDED.source, version = EXCLUDED.version,
                     sequence = EXCLUDED.sequence
                 -- Rule 2, in the database too: writers on several nodes may
                 -- each have ruled against an older view; the later decision
                 -- stays whatever order they commit in (on a tie, WITHDRAW).
                 WHERE EXCLUDED.occurred_at > states.occurred_at
                    OR (EXCLUDED.occurred_at = states.occurred_at
                        AND EXCLUDED.action = 2 AND states.action = 1)",
                &state_params,
            )));
        }
        if !c.keys.is_empty() {
            statements.push(Box::pin(txn.execute(
                "INSERT INTO consentd.idempotency (key, sequence, recorded_at, fingerprint)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bytea[])
                 ON CONFLICT (key) DO UPDATE SET sequence = EXCLUDED.sequence,
                     recorded_at = EXCLUDED.recorded_at, fingerprint = EXCLUDED.fingerprint",
                &key_params,
            )));
        }
        // Three disjoint sets of (contact, consent): each row is touched by
        // one statement.
        if !c.pending_add.contact.is_empty() {
            statements.push(Box::pin(txn.execute(
                "INSERT INTO consentd.pending (contact, consent, count, last_at, link_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bigint[],
                     $5::bigint[])
                 ON CONFLICT (contact, consent) DO UPDATE SET
                     count = pending.count + EXCLUDED.count,
                     last_at = GREATEST(pending.last_at, EXCLUDED.last_at),
                     link_at = GREATEST(pending.link_at, EXCLUDED.link_at)",
                &pending_add,
            )));
        }
        if !c.pending_set.contact.is_empty() {
            statements.push(Box::pin(txn.execute(
                "INSERT INTO consentd.pending (contact, consent, count, last_at, link_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bigint[],
                     $5::bigint[])
                 ON CONFLICT (contact, consent) DO UPDATE SET count = EXCLUDED.count,
                     last_at = EXCLUDED.last_at, link_at = EXCLUDED.link_at",
                &pending_set,
            )));
        }
        if !c.pending_ended.0.is_empty() {
            statements.push(Box::pin(txn.execute(
                "DELETE FROM consentd.pending p
                 USING UNNEST($1::text[], $2::text[]) AS ended(contact, consent)
                 WHERE p.contact = ended.contact AND p.consent = ended.consent",
                &pending_ended,
            )));
        }
        for params in &wording_params {
            statements.push(Box::pin(txn.execute(
                "INSERT INTO consentd.wordings (consent, version, title, text, parent,
                     channels, brands, in_force_from)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                params,
            )));
        }
        if !e.sequence.is_empty() || c.catalog.is_some() {
            // Wakes the other nodes' feeds when this commits.
            statements.push(Box::pin(
                txn.execute("SELECT pg_notify($1, 'e')", &notify_params),
            ));
        }
        let meta_params: [Param<'_>; 2] = [&c.next_sequence, &c.catalog];
        let meta = txn.query_one(
            "UPDATE consentd.meta SET next_sequence = GREATEST(next_sequence, $1),
                 catalog = COALESCE($2, catalog),
                 catalog_version = catalog_version + (CASE WHEN $2 IS NULL THEN 0 ELSE 1 END)
             RETURNING catalog_version",
            &meta_params,
        );
        let (meta, written) =
            futures_util::future::join(meta, futures_util::future::try_join_all(statements)).await;
        written.map_err(before)?;
        let catalog_version: i64 = meta.map_err(before)?.get(0);
        commit_sent.store(true, Ordering::SeqCst);
        txn.commit().await.map_err(|e| pg(e, true))?;
        Ok(Committed {
            first_sequence: u64_of(
                if batch_first.is_some() {
                    first + shift
                } else {
                    c.next_sequence
                },
                "meta",
            )?,
            catalog_version: u64_of(catalog_version, "meta")?,
            refused,
            replayed,
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
        type Chunk = Vec<(String, String, i16, i64, i32, i16)>;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Chunk, StoreError>>(2);
        let pool = self.pool.clone();
        self.handle.spawn(async move {
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
        for (contact, consent, p) in self.rows(
            "SELECT contact, consent, count, last_at, link_at FROM consentd.pending",
            Vec::new(),
            pending_from,
        )? {
            sink(&contact, &consent, Loaded::Pending(p));
        }
        Ok(n)
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

    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
        self.rows(
            "SELECT * FROM consentd.states WHERE contact = $1 ORDER BY sequence",
            vec![Box::new(contact.to_owned())],
            state_from,
        )
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

    fn commit(&self, batch: &WriteBatch) -> Result<Committed, StoreError> {
        let owned = batch.clone();
        let pool = self.pool.clone();
        let sent = Arc::new(AtomicBool::new(false));
        let in_doubt = sent.clone();
        let timeout = self.timeout;
        self.run_unbounded(async move {
            match tokio::time::timeout(timeout, Self::commit_async(pool, owned, sent)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable {
                    in_doubt: in_doubt.load(Ordering::SeqCst),
                    cause: format!("no answer from PostgreSQL within {timeout:?}"),
                }),
            }
        })
    }

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
            "SELECT hash, erased_at, reason FROM consentd.erasures ORDER BY hash",
            Vec::new(),
            |r| {
                let hash: Vec<u8> = r.try_get(0).map_err(backend)?;
                Ok(Tombstone {
                    hash: hash
                        .try_into()
                        .map_err(|_| StoreError::corrupt("erasures", "hash length"))?,
                    erased_at: r.try_get(1).map_err(backend)?,
                    reason: r.try_get(2).map_err(backend)?,
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
                    "INSERT INTO consentd.erasures (hash, erased_at, reason) VALUES ($1, $2, $3)
                     ON CONFLICT (hash) DO UPDATE SET erased_at = EXCLUDED.erased_at,
                         reason = EXCLUDED.reason",
                    &[&t.hash.as_slice(), &t.erased_at, &t.reason],
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

    fn shared(&self) -> bool {
        true
    }

    fn changes_after(&self, after: u64, limit: usize) -> Result<Changes, StoreError> {
        let after_i = i64::try_from(after).unwrap_or(i64::MAX);
        let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
        let pool = self.pool.clone();
        self.run(async move {
            let err = |e| pg(e, false);
            let mut client = pool.get().await.map_err(pool_error)?;
            // One snapshot for the three reads.
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
            let next: i64 = meta.try_get(0).map_err(backend)?;
            let catalog_version = u64_of(meta.try_get(1).map_err(backend)?, "meta")?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM consentd.events
                 WHERE sequence > $1 ORDER BY sequence LIMIT $2"
            );
            let events = txn
                .query(&sql, &[&after_i, &limit_i])
                .await
                .map_err(err)?
                .iter()
                .map(event_from)
                .collect::<Result<Vec<_>, _>>()?;
            // Commits are ordered by sequence, so everything below the
            // counter this snapshot sees is in it.
            let through = match events.last() {
                Some(last) if events.len() == limit => last.sequence,
                _ => u64_of(next - 1, "meta")?.max(after),
            };
            let through_i = i64::try_from(through).unwrap_or(i64::MAX);
            let erasures = txn
                .query(
                    "SELECT sequence, hash, erased_at, reason FROM consentd.erasures
                     WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence",
                    &[&after_i, &through_i],
                )
                .await
                .map_err(err)?
                .iter()
                .map(|r| {
                    let hash: Vec<u8> = r.try_get(1).map_err(backend)?;
                    Ok((
                        u64_of(r.try_get(0).map_err(backend)?, "erasures")?,
                        Tombstone {
                            hash: hash
                                .try_into()
                                .map_err(|_| StoreError::corrupt("erasures", "hash length"))?,
                            erased_at: r.try_get(2).map_err(backend)?,
                            reason: r.try_get(3).map_err(backend)?,
                        },
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            txn.commit().await.map_err(err)?;
            Ok(Changes {
                events,
                erasures,
                through,
                head: u64_of(next - 1, "meta")?.max(through),
                catalog_version,
            })
        })
    }

    fn wait_for_changes(&self, timeout: Duration) -> Heard {
        self.ears.wait(timeout)
    }

    fn catalog(&self) -> Result<(Option<CatalogSpec>, Vec<Wording>), StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
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
                .query(
                    "SELECT DISTINCT ON (consent) * FROM consentd.wordings
                     ORDER BY consent, version DESC",
                    &[],
                )
                .await
                .map_err(|e| pg(e, false))?
                .iter()
                .map(wording_from)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((catalog, wordings))
        })
    }

    fn link_keys(&self, fresh: &str) -> Result<Option<Vec<String>>, StoreError> {
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
                .map(Some)
        })
    }

    fn next_sequence(&self) -> Result<u64, StoreError> {
        let n = self.rows("SELECT next_sequence FROM consentd.meta", Vec::new(), |r| {
            u64_of(r.try_get(0).map_err(backend)?, "meta")
        })?;
        n.into_iter()
            .next()
            .ok_or_else(|| StoreError::corrupt("meta", "the meta row is missing"))
    }

    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        let pool = self.pool.clone();
        let contact = contact.to_owned();
        let t = tombstone.clone();
        let sent = Arc::new(AtomicBool::new(false));
        let in_doubt = sent.clone();
        let timeout = self.timeout;
        let vacuum_due = self.vacuum_due.clone();
        self.run_unbounded(async move {
            let work = async {
                let before = |e| pg(e, false);
                let mut client = pool.get().await.map_err(pool_error)?;
                let txn = client.transaction().await.map_err(before)?;
                txn.execute(
                    "DELETE FROM consentd.idempotency WHERE key IN (SELECT idempotency_key
                         FROM consentd.events WHERE contact = $1 AND idempotency_key IS NOT NULL)",
                    &[&contact],
                )
                .await
                .map_err(before)?;
                txn.execute(
                    "DELETE FROM consentd.states WHERE contact = $1",
                    &[&contact],
                )
                .await
                .map_err(before)?;
                txn.execute(
                    "DELETE FROM consentd.pending WHERE contact = $1",
                    &[&contact],
                )
                .await
                .map_err(before)?;
                let held = txn
                    .execute(
                        "DELETE FROM consentd.events WHERE contact = $1",
                        &[&contact],
                    )
                    .await
                    .map_err(before)?
                    > 0;
                // An erasure takes a sequence too, so that every node's
                // feed meets it in order.
                let sequence: i64 = txn
                    .query_one(
                        "UPDATE consentd.meta SET next_sequence = next_sequence + 1
                         RETURNING next_sequence - 1",
                        &[],
                    )
                    .await
                    .map_err(before)?
                    .get(0);
                txn.execute(
                    "INSERT INTO consentd.erasures (hash, erased_at, reason, sequence)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (hash) DO UPDATE SET erased_at = EXCLUDED.erased_at,
                         reason = EXCLUDED.reason, sequence = EXCLUDED.sequence",
                    &[&t.hash.as_slice(), &t.erased_at, &t.reason, &sequence],
                )
                .await
                .map_err(before)?;
                // The contact id travels only in this notice (delivered at
                // commit, kept in no table): the other nodes need it to
                // forget the contact's states.
                txn.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&FEED_CHANNEL, &format!("x:{sequence}:{contact}")],
                )
                .await
                .map_err(before)?;
                sent.store(true, Ordering::SeqCst);
                txn.commit().await.map_err(|e| pg(e, true))?;
                vacuum_due.store(true, Ordering::SeqCst);
                Ok(held)
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable {
                    in_doubt: in_doubt.load(Ordering::SeqCst),
                    cause: format!("no answer from PostgreSQL within {timeout:?}"),
                }),
            }
        })
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{PgStore, Throwaway};
    use crate::store::Store;
    use crate::store::conformance::{Fixture, conformance_suite};

    /// A fresh database of the test cluster per fresh store; reopen
    /// connects a new store to the same database.
    struct Pg(Option<String>);

    impl Fixture for Pg {
        fn fresh(&mut self) -> Arc<dyn Store> {
            let url = Throwaway::shared()
                .expect("PostgreSQL for the conformance suite")
                .fresh_database();
            let store = PgStore::open(&url).unwrap();
            self.0 = Some(url);
            Arc::new(store)
        }

        fn reopen(&mut self) -> Arc<dyn Store> {
            Arc::new(PgStore::open(self.0.as_ref().expect("fresh first")).unwrap())
        }

        fn available(&self) -> bool {
            Throwaway::shared().is_some()
        }
    }

    conformance_suite!(Pg(None));

    fn event(contact: &str, sequence: u64) -> crate::domain::EventRecord {
        crate::domain::EventRecord {
            contact: crate::domain::ContactId::parse("contact", contact).unwrap(),
            consent: crate::domain::ConsentId::parse("consent", "marketing").unwrap(),
            action: crate::domain::Action::Grant,
            occurred_at: sequence as i64,
            recorded_at: sequence as i64,
            source: crate::domain::Source::Api,
            evidence: Default::default(),
            version: 1,
            sequence,
            idempotency_key: None,
            applied: true,
            actor: "node".into(),
            pending: false,
            confirmed: false,
            confirmation_link: false,
        }
    }

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

    #[test]
    fn two_writers_on_one_database_get_sequences_in_commit_order() {
        let Some(server) = Throwaway::shared() else {
            println!("SKIPPED: no PostgreSQL server here");
            return;
        };
        let url = server.fresh_database();
        let (a, b) = (PgStore::open(&url).unwrap(), PgStore::open(&url).unwrap());
        let batch = |events: Vec<crate::domain::EventRecord>, next| crate::store::WriteBatch {
            events,
            idempotency: vec![(
                "k".into(),
                crate::domain::IdempotencyRecord {
                    sequence: 1,
                    recorded_at: 1,
                    fingerprint: [1; 32],
                },
            )],
            next_sequence: next,
            ..Default::default()
        };
        let a_first = a
            .commit(&batch(vec![event("anna", 1), event("bob", 2)], 3))
            .unwrap()
            .first_sequence;
        assert_eq!(a_first, 1);
        // B numbered its batch from 1 too: the store moves it past A's.
        let mut b_batch = batch(vec![event("carl", 1), event("dora", 2)], 3);
        b_batch.idempotency[0].0 = "k2".into();
        assert_eq!(b.commit(&b_batch).unwrap().first_sequence, 3);
        let all: Vec<(String, u64)> = a
            .events_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.contact.to_string(), e.sequence))
            .collect();
        assert_eq!(
            all,
            vec![
                ("anna".into(), 1),
                ("bob".into(), 2),
                ("carl".into(), 3),
                ("dora".into(), 4)
            ]
        );
        assert_eq!(b.contact_states("dora").unwrap()[0].sequence, 4);
        assert_eq!(b.idempotency("k2").unwrap().unwrap().sequence, 3);
        assert_eq!(a.next_sequence().unwrap(), 5);
    }
}
