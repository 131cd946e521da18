//! What the log's records hold (`log.rs`), and replaying them when the
//! store opens.
//!
//! A record is one of two things, told by its first byte:
//! - `1`, a group commit: the batch as the writer ruled it and the chain's
//!   links as the commit computed them (salts included, so the chain and
//!   any receipt given out stay what they were): next_sequence, catalog_at
//!   (i64), catalog_sequence, the catalog's JSON (flag, bytes), then
//!   counted lists of wordings (consent, version, record as `wordings`
//!   keeps it), events (sequence, record as `events` keeps it, without
//!   its link), idempotency keys (key, record) and links (sequence, link
//!   as `chain` keeps it). Numbers are LE; bytes and strings are a u32 LE
//!   length and the bytes.
//! - `2`, a signed checkpoint: its sequence and note.

use std::sync::{MutexGuard, PoisonError};

use super::codec::{decode_event, decode_idempotency, decode_wording, encode_event};
use super::codec::{encode_idempotency, encode_wording};
use super::log::Log;
use crate::audit::Link;
use crate::store::{StoreError, WriteBatch};

const BATCH: u8 = 1;
const CHECKPOINT: u8 = 2;

/// A record's content.
#[derive(Debug)]
pub(super) enum Entry {
    /// A group commit and its links.
    Batch(Box<WriteBatch>, Vec<Link>),
    /// A checkpoint kept without an fsync of its own.
    Checkpoint(u64, String),
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The record of a group commit.
pub(super) fn encode_batch(
    batch: &WriteBatch,
    catalog_json: Option<&[u8]>,
    links: &[Link],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + batch.events.len() * 160 + links.len() * 100);
    out.push(BATCH);
    put_u64(&mut out, batch.next_sequence);
    put_u64(&mut out, batch.catalog_at as u64);
    put_u64(&mut out, batch.catalog_sequence);
    match catalog_json {
        Some(json) => {
            out.push(1);
            put_bytes(&mut out, json);
        }
        None => out.push(0),
    }
    put_u64(&mut out, batch.wordings.len() as u64);
    for w in &batch.wordings {
        put_bytes(&mut out, w.consent.as_str().as_bytes());
        out.extend_from_slice(&w.version.to_le_bytes());
        put_bytes(&mut out, &encode_wording(w));
    }
    put_u64(&mut out, batch.events.len() as u64);
    let mut buf = Vec::with_capacity(256);
    for e in &batch.events {
        put_u64(&mut out, e.sequence);
        buf.clear();
        encode_event(e, None, &mut buf);
        put_bytes(&mut out, &buf);
    }
    put_u64(&mut out, batch.idempotency.len() as u64);
    for (key, r) in &batch.idempotency {
        put_bytes(&mut out, key.as_bytes());
        out.extend_from_slice(&encode_idempotency(r));
    }
    put_u64(&mut out, links.len() as u64);
    for l in links {
        put_u64(&mut out, l.sequence);
        put_bytes(&mut out, &super::chain::encode(l));
    }
    out
}

/// The record of a checkpoint note.
pub(super) fn encode_checkpoint(sequence: u64, note: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + note.len());
    out.push(CHECKPOINT);
    put_u64(&mut out, sequence);
    put_bytes(&mut out, note.as_bytes());
    out
}

/// Reads a record's bytes, refusing what does not read whole.
struct Reader<'a> {
    b: &'a [u8],
    number: u64,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str) -> StoreError {
        StoreError::corrupt("log", format!("record {}: {what}", self.number))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], StoreError> {
        if self.b.len() < n {
            return Err(self.bad(what));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, StoreError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, StoreError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], StoreError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    fn string(&mut self, what: &str) -> Result<String, StoreError> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad(what))
    }

    fn count(&mut self, what: &str) -> Result<usize, StoreError> {
        let n = self.u64(what)?;
        // Each item takes at least 4 bytes: a count past that is damage.
        if n > (self.b.len() / 4) as u64 {
            return Err(self.bad(what));
        }
        Ok(n as usize)
    }
}

