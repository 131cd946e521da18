//! The embedded redb store: one file in the data dir, every commit durable
//! before it returns — a group commit through its record in the log next
//! to the file (`log.rs`: one append and fdatasync; the redb transaction
//! held open for the next groups and committed without fsync every few, or
//! before anything else opens the file: `held.rs`), everything else by a
//! durable redb commit (`Durability::Immediate`).
//!
//! Layout (schema version [`SCHEMA_VERSION`]), encodings in `codec.rs`:
//! - `meta`: `schema_version`, `next_sequence`, `catalog` (JSON spec),
//!   `erasure_key`;
//! - `contacts`: contact → its current states (protobuf);
//! - `history`: (contact, sequence) → nothing: the index of a contact's
//!   events, so a change costs the same whatever the contact's history, and
//!   a page of history is one range scan;
//! - `events`: sequence → the full event (protobuf). Append-only, so a
//!   group commit dirties only the rightmost leaves;
//! - `idempotency`: key → (sequence, recorded_at, fingerprint), and
//!   `idempotency_by_time` (recorded_at, key) to prune keys past retention;
//! - `erasures`: keyed hash of an erased contact → (erased_at, reason);
//! - `wordings`: (consent, version) → the wording (protobuf). Append-only.
//!
//! Erasure (DESIGN.md rule 5) deletes a contact's record, events and keys,
//! but redb keeps freed pages, so their bytes could linger in the file. An
//! erasure therefore marks the file, and [`Store::purge_erased`] (which the
//! writer calls seconds later, while the server runs) rewrites every live
//! record into a fresh file that replaces the old one; readers move to the
//! new file at once. A crash before that leaves the mark, and the next open
//! rewrites first.
//!
//! A change writes one small random leaf in `contacts`, one in `history`,
//! and appends to `events`. (Schema 1 kept the event list inside the
//! contact's record: one leaf fewer, but O(n) per change for a busy
//! contact; opening a schema-1 file migrates it once.)

mod chain;
mod codec;
mod file;
mod held;
mod log;
mod logged;
mod migrate;
mod rewrite;
mod transfer;
mod write;
mod zeroed;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use self::codec::{
    ContactRecord, decode_contact, decode_event, decode_idempotency, decode_wording, loaded_from,
    state_from, tombstone_erased_at, u32_from, u64_from,
};
use super::{
    Committed, ContactStates, IdempotencyRecord, Loaded, Recovered, Store, StoreError, Tombstone,
    WriteBatch,
};
use crate::domain::{CatalogSpec, EventRecord, PendingRecord, StateRecord, UnixNanos, Wording};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (contact, sequence) of every event: a contact's history, in order.
const HISTORY: TableDefinition<(&str, u64), ()> = TableDefinition::new("history");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const ERASURES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("erasures");
/// A table a read transaction may open, or `None` when no write ever
/// created it (a file from before it existed).
pub(super) fn open_if_any<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Erasures by their place in the change feed (sequence → keyed hash): what
/// Watch streams between the events (older erasures have none).
const ERASURE_FEED: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("erasure_feed");
/// (recorded_at, key) of every idempotency key, oldest first: for pruning.
const IDEMPOTENCY_BY_TIME: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("idempotency_by_time");
/// When a catalog came into force → the catalog (JSON), every one applied
/// since the file first kept them: what as-of reads decide with. Append-only.
const CATALOGS: TableDefinition<i64, &[u8]> = TableDefinition::new("catalogs");
/// Catalogs by their place in the change feed (sequence → the catalog's
/// ordinal): what Watch streams between the events. Append-only.
const CATALOG_FEED: TableDefinition<u64, u64> = TableDefinition::new("catalog_feed");
/// (consent, version) → wording. Append-only.
const WORDINGS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("wordings");
/// Meta key set by an erasure until the file has been rewritten.
const REWRITE_PENDING: &str = "rewrite_pending";

