//! Durable storage: the [`Store`] trait the core writes through, and its redb
//! implementation.
//!
//! The trait is deliberately small (load everything at start, look up a few
//! records, commit one batch atomically) so that a PostgreSQL backend for
//! several nodes can implement it without touching the core. Every commit is
//! durable (`Durability::Immediate`, fsync) before it returns.
//!
//! Layout (schema version [`SCHEMA_VERSION`]):
//! - `meta`: `schema_version`, `next_sequence`, `catalog` (JSON spec);
//! - `contacts`: contact → its current states and the sequences of all its
//!   events (protobuf). One random B-tree leaf per change;
//! - `events`: sequence → the full event (protobuf). Append-only, so a
//!   group commit dirties only the rightmost leaves;
//! - `idempotency`: key → (sequence, recorded_at, fingerprint), and
//!   `idempotency_by_time` (recorded_at, key) to prune keys past retention;
//! - `erasures`: keyed hash of an erased contact → (erased_at, reason).
//!
//! Erasure (DESIGN.md rule 5) deletes a contact's record, events and keys,
//! but redb keeps freed pages, so their bytes could linger in the file. An
//! erasure therefore marks the file, and the next open rewrites every live
//! record into a fresh file that replaces the old one: after a restart no
//! byte of an erased contact remains in the data dir.
//!
//! Keeping the per-contact data in one record, rather than a states table
//! and a (contact, sequence) event table, halves the random pages a commit
//! writes: the writer's cost is dominated by page write-back and fsync.

use std::path::Path;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::domain::{
    Action, CatalogSpec, ConsentId, ContactId, Decisive, EventRecord, Source, StateRecord,
    UnixNanos,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const ERASURES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("erasures");
/// (recorded_at, key) of every idempotency key, oldest first: for pruning.
const IDEMPOTENCY_BY_TIME: TableDefinition<(i64, &str), ()> =
    TableDefinition::new("idempotency_by_time");
/// Meta key set by an erasure until the file has been rewritten.
const REWRITE_PENDING: &str = "rewrite_pending";

/// Bumped on any incompatible change of the layout above.
pub const SCHEMA_VERSION: u32 = 1;
const DB_FILE: &str = "consentd.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("data file has schema version {found}, this build reads {SCHEMA_VERSION}")]
    Schema { found: u32 },
    #[error("corrupt record in {table}: {what}")]
    Corrupt { table: &'static str, what: String },
    #[error("creating data dir: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What an idempotency key remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub sequence: u64,
    pub recorded_at: UnixNanos,
    /// SHA-256 of the change the key was first used for.
    pub fingerprint: [u8; 32],
}

/// Everything the store holds that the core needs at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub catalog: Option<CatalogSpec>,
    pub next_sequence: u64,
    /// How many contacts hold state (sizes the index before loading).
    pub contacts: u64,
    /// Secret of the keyed hash that names erased contacts.
    pub erasure_key: [u8; 32],
    /// Every erasure: (keyed hash of the contact, erased_at).
    pub erasures: Vec<([u8; 32], UnixNanos)>,
    /// The latest `recorded_at` (event or erasure) on file, so that the
    /// writer's clock never runs behind what it already recorded.
    pub last_recorded_at: UnixNanos,
}

/// What stays of an erased contact.
#[derive(Debug, Clone)]
pub struct Tombstone {
    /// HMAC-SHA256 of the contact id under [`Loaded::erasure_key`].
    pub hash: [u8; 32],
    pub erased_at: UnixNanos,
    pub reason: String,
}

/// One atomic, durable unit of writes, built by the single writer.
///
/// Events are applied in order; an event with `applied` set becomes the
/// state of its (contact, consent).
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub events: Vec<EventRecord>,
    pub idempotency: Vec<(String, IdempotencyRecord)>,
    pub catalog: Option<CatalogSpec>,
    pub next_sequence: u64,
}

/// The storage the core relies on. Reads may run on any thread; only the
/// writer calls [`Store::commit`].
pub trait Store: Send + Sync + 'static {
    /// Loads the catalog and the sequence counter.
    fn load_meta(&self) -> Result<Loaded, StoreError>;
    /// Feeds every state, in (contact, consent) order; returns how many.
    fn load_states(&self, state: &mut dyn FnMut(&str, &str, Decisive)) -> Result<u64, StoreError>;
    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;
    fn state(&self, contact: &str, consent: &str) -> Result<Option<StateRecord>, StoreError>;
    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError>;
    /// Every event of the contact, in recording order.
    fn history(&self, contact: &str) -> Result<Vec<EventRecord>, StoreError>;
    /// Writes the batch in one transaction and returns once it is durable.
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// Deletes everything held for the contact, keeps only the tombstone,
    /// durably. Returns whether anything was held.
    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError>;
    /// Forgets up to `max` idempotency keys recorded before `before`,
    /// durably; returns how many.
    fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError>;
}

