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
//! - `states`: (contact, consent) → the winning event, fixed 30-byte record;
//! - `events`: (contact, sequence) → the full event (protobuf), so a
//!   contact's history is one range scan in recording order;
//! - `idempotency`: key → (sequence, recorded_at, fingerprint).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::domain::{
    Action, CatalogSpec, ConsentId, ContactId, Decisive, EventRecord, Source, StateRecord,
    UnixNanos,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const STATES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("states");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");

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
}

/// One atomic, durable unit of writes, built by the single writer.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub events: Vec<EventRecord>,
    pub states: Vec<(ContactId, StateRecord)>,
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
}

/// The embedded redb store: one file in the data dir.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (creating if missing) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let db = Database::create(data_dir.join(DB_FILE))?;
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
            txn.open_table(STATES)?;
            txn.open_table(EVENTS)?;
            txn.open_table(IDEMPOTENCY)?;
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
        Ok(Loaded {
            catalog,
            next_sequence,
        })
    }

    fn load_states(&self, sink: &mut dyn FnMut(&str, &str, Decisive)) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let states = txn.open_table(STATES)?;
        let mut n = 0;
        for row in states.range::<(&str, &str)>(..)? {
            let (k, v) = row?;
            let (contact, consent) = k.value();
            let (action, occurred_at) = decode_decisive(v.value())?;
            sink(
                contact,
                consent,
                Decisive {
                    occurred_at,
                    action,
                },
            );
            n += 1;
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
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATES)?;
        table
            .get((contact, consent))?
            .map(|v| decode_state(consent, v.value()))
            .transpose()
    }

    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATES)?;
        let mut out = Vec::new();
        for row in table.range((contact, "")..)? {
            let (k, v) = row?;
            let (c, consent) = k.value();
            if c != contact {
                break;
            }
            out.push(decode_state(consent, v.value())?);
        }
        Ok(out)
    }

    fn history(&self, contact: &str) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let id = ContactId::parse("contact_id", contact).map_err(|e| StoreError::Corrupt {
            table: "events",
            what: e.to_string(),
        })?;
        let mut out = Vec::new();
        for row in table.range((contact, 0u64)..=(contact, u64::MAX))? {
            let (k, v) = row?;
            let (_, sequence) = k.value();
            out.push(decode_event(id.clone(), sequence, v.value())?);
        }
        Ok(out)
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
            let mut buf = Vec::with_capacity(256);
            for e in &batch.events {
                buf.clear();
                encode_event(e, &mut buf);
                events.insert((e.contact.as_str(), e.sequence), buf.as_slice())?;
            }
            let mut states = txn.open_table(STATES)?;
            for (contact, s) in &batch.states {
                states.insert(
                    (contact.as_str(), s.consent.as_str()),
                    encode_state(s).as_slice(),
                )?;
            }
            let mut idem = txn.open_table(IDEMPOTENCY)?;
            for (key, r) in &batch.idempotency {
                idem.insert(key.as_str(), encode_idempotency(r).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
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

const STATE_LEN: usize = 30;

fn encode_state(s: &StateRecord) -> [u8; STATE_LEN] {
    let mut b = [0u8; STATE_LEN];
    b[0] = s.action as u8;
    b[1] = s.source as u8;
    b[2..6].copy_from_slice(&s.version.to_le_bytes());
    b[6..14].copy_from_slice(&s.occurred_at.to_le_bytes());
    b[14..22].copy_from_slice(&s.recorded_at.to_le_bytes());
    b[22..30].copy_from_slice(&s.sequence.to_le_bytes());
    b
}

fn decode_decisive(b: &[u8]) -> Result<(Action, UnixNanos), StoreError> {
    if b.len() != STATE_LEN {
        return Err(corrupt("states", "record length"));
    }
    let action = Action::from_u8(b[0]).ok_or_else(|| corrupt("states", "action"))?;
    let occurred_at = i64::from_le_bytes(b[6..14].try_into().expect("length checked above"));
    Ok((action, occurred_at))
}

fn decode_state(consent: &str, b: &[u8]) -> Result<StateRecord, StoreError> {
    let (action, occurred_at) = decode_decisive(b)?;
    let le8 = |r: std::ops::Range<usize>| -> [u8; 8] { b[r].try_into().expect("length checked") };
    Ok(StateRecord {
        consent: ConsentId::parse("consent", consent)
            .map_err(|e| corrupt("states", &e.to_string()))?,
        action,
        occurred_at,
        source: Source::from_u8(b[1]).ok_or_else(|| corrupt("states", "source"))?,
        version: u32::from_le_bytes(b[2..6].try_into().expect("length checked")),
        recorded_at: i64::from_le_bytes(le8(14..22)),
        sequence: u64::from_le_bytes(le8(22..30)),
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
    use prost::Message;
    StoredEvent {
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

fn decode_event(contact: ContactId, sequence: u64, b: &[u8]) -> Result<EventRecord, StoreError> {
    use prost::Message;
    let s = StoredEvent::decode(b).map_err(|e| corrupt("events", &e.to_string()))?;
    Ok(EventRecord {
        contact,
        consent: ConsentId::parse("consent", &s.consent)
            .map_err(|e| corrupt("events", &e.to_string()))?,
        action: u8::try_from(s.action)
            .ok()
            .and_then(Action::from_u8)
            .ok_or_else(|| corrupt("events", "action"))?,
        occurred_at: s.occurred_at,
        recorded_at: s.recorded_at,
        source: u8::try_from(s.source)
            .ok()
            .and_then(Source::from_u8)
            .ok_or_else(|| corrupt("events", "source"))?,
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
            action: Action::Withdraw,
            occurred_at: -5,
            recorded_at: 77,
            source: Source::UnsubscribeLink,
            version: 3,
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
                    states: vec![(contact.clone(), state("marketing", 9))],
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
        assert_eq!(loaded.catalog.unwrap().channels, vec!["email"]);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].2.action, Action::Withdraw);
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
        assert_eq!(store.idempotency("k1").unwrap(), Some(idem));
        assert_eq!(store.idempotency("k2").unwrap(), None);
    }
}