/// Bumped on any incompatible change of the layout above (2: `history`;
/// 3: the hash chain, `chain.rs`).
pub(super) const SCHEMA_VERSION: u32 = 3;
/// The same layout while open or after a crash: the log may hold commits
/// the file lacks, which a build of schema 3 only would miss (it refuses).
pub(super) const LOGGING_SCHEMA: u32 = 4;
const DB_FILE: &str = "consentd.redb";
/// The log next to it (`log.rs`).
const LOG_FILE: &str = "consentd.log";
/// `meta`: the number of the last log record the state holds (u64 LE).
const LOG_KEY: &str = "log";
/// The page cache when none is configured: the B-trees' inner pages of
/// millions of contacts and the pages being written. A page it does not
/// hold is read from the OS's page cache (a copy, no disk), so a larger
/// cache mostly costs memory: durable grants and imports ran at the same
/// rate with 64 and 256 MiB at 2M contacts (`cargo bench --bench load --
/// --writes-only --contacts 2000000 --store-cache-mb N`), while a fresh
/// process at 2M contacts was 301 MB against 388 MB resident.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

fn read_contact(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    contact: &str,
) -> Result<Option<ContactRecord>, StoreError> {
    table
        .get(contact)?
        .map(|v| decode_contact(v.value()))
        .transpose()
}

/// The embedded redb store: one file in the data dir.
pub struct RedbStore {
    /// The database in use; replaced whole by a post-erasure rewrite;
    /// `None` once closed.
    db: ArcSwapOption<Database>,
    /// The page cache bound, for the file a rewrite creates.
    cache_bytes: usize,
    /// The file, when the store owns one (a caller's backend has none, and
    /// is not rewritten after erasures).
    path: Option<PathBuf>,
    /// Whether commits are linked into the chain (always, but for the
    /// benchmark that measures what the chain costs).
    chained: bool,
    /// The log that makes group commits durable (`log.rs`), when the store
    /// owns a data dir; only the writer takes it.
    log: Option<Mutex<log::Log>>,
    /// The writer's transaction, held open across group commits
    /// (`held.rs`); `db()` commits it before anything else opens the file.
    held: held::Held,
}

