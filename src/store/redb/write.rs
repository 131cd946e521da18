//! The write side of the redb store: a group commit, an erasure, pruning
//! idempotency keys. Each is one transaction, durable before it returns
//! (`logged::commit`); only the writer thread calls them.

use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata};

use super::held::{HELD_GROUPS, Open};
use super::log::Log;
use super::logged::{self, Durable};
use super::{
    CATALOG_FEED, CATALOGS, CONTACTS, ERASURE_FEED, ERASURES, EVENTS, HISTORY, IDEMPOTENCY,
    IDEMPOTENCY_BY_TIME, META, REWRITE_PENDING, RedbStore, WORDINGS, read_contact,
};
use crate::audit::Link;
use crate::domain::UnixNanos;
use crate::store::redb::codec::{
    ContactRecord, decode_idempotency, decode_linked_event, encode_event, encode_idempotency,
    encode_tombstone, encode_wording, state_to,
};
use crate::store::{CommitPhases, StoreError, Tombstone, WriteBatch};

impl RedbStore {
    /// Writes `batch` durably (its log record fsync'd, or a durable redb
    /// commit: `log.rs`); returns how long its inserts and its commit
    /// (record or pages written, fsync) took.
    pub(super) fn commit_in(&self, batch: &WriteBatch) -> Result<CommitPhases, StoreError> {
        let mut log = self.log()?;
        self.commit_batch(batch, log.as_deref_mut(), None)
    }

    /// Writes `batch` in the writer's transaction: through `log` when there
    /// is one and its record fits, the transaction then held open for the
    /// next groups (`held.rs`), else a durable redb commit of all it holds;
    /// or, replaying log record `n`, with the links it holds and without
    /// fsync.
    pub(super) fn commit_batch(
        &self,
        batch: &WriteBatch,
        log: Option<&mut Log>,
        replay: Option<(u64, Vec<Link>)>,
    ) -> Result<CommitPhases, StoreError> {
        // Taken for the whole group: a reader waits for it, then commits.
        let mut slot = self.held.lock();
        let r = self.commit_held(&mut slot, batch, log, replay);
        self.held.mark(&slot);
        r
    }

    /// `commit_batch` in the held transaction's `slot`.
    pub(super) fn commit_held(
        &self,
        slot: &mut Option<Open>,
        batch: &WriteBatch,
        log: Option<&mut Log>,
        replay: Option<(u64, Vec<Link>)>,
    ) -> Result<CommitPhases, StoreError> {
        let (txn, mut records) = match slot.take() {
            Some(open) => (open.txn, open.records),
            None => (self.file()?.begin_write()?, Vec::new()),
        };
        let r = self.group(slot, txn, &mut records, batch, log, replay);
        if r.is_err() && !records.is_empty() {
            // The failure dropped the transaction, and with it the groups
            // held before this one, which were acknowledged: they go into
            // the file again from their records (the log holds them too).
            self.restore(slot, std::mem::take(&mut records));
        }
        r
    }

    /// Commits again, from their log records, the groups a failure
    /// dropped; should that fail too, no write lands until a restart
    /// replays the log.
    fn restore(&self, slot: &mut Option<Open>, records: Vec<(u64, Vec<u8>)>) {
        for (n, payload) in records {
            if let Err(e) = self.apply_record(slot, n, &payload) {
                tracing::error!(error = %e, record = n, "acknowledged groups could not be committed again: no write lands until a restart replays the log");
                self.held.fail();
                return;
            }
        }
    }