/// The embedded redb store: one file in the data dir.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (creating if missing) the store in `data_dir`; first rewrites
    /// the file if an erasure happened since the last rewrite.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path)?;
        let pending = {
            let txn = db.begin_read()?;
            match txn.open_table(META) {
                Ok(meta) => meta.get(REWRITE_PENDING)?.is_some(),
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(e.into()),
            }
        };
        let db = if pending {
            drop(db);
            rewrite(&path)?;
            Database::create(&path)?
        } else {
            db
        };
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get("schema_version")?
                .map(|v| u32_from(v.value()))
                .transpose()?;
            match found {
                Some(v) if v != SCHEMA_VERSION => return Err(StoreError::Schema { found: v }),
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
            }
            txn.open_table(CONTACTS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(IDEMPOTENCY)?;
            txn.open_table(IDEMPOTENCY_BY_TIME)?;
            txn.open_table(ERASURES)?;
            if meta.get("erasure_key")?.is_none() {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
                meta.insert("erasure_key", key.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn load_meta(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read()?;
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
            .ok_or_else(|| corrupt("meta", "erasure_key is missing"))?
            .value()
            .try_into()
            .map_err(|_| corrupt("meta", "erasure_key length"))?;
        let mut last_recorded_at = match txn.open_table(EVENTS)?.last()? {
            Some((k, v)) => decode_event(k.value(), v.value())?.recorded_at,
            None => 0,
        };
        let mut erasures = Vec::new();
        for row in txn.open_table(ERASURES)?.range::<&[u8; 32]>(..)? {
            let (k, v) = row?;
            let at = v
                .value()
                .get(..8)
                .ok_or_else(|| corrupt("erasures", "record length"))?;
            let at = i64::from_le_bytes(at.try_into().expect("8 bytes"));
            last_recorded_at = last_recorded_at.max(at);
            erasures.push((*k.value(), at));
        }
        Ok(Loaded {
            catalog,
            next_sequence,
            contacts,
            erasure_key,
            erasures,
            last_recorded_at,
        })
    }

    fn load_states(&self, sink: &mut dyn FnMut(&str, &str, Decisive)) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let contacts = txn.open_table(CONTACTS)?;
        let mut n = 0;
        for row in contacts.range::<&str>(..)? {
            let (k, v) = row?;
            let contact = k.value();
            let record = ContactRecord::decode(v.value())
                .map_err(|e| corrupt("contacts", &e.to_string()))?;
            for s in &record.states {
                let action = action_from(s.action, "contacts")?;
                sink(
                    contact,
                    &s.consent,
                    Decisive {
                        occurred_at: s.occurred_at,
                        action,
                    },
                );
                n += 1;
            }
        }
        Ok(n)
    }

    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        table
            .get(key)?
            .map(|v| decode_idempotency(v.value()))
            .transpose()
    }

    fn state(&self, contact: &str, consent: &str) -> Result<Option<StateRecord>, StoreError> {
        Ok(self
            .contact_states(contact)?
            .into_iter()
            .find(|s| s.consent.as_str() == consent))
    }

    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONTACTS)?;
        let Some(record) = read_contact(&table, contact)? else {
            return Ok(Vec::new());
        };
        record.states.iter().map(state_from).collect()
    }

    fn history(&self, contact: &str) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let contacts = txn.open_table(CONTACTS)?;
        let Some(record) = read_contact(&contacts, contact)? else {
            return Ok(Vec::new());
        };
        let events = txn.open_table(EVENTS)?;
        let mut out = Vec::with_capacity(record.events.len());
        for &sequence in &record.events {
            let v = events
                .get(sequence)?
                .ok_or_else(|| corrupt("events", &format!("sequence {sequence} is missing")))?;
            out.push(decode_event(sequence, v.value())?);
        }
        Ok(out)
    }

    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        self.erase_in(contact, tombstone)
    }

    fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let n;
        {
            let mut by_time = txn.open_table(IDEMPOTENCY_BY_TIME)?;
            let mut idem = txn.open_table(IDEMPOTENCY)?;
            let old: Vec<(i64, String)> = by_time
                .range((i64::MIN, "")..(before, ""))?
                .take(max)
                .map(|row| row.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                .collect::<Result<_, _>>()?;
            n = old.len();
            for (at, key) in &old {
                by_time.remove((*at, key.as_str()))?;
                idem.remove(key.as_str())?;
            }
        }
        if n > 0 {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(n)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        // Durability::Immediate is redb's default: commit() returns after fsync.
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(
                "next_sequence",
                batch.next_sequence.to_le_bytes().as_slice(),
            )?;
            if let Some(catalog) = &batch.catalog {
                let json = serde_json::to_vec(catalog).map_err(|e| StoreError::Corrupt {
                    table: "meta",
                    what: format!("catalog: {e}"),
                })?;
                meta.insert("catalog", json.as_slice())?;
            }
            let mut events = txn.open_table(EVENTS)?;
            let mut contacts = txn.open_table(CONTACTS)?;
            let mut buf = Vec::with_capacity(256);
            // Events of one contact are often adjacent in a batch: keep its
            // record in hand until the contact changes.
            let mut open: Option<(&str, ContactRecord)> = None;
            for e in &batch.events {
                buf.clear();
                encode_event(e, &mut buf);
                events.insert(e.sequence, buf.as_slice())?;
                let contact = e.contact.as_str();
                if open.as_ref().is_none_or(|(c, _)| *c != contact) {
                    if let Some((c, r)) = open.take() {
                        contacts.insert(c, r.encode_to_vec().as_slice())?;
                    }
                    let r = read_contact(&contacts, contact)?.unwrap_or_default();
                    open = Some((contact, r));
                }
                let (_, record) = open.as_mut().expect("opened above");
                record.events.push(e.sequence);
                if e.applied {
                    let state = state_to(e);
                    match record
                        .states
                        .iter_mut()
                        .find(|s| s.consent == state.consent)
                    {
                        Some(slot) => *slot = state,
                        None => record.states.push(state),
                    }
                }
            }
            if let Some((c, r)) = open.take() {
                contacts.insert(c, r.encode_to_vec().as_slice())?;
            }
            let mut idem = txn.open_table(IDEMPOTENCY)?;
            let mut by_time = txn.open_table(IDEMPOTENCY_BY_TIME)?;
            for (key, r) in &batch.idempotency {
                idem.insert(key.as_str(), encode_idempotency(r).as_slice())?;
                by_time.insert((r.recorded_at, key.as_str()), ())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl RedbStore {
    fn erase_in(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let held;
        {
            let mut contacts = txn.open_table(CONTACTS)?;
            let record = read_contact(&contacts, contact)?;
            held = record.is_some();
            if let Some(record) = record {
                let mut events = txn.open_table(EVENTS)?;
                let mut idem = txn.open_table(IDEMPOTENCY)?;
                for &sequence in &record.events {
                    let key = match events.remove(sequence)? {
                        Some(v) => {
                            StoredEvent::decode(v.value())
                                .map_err(|e| corrupt("events", &e.to_string()))?
                                .idempotency_key
                        }
                        None => None,
                    };
                    if let Some(key) = key {
                        let recorded_at = idem
                            .remove(key.as_str())?
                            .map(|v| decode_idempotency(v.value()))
                            .transpose()?
                            .map(|r| r.recorded_at);
                        if let Some(at) = recorded_at {
                            txn.open_table(IDEMPOTENCY_BY_TIME)?
                                .remove((at, key.as_str()))?;
                        }
                    }
                }
                contacts.remove(contact)?;
            }
            let mut value = tombstone.erased_at.to_le_bytes().to_vec();
            value.extend_from_slice(tombstone.reason.as_bytes());
            txn.open_table(ERASURES)?
                .insert(&tombstone.hash, value.as_slice())?;
            txn.open_table(META)?
                .insert(REWRITE_PENDING, [1u8].as_slice())?;
        }
        txn.commit()?;
        Ok(held)
    }
}

/// Copies every live record of the file at `path` into a fresh file and
/// swaps it in (fsync'd, atomic rename), so no freed page of the old file
/// survives. Crash-safe: until the rename the old file is untouched.
fn rewrite(path: &Path) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let tmp = path.with_extension("rewrite");
    let _ = std::fs::remove_file(&tmp);
    {
        let old = Database::create(path)?;
        let new = Database::create(&tmp)?;
        let src = old.begin_read()?;
        let dst = new.begin_write()?;
        copy_table(&src, &dst, META)?;
        copy_table(&src, &dst, CONTACTS)?;
        copy_table(&src, &dst, EVENTS)?;
        copy_table(&src, &dst, IDEMPOTENCY)?;
        copy_table(&src, &dst, IDEMPOTENCY_BY_TIME)?;
        copy_table(&src, &dst, ERASURES)?;
        dst.open_table(META)?.remove(REWRITE_PENDING)?;
        dst.commit()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "data file rewritten after erasures"
    );
    Ok(())
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &redb::ReadTransaction,
    dst: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let from = match src.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut to = dst.open_table(def)?;
    for row in from.range::<K::SelfType<'_>>(..)? {
        let (k, v) = row?;
        to.insert(k.value(), v.value())?;
    }
    Ok(())
}

// ---------------------------------------------------------------- encodings

fn corrupt(table: &'static str, what: &str) -> StoreError {
    StoreError::Corrupt {
        table,
        what: what.to_owned(),
    }
}

fn u32_from(b: &[u8]) -> Result<u32, StoreError> {
    Ok(u32::from_le_bytes(
        b.try_into().map_err(|_| corrupt("meta", "u32"))?,
    ))
}

fn u64_from(b: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_le_bytes(
        b.try_into().map_err(|_| corrupt("meta", "u64"))?,
    ))
}