impl RedbStore {
    /// Opens (creating if missing) the store in `data_dir` with the default
    /// page cache ([`DEFAULT_CACHE_BYTES`]).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (creating if missing) the store in `data_dir`, its page cache
    /// bounded to `cache_bytes`; first rewrites the file if an erasure
    /// happened since the last rewrite.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let db = file::create(&path, cache_bytes)?;
        file::owner_only(&path)?;
        let pending = Self::rewrite_pending(&db)?;
        let db = if pending {
            rewrite::rewrite(&db, &path, cache_bytes)?
        } else {
            // A rewrite that crashed before its rename left only live data.
            let _ = std::fs::remove_file(path.with_extension("rewrite"));
            db
        };
        let mut store = Self::init(db, Some(path), cache_bytes)?;
        store.log = Some(Mutex::new(store.replay_log(&data_dir.join(LOG_FILE))?));
        Ok(store)
    }

    /// Opens (creating if empty) a store over any redb storage backend: an
    /// in-memory one, or one that injects faults (the fail-stop and
    /// power-loss tests). Erasures are not rewritten out of such a backend.
    pub fn open_with_backend(backend: impl redb::StorageBackend) -> Result<Self, StoreError> {
        let db = file::builder(DEFAULT_CACHE_BYTES).create_with_backend(backend)?;
        Self::init(db, None, DEFAULT_CACHE_BYTES)
    }

    /// Checks the schema version and creates what a new file lacks.
    fn init(db: Database, path: Option<PathBuf>, cache_bytes: usize) -> Result<Self, StoreError> {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get("schema_version")?
                .map(|v| u32_from(v.value()))
                .transpose()?;
            match found {
                Some(SCHEMA_VERSION | LOGGING_SCHEMA) => {}
                Some(v @ (1 | 2)) => {
                    if v == 1 {
                        migrate::migrate_1_to_2(&txn)?;
                    }
                    txn.open_table(EVENTS)?;
                    txn.open_table(WORDINGS)?;
                    txn.open_table(ERASURES)?;
                    txn.open_table(ERASURE_FEED)?;
                    txn.open_table(CATALOGS)?;
                    txn.open_table(CATALOG_FEED)?;
                    if let Some((sequence, head)) = chain::migrate_2_to_3(&txn)? {
                        chain::set_head(&mut meta, sequence, &head)?;
                    }
                    meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
                Some(v) => {
                    return Err(StoreError::Schema {
                        found: v,
                        supported: LOGGING_SCHEMA,
                    });
                }
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
            }
            txn.open_table(CONTACTS)?;
            txn.open_table(HISTORY)?;
            txn.open_table(EVENTS)?;
            txn.open_table(IDEMPOTENCY)?;
            txn.open_table(IDEMPOTENCY_BY_TIME)?;
            txn.open_table(ERASURES)?;
            txn.open_table(WORDINGS)?;
            txn.open_table(chain::CHAIN)?;
            txn.open_table(chain::CHECKPOINTS)?;
            if meta.get("erasure_key")?.is_none() {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
                meta.insert("erasure_key", key.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(Self {
            db: ArcSwapOption::from_pointee(db),
            cache_bytes,
            path,
            chained: true,
            log: None,
            held: held::Held::default(),
        })
    }

    /// The database in use, unless the store was closed, with every
    /// acknowledged group in it: the writer's held transaction committed
    /// first (`held.rs`).
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.held.settle()?;
        self.file()
    }

    /// The database in use, as it is (the writer's group, which holds the
    /// held transaction's slot).
    fn file(&self) -> Result<Arc<Database>, StoreError> {
        self.db.load_full().ok_or(StoreError::Closed)
    }

    /// Whether an erasure happened since the last rewrite.
    fn rewrite_pending(db: &Database) -> Result<bool, StoreError> {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => Ok(meta.get(REWRITE_PENDING)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Store for RedbStore {
    fn recover(&self) -> Result<Recovered, StoreError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        let catalog = match meta.get("catalog")? {
            Some(v) => {
                Some(
                    serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                        table: "meta",
                        what: format!("catalog: {e}"),
                    })?,
                )
            }
            None => None,
        };
        let next_sequence = match meta.get("next_sequence")? {
            Some(v) => u64_from(v.value())?,
            None => 1,
        };
        let contacts = txn.open_table(CONTACTS)?.len()?;
        let erasure_key: [u8; 32] = meta
            .get("erasure_key")?
            .ok_or_else(|| StoreError::corrupt("meta", "erasure_key is missing"))?
            .value()
            .try_into()
            .map_err(|_| StoreError::corrupt("meta", "erasure_key length"))?;
        let mut last_recorded_at = match txn.open_table(EVENTS)?.last()? {
            Some((k, v)) => decode_event(k.value(), v.value())?.recorded_at,
            None => 0,
        };
        let mut erasures = Vec::new();
        for row in txn.open_table(ERASURES)?.range::<&[u8; 32]>(..)? {
            let (k, v) = row?;
            let at = tombstone_erased_at(v.value())?;
            last_recorded_at = last_recorded_at.max(at);
            erasures.push((*k.value(), at));
        }
        let mut wordings: Vec<Wording> = Vec::new();
        for row in txn.open_table(WORDINGS)?.range::<(&str, u32)>(..)? {
            let (k, v) = row?;
            let (consent, version) = k.value();
            let w = decode_wording(consent, version, v.value())?;
            last_recorded_at = last_recorded_at.max(w.in_force_from);
            // Keys come by (consent, version): keep the last of each consent.
            match wordings.last_mut() {
                Some(prev) if prev.consent == w.consent => *prev = w,
                _ => wordings.push(w),
            }
        }
        Ok(Recovered {
            wordings,
            catalog,
            next_sequence,
            contacts,
            erasure_key,
            erasures,
            last_recorded_at,
            catalog_version: 0,
        })
    }

    fn load_states(&self, sink: &mut dyn FnMut(&str, &str, Loaded)) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        let contacts = txn.open_table(CONTACTS)?;
        let mut n = 0;
        for row in contacts.range::<&str>(..)? {
            let (k, v) = row?;
            let contact = k.value();
            let record = decode_contact(v.value())?;
            for s in &record.states {
                sink(contact, &s.consent, loaded_from(s)?);
                n += 1;
            }
            for p in &record.pending {
                sink(contact, &p.consent, Loaded::Pending(p.record()));
            }
        }
        Ok(n)
    }

    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        // Asked by the writer for every keyed change: read in its held
        // transaction, which sees the groups it holds, rather than commit it.
        fn get(
            t: &impl ReadableTable<&'static str, &'static [u8]>,
            key: &str,
        ) -> Result<Option<IdempotencyRecord>, StoreError> {
            t.get(key)?
                .map(|v| decode_idempotency(v.value()))
                .transpose()
        }
        if let Some(found) = self
            .held
            .read(|txn| get(&txn.open_table(IDEMPOTENCY)?, key))
        {
            return found;
        }
        get(&self.db()?.begin_read()?.open_table(IDEMPOTENCY)?, key)
    }

    fn contact_pending(&self, contact: &str) -> Result<Vec<(String, PendingRecord)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(CONTACTS)?;
        Ok(read_contact(&table, contact)?
            .map(|r| {
                r.pending
                    .iter()
                    .map(|p| (p.consent.clone(), p.record()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(CONTACTS)?;
        let Some(record) = read_contact(&table, contact)? else {
            return Ok(Vec::new());
        };
        record.states.iter().map(state_from).collect()
    }

    fn catalog_at(&self, at: UnixNanos) -> Result<Option<(UnixNanos, CatalogSpec)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let mut kept = None;
        if let Some(t) = open_if_any(&txn, CATALOGS)? {
            let row = match t.range(..=at)?.next_back() {
                Some(row) => Some(row?),
                None => t.first()?,
            };
            kept = row.map(|(k, v)| (k.value(), v.value().to_vec()));
        }
        let (from, json) = match kept {
            Some(kept) => kept,
            None => match txn.open_table(META)?.get("catalog")? {
                Some(v) => (0, v.value().to_vec()),
                None => return Ok(None),
            },
        };
        let spec = serde_json::from_slice(&json)
            .map_err(|e| StoreError::corrupt("catalogs", format!("catalog: {e}")))?;
        Ok(Some((from, spec)))
    }

    fn states_after(&self, after: &str, limit: usize) -> Result<ContactStates, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(CONTACTS)?;
        let mut out = Vec::new();
        for row in table.range::<&str>((Excluded(after), Unbounded))? {
            let (k, v) = row?;
            let record = decode_contact(v.value())?;
            if record.states.is_empty() {
                continue;
            }
            let states = record
                .states
                .iter()
                .map(state_from)
                .collect::<Result<_, _>>()?;
            out.push((k.value().to_owned(), states));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn chain_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let txn = self.db()?.begin_read()?;
        chain::head(&txn.open_table(META)?)
    }

    fn links_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(crate::audit::Link, crate::audit::Held)>, StoreError> {
        chain::links_after(&self.db()?.begin_read()?, after, limit)
    }

    fn keep_checkpoint(&self, sequence: u64, note: &str, sync: bool) -> Result<(), StoreError> {
        self.keep_checkpoint_in(sequence, note, sync)
    }

    fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        chain::checkpoints(&self.db()?.begin_read()?, after, limit)
    }

    fn erased_at(&self, hash: &[u8; 32]) -> Result<Option<UnixNanos>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(ERASURES)?;
        table
            .get(hash)?
            .map(|v| tombstone_erased_at(v.value()))
            .transpose()
    }

    fn history_page(
        &self,
        contact: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let history = txn.open_table(HISTORY)?;
        let events = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        let start = after.saturating_add(1);
        for row in history
            .range((contact, start)..=(contact, u64::MAX))?
            .take(limit)
        {
            let (k, _) = row?;
            let sequence = k.value().1;
            let v = events.get(sequence)?.ok_or_else(|| {
                StoreError::corrupt("events", format!("sequence {sequence} is missing"))
            })?;
            out.push(decode_event(sequence, v.value())?);
        }
        Ok(out)
    }

    fn feed(&self, after: u64, limit: usize) -> Result<super::FeedPage, StoreError> {
        let txn = self.db()?.begin_read()?;
        let head = match txn.open_table(META)?.get("next_sequence")? {
            Some(v) => u64_from(v.value())?.saturating_sub(1),
            None => 0,
        };
        let events = txn.open_table(EVENTS)?;
        let mut out = super::FeedPage::default();
        for row in events.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            out.events.push(decode_event(k.value(), v.value())?);
        }
        out.through = match out.events.last() {
            Some(last) if out.events.len() == limit => last.sequence,
            _ => head.max(after),
        };
        if out.through > after
            && let Some(feed) = open_if_any(&txn, ERASURE_FEED)?
        {
            for row in feed.range(after + 1..=out.through)? {
                let (k, v) = row?;
                out.erasures.push((k.value(), *v.value()));
            }
        }
        if out.through > after
            && let Some(feed) = open_if_any(&txn, CATALOG_FEED)?
        {
            for row in feed.range(after + 1..=out.through)? {
                let (k, v) = row?;
                out.catalogs.push((k.value(), v.value()));
            }
        }
        Ok(out)
    }

    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        self.erase_in(contact, tombstone)
    }

    fn purge_erased(&self) -> Result<bool, StoreError> {
        let old = self.db()?;
        let Some(path) = &self.path else {
            return Ok(false);
        };
        if !Self::rewrite_pending(&old)? {
            return Ok(false);
        }
        let mut log = self.log()?;
        let new = rewrite::rewrite(&old, path, self.cache_bytes)?;
        self.db.store(Some(Arc::new(new)));
        // The new file holds every record so far, durably.
        if let Some(log) = log.as_deref_mut() {
            log.checkpointed();
        }
        Ok(true)
    }

    /// Makes every logged commit durable in the file, then drops the
    /// database (once the reads in flight end): redb closes the file
    /// cleanly, so the next open needs no repair.
    fn close(&self) -> Result<(), StoreError> {
        self.held.settle()?;
        if let (Some(mut log), Some(db)) = (self.log()?, self.db.load_full()) {
            self.checkpoint(&db, &mut log, SCHEMA_VERSION)?;
        }
        self.db.store(None);
        Ok(())
    }

    fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError> {
        self.prune_in(before, max)
    }

    fn wordings(&self, consent: Option<&str>) -> Result<Vec<Wording>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(WORDINGS)?;
        let rows = match consent {
            Some(c) => table.range((c, 0)..=(c, u32::MAX))?,
            None => table.range::<(&str, u32)>(..)?,
        };
        let mut out = Vec::new();
        for row in rows {
            let (k, v) = row?;
            let (consent, version) = k.value();
            out.push(decode_wording(consent, version, v.value())?);
        }
        Ok(out)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<Committed, StoreError> {
        // One process owns the file: the writer's numbering is the store's.
        let phases = self.commit_in(batch)?;
        Ok(Committed {
            phases: Some(phases),
            ..batch.as_numbered()
        })
    }
}

#[cfg(test)]
mod log_tests;
#[cfg(test)]
mod tests;