/// A record's content, from its bytes.
pub(super) fn decode(number: u64, b: &[u8]) -> Result<Entry, StoreError> {
    let mut r = Reader { b, number };
    match r.u8("kind")? {
        BATCH => {}
        CHECKPOINT => {
            let sequence = r.u64("checkpoint sequence")?;
            let note = r.string("checkpoint note")?;
            return Ok(Entry::Checkpoint(sequence, note));
        }
        _ => return Err(r.bad("kind")),
    }
    let mut batch = WriteBatch {
        next_sequence: r.u64("next_sequence")?,
        catalog_at: r.u64("catalog_at")? as i64,
        catalog_sequence: r.u64("catalog_sequence")?,
        ..WriteBatch::default()
    };
    if r.u8("catalog flag")? == 1 {
        let json = r.bytes("catalog")?;
        batch.catalog =
            Some(serde_json::from_slice(json).map_err(|e| r.bad(&format!("catalog: {e}")))?);
    }
    for _ in 0..r.count("wordings")? {
        let consent = r.string("wording consent")?;
        let version = r.u32("wording version")?;
        batch
            .wordings
            .push(decode_wording(&consent, version, r.bytes("wording")?)?);
    }
    for _ in 0..r.count("events")? {
        let sequence = r.u64("event sequence")?;
        batch
            .events
            .push(decode_event(sequence, r.bytes("event")?)?);
    }
    for _ in 0..r.count("idempotency")? {
        let key = r.string("idempotency key")?;
        let record = decode_idempotency(r.take(48, "idempotency record")?)?;
        batch.idempotency.push((key, record));
    }
    let mut links = Vec::new();
    for _ in 0..r.count("links")? {
        let sequence = r.u64("link sequence")?;
        links.push(super::chain::decode(sequence, r.bytes("link")?)?);
    }
    if !r.b.is_empty() {
        return Err(r.bad("bytes past the end"));
    }
    Ok(Entry::Batch(Box::new(batch), links))
}

/// How a write transaction of the store is made durable: the one place
/// that keeps the log's order (the record durable first, then redb's
/// commit) and writes the number of the last record the state holds.
pub(super) enum Durable<'a> {
    /// A durable redb commit (fsync). With the log: it holds every record
    /// so far, and the log starts again.
    Fsync(Option<&'a mut Log>),
    /// No fsync: durable with the next durable commit (a checkpoint note
    /// in a store without a log), or already, by the log records of the
    /// groups it holds (the writer's held transaction, `held.rs`).
    Later,
    /// `record` appended to the log, fdatasync'd when `sync` (else the
    /// next record's fsync covers it), then a redb commit without fsync.
    Logged {
        log: &'a mut Log,
        record: Vec<u8>,
        sync: bool,
    },
    /// Replaying log record `n`: a redb commit without fsync (the replay
    /// ends with a durable one).
    Replay(u64),
}

/// Commits `txn` as `how` says, with `meta`'s `log` set to the last
/// record the state then holds.
pub(super) fn commit(mut txn: redb::WriteTransaction, how: Durable<'_>) -> Result<(), StoreError> {
    let held = match &how {
        Durable::Fsync(Some(log)) => Some(log.next_number() - 1),
        Durable::Replay(n) => Some(*n),
        // `log_group` sets it.
        Durable::Logged { .. } | Durable::Fsync(None) | Durable::Later => None,
    };
    if let Some(n) = held {
        txn.open_table(super::META)?
            .insert(super::LOG_KEY, n.to_le_bytes().as_slice())?;
    }
    if !matches!(how, Durable::Fsync(_)) {
        txn.set_durability(redb::Durability::None)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
    }
    match how {
        Durable::Logged { log, record, sync } => {
            // A failed append drops the transaction; a failed commit after
            // it leaves a durable record the state lacks: no later write
            // until a restart replays it.
            log_group(&txn, log, &record, sync)?;
            if let Err(e) = txn.commit() {
                log.poison();
                return Err(e.into());
            }
        }
        Durable::Fsync(Some(log)) => {
            txn.commit()?;
            log.checkpointed();
        }
        Durable::Fsync(None) | Durable::Later | Durable::Replay(_) => txn.commit()?,
    }
    Ok(())
}

/// Logs a group held in `txn`: `meta`'s `log` set to the number its
/// `record` gets, then the record appended (fdatasync'd when `sync`). The
/// group is durable once this returns; `txn` is not committed.
pub(super) fn log_group(
    txn: &redb::WriteTransaction,
    log: &mut Log,
    record: &[u8],
    sync: bool,
) -> Result<(), StoreError> {
    txn.open_table(super::META)?
        .insert(super::LOG_KEY, log.next_number().to_le_bytes().as_slice())?;
    log.append(record, sync)?;
    Ok(())
}