    /// One group in `txn`, after the groups of `records` it holds.
    fn group(
        &self,
        slot: &mut Option<Open>,
        txn: redb::WriteTransaction,
        records: &mut Vec<(u64, Vec<u8>)>,
        batch: &WriteBatch,
        log: Option<&mut Log>,
        replay: Option<(u64, Vec<Link>)>,
    ) -> Result<CommitPhases, StoreError> {
        let started = std::time::Instant::now();
        // How it is made durable, decided once the record is known.
        let how;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(
                "next_sequence",
                batch.next_sequence.to_le_bytes().as_slice(),
            )?;
            let mut catalog_json = None;
            if let Some(catalog) = &batch.catalog {
                let json = serde_json::to_vec(catalog).map_err(|e| StoreError::Corrupt {
                    table: "meta",
                    what: format!("catalog: {e}"),
                })?;
                meta.insert("catalog", json.as_slice())?;
                txn.open_table(CATALOGS)?
                    .insert(batch.catalog_at, json.as_slice())?;
                if batch.catalog_sequence > 0 {
                    let mut feed = txn.open_table(CATALOG_FEED)?;
                    let ordinal = feed.len()? + 1;
                    feed.insert(batch.catalog_sequence, ordinal)?;
                }
                catalog_json = Some(json);
            }
            if !batch.wordings.is_empty() {
                let mut wordings = txn.open_table(WORDINGS)?;
                for w in &batch.wordings {
                    let key = (w.consent.as_str(), w.version);
                    wordings.insert(key, encode_wording(w).as_slice())?;
                }
            }
            // The links, before the events: an event's link is kept in its
            // own record (one B-tree insert per event, not two).
            let (links, replayed) = match replay {
                Some((n, links)) => (links, Some(n)),
                None if self.chained => (super::chain::links_for(&txn, &meta, batch)?, None),
                None => (Vec::new(), None),
            };
            how = match (replayed, log) {
                (Some(n), _) => Durable::Replay(n),
                (None, Some(log)) => {
                    let record = logged::encode_batch(batch, catalog_json.as_deref(), &links);
                    match log.fits(record.len()) {
                        true => Durable::Logged {
                            log,
                            record,
                            sync: true,
                        },
                        false => Durable::Fsync(Some(log)),
                    }
                }
                (None, None) => Durable::Fsync(None),
            };
            let mut event_links = links.iter().filter(|l| l.kind == crate::audit::Kind::Event);
            let mut events = txn.open_table(EVENTS)?;
            let mut contacts = txn.open_table(CONTACTS)?;
            let mut history = txn.open_table(HISTORY)?;
            let mut buf = Vec::with_capacity(256);
            // Events of one contact are often adjacent in a batch: keep its
            // record in hand until the contact changes.
            let mut open: Option<(&str, ContactRecord)> = None;
            for e in &batch.events {
                buf.clear();
                encode_event(e, event_links.next(), &mut buf);
                events.insert(e.sequence, buf.as_slice())?;
                let contact = e.contact.as_str();
                history.insert((contact, e.sequence), ())?;
                if open.as_ref().is_none_or(|(c, _)| *c != contact) {
                    if let Some((c, r)) = open.take() {
                        contacts.insert(c, r.encode_to_vec().as_slice())?;
                    }
                    let r = read_contact(&contacts, contact)?.unwrap_or_default();
                    open = Some((contact, r));
                }
                let (_, record) = open.as_mut().expect("opened above");
                record.follow_pending(e);
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
            super::chain::finish(&txn, &mut meta, &links)?;
        }
        let written = std::time::Instant::now();
        match how {
            Durable::Logged { log, record, sync } => {
                self.hold(slot, txn, records, log, record, sync)?;
            }
            how => logged::commit(txn, how)?,
        }
        Ok(CommitPhases {
            write: written - started,
            commit: written.elapsed(),
            ..CommitPhases::default()
        })
    }

    /// Logs the group `txn` holds after the groups of `records`; keeps
    /// `txn` open in `slot` for the next, or commits it, without fsync,
    /// once it holds [`HELD_GROUPS`]. On failure `records` holds the
    /// groups before this one, which the caller commits again.
    fn hold(
        &self,
        slot: &mut Option<Open>,
        txn: redb::WriteTransaction,
        records: &mut Vec<(u64, Vec<u8>)>,
        log: &mut Log,
        record: Vec<u8>,
        sync: bool,
    ) -> Result<(), StoreError> {
        let number = log.next_number();
        logged::log_group(&txn, log, &record, sync)?;
        if records.len() + 1 < HELD_GROUPS {
            records.push((number, record));
            let records = std::mem::take(records);
            *slot = Some(Open { txn, records });
            return Ok(());
        }
        // Without fsync: the records are durable. Should it fail, this
        // group's record is durable and the file lacks it: no later write
        // until a restart replays it.
        logged::commit(txn, Durable::Later).inspect_err(|_| log.poison())?;
        records.clear();
        Ok(())
    }