fn action_from(raw: u32, table: &'static str) -> Result<Action, StoreError> {
    u8::try_from(raw)
        .ok()
        .and_then(Action::from_u8)
        .ok_or_else(|| corrupt(table, "action"))
}

fn source_from(raw: u32, table: &'static str) -> Result<Source, StoreError> {
    u8::try_from(raw)
        .ok()
        .and_then(Source::from_u8)
        .ok_or_else(|| corrupt(table, "source"))
}

/// Everything stored under one contact.
#[derive(Clone, PartialEq, prost::Message)]
struct ContactRecord {
    #[prost(message, repeated, tag = "1")]
    states: Vec<StoredState>,
    /// Sequences of every event of the contact, in recording order.
    #[prost(uint64, repeated, tag = "2")]
    events: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredState {
    #[prost(string, tag = "1")]
    consent: String,
    #[prost(uint32, tag = "2")]
    action: u32,
    #[prost(sfixed64, tag = "3")]
    occurred_at: i64,
    #[prost(sfixed64, tag = "4")]
    recorded_at: i64,
    #[prost(uint32, tag = "5")]
    source: u32,
    #[prost(uint32, tag = "6")]
    version: u32,
    #[prost(uint64, tag = "7")]
    sequence: u64,
}

fn read_contact(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    contact: &str,
) -> Result<Option<ContactRecord>, StoreError> {
    table
        .get(contact)?
        .map(|v| ContactRecord::decode(v.value()).map_err(|e| corrupt("contacts", &e.to_string())))
        .transpose()
}

fn state_to(e: &EventRecord) -> StoredState {
    StoredState {
        consent: e.consent.as_str().to_owned(),
        action: e.action as u32,
        occurred_at: e.occurred_at,
        recorded_at: e.recorded_at,
        source: e.source as u32,
        version: e.version,
        sequence: e.sequence,
    }
}

fn state_from(s: &StoredState) -> Result<StateRecord, StoreError> {
    Ok(StateRecord {
        consent: ConsentId::parse("consent", &s.consent)
            .map_err(|e| corrupt("contacts", &e.to_string()))?,
        action: action_from(s.action, "contacts")?,
        occurred_at: s.occurred_at,
        recorded_at: s.recorded_at,
        source: source_from(s.source, "contacts")?,
        version: s.version,
        sequence: s.sequence,
    })
}

fn encode_idempotency(r: &IdempotencyRecord) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0..8].copy_from_slice(&r.sequence.to_le_bytes());
    b[8..16].copy_from_slice(&r.recorded_at.to_le_bytes());
    b[16..48].copy_from_slice(&r.fingerprint);
    b
}