impl super::RedbStore {
    /// The log, when the store keeps one; refused once an append failed
    /// (the record it left may be whole on disk) or a commit after its
    /// records were logged did: no later commit may land before a restart
    /// replays or drops them (fail-stop).
    pub(super) fn log(&self) -> Result<Option<MutexGuard<'_, Log>>, StoreError> {
        let Some(m) = &self.log else {
            return Ok(None);
        };
        let log = m.lock().unwrap_or_else(PoisonError::into_inner);
        match log.broken() || self.held.failed() {
            true => Err(StoreError::Io(std::io::Error::other(
                "an append to the log, or the commit after it, failed: no write lands until a restart replays the log",
            ))),
            false => Ok(Some(log)),
        }
    }

    /// Keeps a signed checkpoint; without `sync`, durable with the next
    /// commit (with the log: its record goes in without an fsync, and the
    /// next record's covers it).
    pub(super) fn keep_checkpoint_in(
        &self,
        sequence: u64,
        note: &str,
        sync: bool,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut log = self.log()?;
        let how = match log.as_deref_mut() {
            Some(log) => {
                let record = encode_checkpoint(sequence, note);
                match !sync && log.fits(record.len()) {
                    true => Durable::Logged {
                        log,
                        record,
                        sync: false,
                    },
                    false => Durable::Fsync(Some(log)),
                }
            }
            None if sync => Durable::Fsync(None),
            None => Durable::Later,
        };
        super::chain::keep_checkpoint(&db, sequence, note, how)
    }

    /// Opens the log at `path` and commits again what its records hold
    /// past the state's own (`meta` `log`), then makes that durable and
    /// empties the file; returns the log, numbering on.
    pub(super) fn replay_log(&self, path: &std::path::Path) -> Result<Log, StoreError> {
        let started = std::time::Instant::now();
        let (mut log, records) = Log::open(path)?;
        let db = self.db()?;
        let held = stored_number(&db)?;
        let mut last = held;
        for (n, payload) in records {
            if n <= held {
                continue;
            }
            if n != last + 1 {
                return Err(StoreError::corrupt(
                    "log",
                    format!("record {n} follows {last}: records are missing"),
                ));
            }
            self.apply_record(&mut self.held.lock(), n, &payload)?;
            last = n;
        }
        log.number_from(last + 1);
        // From here on the log may hold what the file lacks.
        self.checkpoint(&db, &mut log, super::LOGGING_SCHEMA)?;
        if last > held {
            tracing::info!(
                records = last - held,
                seconds = started.elapsed().as_secs_f64(),
                "log replayed"
            );
        }
        // Nothing in the file is needed now, and nothing may stay of a
        // contact erased since it was written.
        log.scrub()?;
        Ok(log)
    }

    /// Commits again what log record `n` holds, without fsync: at open, or
    /// for the groups a failed group dropped with the writer's held
    /// transaction (`slot`, taken by the caller).
    pub(super) fn apply_record(
        &self,
        slot: &mut Option<super::held::Open>,
        n: u64,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        match decode(n, payload)? {
            Entry::Batch(batch, links) => self
                .commit_held(slot, &batch, None, Some((n, links)))
                .map(drop),
            Entry::Checkpoint(sequence, note) => {
                super::chain::keep_checkpoint(&*self.file()?, sequence, &note, Durable::Replay(n))
            }
        }
    }

    /// A durable redb commit: every logged commit so far is in the file,
    /// and the log starts again. `schema` says whether the log may hold
    /// commits the file lacks after it ([`super::LOGGING_SCHEMA`]: the
    /// store stays open) or not ([`super::SCHEMA_VERSION`]: a clean close).
    pub(super) fn checkpoint(
        &self,
        db: &redb::Database,
        log: &mut Log,
        schema: u32,
    ) -> Result<(), StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(super::META)?
            .insert("schema_version", schema.to_le_bytes().as_slice())?;
        commit(txn, Durable::Fsync(Some(log)))
    }
}

/// The number of the last log record the durable state holds (0: none).
fn stored_number(db: &redb::Database) -> Result<u64, StoreError> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let meta = txn.open_table(super::META)?;
    match meta.get(super::LOG_KEY)? {
        Some(v) => super::codec::u64_from(v.value()),
        None => Ok(0),
    }
}