    pub(super) fn adopt_in(
        &self,
        erasure_key: &[u8; 32],
        tombstones: &[Tombstone],
    ) -> Result<(), StoreError> {
        let mut log = self.log()?;
        let txn = self.db()?.begin_write()?;
        {
            txn.open_table(META)?
                .insert("erasure_key", erasure_key.as_slice())?;
            let mut erasures = txn.open_table(ERASURES)?;
            let mut feed = txn.open_table(ERASURE_FEED)?;
            for t in tombstones {
                let value = encode_tombstone(t.erased_at, &t.reason);
                erasures.insert(&t.hash, value.as_slice())?;
                if t.sequence > 0 {
                    feed.insert(t.sequence, &t.hash)?;
                }
            }
        }
        logged::commit(txn, Durable::Fsync(log.as_deref_mut()))
    }

    pub(super) fn prune_in(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError> {
        let mut log = self.log()?;
        let txn = self.db()?.begin_write()?;
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
            logged::commit(txn, Durable::Fsync(log.as_deref_mut()))?;
        } else {
            txn.abort()?;
        }
        Ok(n)
    }

    pub(super) fn erase_in(
        &self,
        contact: &str,
        tombstone: &Tombstone,
    ) -> Result<bool, StoreError> {
        let mut log = self.log()?;
        let txn = self.db()?.begin_write()?;
        let held;
        let mut erased = Vec::new();
        {
            let mut contacts = txn.open_table(CONTACTS)?;
            held = contacts.remove(contact)?.is_some();
            let mut history = txn.open_table(HISTORY)?;
            let sequences: Vec<u64> = history
                .range((contact, 0)..=(contact, u64::MAX))?
                .map(|row| row.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            {
                let mut events = txn.open_table(EVENTS)?;
                let mut idem = txn.open_table(IDEMPOTENCY)?;
                for &sequence in &sequences {
                    history.remove((contact, sequence))?;
                    let key = match events.remove(sequence)? {
                        Some(v) => {
                            // Its link stays, without its salt.
                            let (event, link) = decode_linked_event(sequence, v.value())?;
                            erased.push((sequence, link));
                            event.idempotency_key
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
            }
            let value = encode_tombstone(tombstone.erased_at, &tombstone.reason);
            txn.open_table(ERASURES)?
                .insert(&tombstone.hash, value.as_slice())?;
            if tombstone.sequence > 0 {
                // Its place in the feed, and the counter past it (an
                // erasure may be the last record before a restart).
                txn.open_table(ERASURE_FEED)?
                    .insert(tombstone.sequence, &tombstone.hash)?;
                let mut meta = txn.open_table(META)?;
                let next = match meta.get("next_sequence")? {
                    Some(v) => u64::from_le_bytes(
                        v.value()
                            .try_into()
                            .map_err(|_| StoreError::corrupt("meta", "next_sequence length"))?,
                    ),
                    None => 1,
                };
                if next <= tombstone.sequence {
                    let after = tombstone.sequence + 1;
                    meta.insert("next_sequence", after.to_le_bytes().as_slice())?;
                }
            }
            txn.open_table(META)?
                .insert(REWRITE_PENDING, [1u8].as_slice())?;
        }
        super::chain::link_erasure_in(&txn, tombstone, erased)?;
        logged::commit(txn, Durable::Fsync(log.as_deref_mut()))?;
        // Every record so far is durable in the file now, and the erased
        // contact's must not stay in the log.
        if let Some(log) = log.as_deref_mut() {
            log.scrub()?;
        }
        Ok(held)
    }
}