fn decode_idempotency(b: &[u8]) -> Result<IdempotencyRecord, StoreError> {
    if b.len() != 48 {
        return Err(corrupt("idempotency", "record length"));
    }
    Ok(IdempotencyRecord {
        sequence: u64::from_le_bytes(b[0..8].try_into().expect("length checked")),
        recorded_at: i64::from_le_bytes(b[8..16].try_into().expect("length checked")),
        fingerprint: b[16..48].try_into().expect("length checked"),
    })
}

/// An event as stored; protobuf so that fields can be added later.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEvent {
    #[prost(string, tag = "10")]
    contact: String,
    #[prost(string, tag = "1")]
    consent: String,
    #[prost(uint32, tag = "2")]
    action: u32,
    #[prost(sfixed64, tag = "3")]
    occurred_at: i64,
    #[prost(sfixed64, tag = "4")]
    recorded_at: i64,
    #[prost(uint32, tag = "5")]
    source: u32,
    #[prost(btree_map = "string, string", tag = "6")]
    evidence: std::collections::BTreeMap<String, String>,
    #[prost(uint32, tag = "7")]
    version: u32,
    #[prost(string, optional, tag = "8")]
    idempotency_key: Option<String>,
    #[prost(bool, tag = "9")]
    applied: bool,
}

fn encode_event(e: &EventRecord, buf: &mut Vec<u8>) {
    StoredEvent {
        contact: e.contact.as_str().to_owned(),
        consent: e.consent.as_str().to_owned(),
        action: e.action as u32,
        occurred_at: e.occurred_at,
        recorded_at: e.recorded_at,
        source: e.source as u32,
        evidence: e.evidence.clone(),
        version: e.version,
        idempotency_key: e.idempotency_key.clone(),
        applied: e.applied,
    }
    .encode(buf)
    .expect("a Vec grows as needed");
}

fn decode_event(sequence: u64, b: &[u8]) -> Result<EventRecord, StoreError> {
    let s = StoredEvent::decode(b).map_err(|e| corrupt("events", &e.to_string()))?;
    Ok(EventRecord {
        contact: ContactId::parse("contact", &s.contact)
            .map_err(|e| corrupt("events", &e.to_string()))?,
        consent: ConsentId::parse("consent", &s.consent)
            .map_err(|e| corrupt("events", &e.to_string()))?,
        action: action_from(s.action, "events")?,
        occurred_at: s.occurred_at,
        recorded_at: s.recorded_at,
        source: source_from(s.source, "events")?,
        evidence: s.evidence,
        version: s.version,
        sequence,
        idempotency_key: s.idempotency_key,
        applied: s.applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(consent: &str, seq: u64) -> StateRecord {
        StateRecord {
            consent: ConsentId::parse("c", consent).unwrap(),
            action: Action::Grant,
            occurred_at: 1,
            recorded_at: 2,
            source: Source::Form,
            version: 1,
            sequence: seq,
        }
    }

    #[test]
    fn commit_then_reopen_reads_everything_back() {
        let dir = tempfile::tempdir().unwrap();
        let contact = ContactId::parse("c", "anna@example.com").unwrap();
        let event = EventRecord {
            contact: contact.clone(),
            consent: ConsentId::parse("c", "marketing").unwrap(),
            action: Action::Grant,
            occurred_at: 1,
            recorded_at: 2,
            source: Source::Form,
            evidence: [("ip".to_string(), "10.0.0.1".to_string())].into(),
            version: 1,
            sequence: 9,
            idempotency_key: Some("k1".into()),
            applied: true,
        };
        let idem = IdempotencyRecord {
            sequence: 9,
            recorded_at: 2,
            fingerprint: [7; 32],
        };
        {
            let store = RedbStore::open(dir.path()).unwrap();
            store
                .commit(&WriteBatch {
                    events: vec![event.clone()],
                    idempotency: vec![("k1".into(), idem)],
                    catalog: Some(CatalogSpec {
                        channels: vec!["email".into()],
                        ..Default::default()
                    }),
                    next_sequence: 10,
                })
                .unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        let mut seen = Vec::new();
        let loaded = store.load_meta().unwrap();
        store
            .load_states(&mut |c, k, d| seen.push((c.to_owned(), k.to_owned(), d)))
            .unwrap();
        assert_eq!(loaded.next_sequence, 10);
        assert_eq!(loaded.last_recorded_at, 2);
        assert_eq!(loaded.catalog.unwrap().channels, vec!["email"]);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].2.action, Action::Grant);
        assert_eq!(store.history("anna@example.com").unwrap(), vec![event]);
        assert!(store.history("anna").unwrap().is_empty(), "no prefix bleed");
        assert_eq!(
            store.contact_states("anna@example.com").unwrap(),
            vec![state("marketing", 9)]
        );
        assert_eq!(
            store.state("anna@example.com", "marketing").unwrap(),
            Some(state("marketing", 9))
        );
        assert_eq!(store.state("anna@example.com", "surveys").unwrap(), None);
        assert_eq!(store.idempotency("k1").unwrap(), Some(idem));
        assert_eq!(store.idempotency("k2").unwrap(), None);

        // Retention: keys recorded before the cutoff go, later ones stay.
        let later = IdempotencyRecord {
            recorded_at: 1_000,
            ..idem
        };
        store
            .commit(&WriteBatch {
                idempotency: vec![("k3".into(), later)],
                next_sequence: 11,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.prune_idempotency(500, 100).unwrap(), 1);
        assert_eq!(store.idempotency("k1").unwrap(), None);
        assert_eq!(store.idempotency("k3").unwrap(), Some(later));
        assert_eq!(store.prune_idempotency(500, 100).unwrap(), 0);
    }
}
