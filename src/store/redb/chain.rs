//! The redb store's chain (DESIGN.md §11), linked inside the write
//! transaction of the commit or erasure it covers (one writer: the
//! transaction is the commit lock):
//!
//! - an event's link is kept in the event's own record (`events`: salt,
//!   leaf, chain), so linking costs an event no second B-tree insert;
//! - `chain`: the links of everything else, by sequence: catalog applies,
//!   erasures, and the events an erasure deleted (their salts gone): kind
//!   (1 byte), salt flag (1 byte), the salt (16 bytes, when the flag is 1),
//!   leaf (32), chain (32), body (the rest);
//! - `checkpoints`: sequence → the signed note;
//! - `meta` `chain_head`: the last sequence linked (u64 LE) ‖ its chain.

use std::collections::HashMap;

use redb::{ReadableTable, TableDefinition};

use super::codec::{
    decode_event, decode_linked_event, decode_wording, encode_event, tombstone_erased_at,
};
use super::{CATALOG_FEED, CATALOGS, ERASURE_FEED, ERASURES, EVENTS, META, WORDINGS, open_if_any};
use crate::audit::{
    GENESIS, Held, Kind, Link, Linker, NO_SALT, Prior, link_batch, salts, wording_digest,
};
use crate::domain::{CatalogSpec, EventRecord};
use crate::store::{StoreError, Tombstone, WriteBatch};

pub(super) const CHAIN: TableDefinition<u64, &[u8]> = TableDefinition::new("chain");
pub(super) const CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("checkpoints");
const HEAD: &str = "chain_head";

fn no_salt(e: getrandom::Error) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("no random salt: {e}")))
}

pub(super) fn encode(l: &Link) -> Vec<u8> {
    let mut v = Vec::with_capacity(82 + l.body.len());
    v.push(l.kind as u8);
    match l.salt {
        Some(salt) => {
            v.push(1);
            v.extend_from_slice(&salt);
        }
        None => v.push(0),
    }
    v.extend_from_slice(&l.leaf);
    v.extend_from_slice(&l.chain);
    v.extend_from_slice(&l.body);
    v
}

pub(super) fn decode(sequence: u64, b: &[u8]) -> Result<Link, StoreError> {
    let bad = || StoreError::corrupt("chain", format!("the link at {sequence}"));
    let kind = Kind::from_u8(*b.first().ok_or_else(bad)?).ok_or_else(bad)?;
    let (salt, rest) = match b.get(1) {
        Some(1) => (
            Some(b.get(2..18).ok_or_else(bad)?.try_into().expect("16")),
            &b[18..],
        ),
        Some(0) => (None, &b[2..]),
        _ => return Err(bad()),
    };
    let leaf = rest.get(..32).ok_or_else(bad)?.try_into().expect("32");
    let chain = rest.get(32..64).ok_or_else(bad)?.try_into().expect("32");
    Ok(Link {
        sequence,
        kind,
        salt,
        leaf,
        chain,
        body: rest[64..].to_vec(),
    })
}

/// The chain's head as `meta` keeps it.
pub(super) fn head(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    let Some(v) = meta.get(HEAD)? else {
        return Ok(None);
    };
    let v = v.value();
    if v.len() != 40 {
        return Err(StoreError::corrupt("meta", "chain_head length"));
    }
    let seq = u64::from_le_bytes(v[..8].try_into().expect("8"));
    Ok(Some((seq, v[8..].try_into().expect("32"))))
}

/// Writes links (the head is left as it is).
fn put_links(txn: &redb::WriteTransaction, links: &[Link]) -> Result<(), StoreError> {
    let mut chain = txn.open_table(CHAIN)?;
    for l in links {
        chain.insert(l.sequence, encode(l).as_slice())?;
    }
    Ok(())
}

/// Moves the head to (`sequence`, `chain`).
pub(super) fn set_head(
    meta: &mut redb::Table<&'static str, &'static [u8]>,
    sequence: u64,
    chain: &[u8; 32],
) -> Result<(), StoreError> {
    let mut head = sequence.to_le_bytes().to_vec();
    head.extend_from_slice(chain);
    meta.insert(HEAD, head.as_slice())?;
    Ok(())
}

/// Writes links and moves the head past the last (`meta` must not be open).
fn append(txn: &redb::WriteTransaction, links: &[Link]) -> Result<(), StoreError> {
    let Some(last) = links.last() else {
        return Ok(());
    };
    put_links(txn, links)?;
    set_head(&mut txn.open_table(META)?, last.sequence, &last.chain)
}

fn head_in(txn: &redb::WriteTransaction) -> Result<[u8; 32], StoreError> {
    Ok(head(&txn.open_table(META)?)?.map_or(GENESIS, |(_, c)| c))
}

/// The links of a batch's records, from the head `meta` holds (its
/// wordings already written in `txn`); nothing is written yet.
pub(super) fn links_for(
    txn: &redb::WriteTransaction,
    meta: &redb::Table<&'static str, &'static [u8]>,
    batch: &WriteBatch,
) -> Result<Vec<Link>, StoreError> {
    if batch.events.is_empty() && (batch.catalog.is_none() || batch.catalog_sequence == 0) {
        return Ok(Vec::new());
    }
    let prev = head(meta)?.map_or(GENESIS, |(_, c)| c);
    let wordings = txn.open_table(WORDINGS)?;
    let mut digests: HashMap<(String, u32), [u8; 32]> = HashMap::new();
    let mut failed = None;
    let (links, _) = link_batch(prev, batch, &mut |consent, version| {
        if let Some(d) = digests.get(&(consent.to_owned(), version)) {
            return *d;
        }
        let d = match wordings.get((consent, version)) {
            Ok(Some(v)) => match decode_wording(consent, version, v.value()) {
                Ok(w) => wording_digest(&w),
                Err(e) => {
                    failed = Some(e);
                    [0; 32]
                }
            },
            Ok(None) => [0; 32],
            Err(e) => {
                failed = Some(e.into());
                [0; 32]
            }
        };
        digests.insert((consent.to_owned(), version), d);
        d
    })
    .map_err(no_salt)?;
    match failed {
        Some(e) => Err(e),
        None => Ok(links),
    }
}

/// Keeps the links that are not an event's own (a catalog apply) and
/// moves the head past the last.
pub(super) fn finish(
    txn: &redb::WriteTransaction,
    meta: &mut redb::Table<&'static str, &'static [u8]>,
    links: &[Link],
) -> Result<(), StoreError> {
    let Some(last) = links.last() else {
        return Ok(());
    };
    let others: Vec<Link> = links
        .iter()
        .filter(|l| l.kind != Kind::Event)
        .cloned()
        .collect();
    put_links(txn, &others)?;
    set_head(meta, last.sequence, &last.chain)
}

/// Keeps the links of the events an erasure deleted, without their
/// salts, and links the erasure (when it takes a sequence).
pub(super) fn link_erasure_in(
    txn: &redb::WriteTransaction,
    t: &Tombstone,
    erased: Vec<(u64, Option<Link>)>,
) -> Result<(), StoreError> {
    let sequences: Vec<u64> = erased.iter().map(|(s, _)| *s).collect();
    let kept: Vec<Link> = erased
        .into_iter()
        .filter_map(|(_, l)| l)
        .map(|l| Link { salt: None, ..l })
        .collect();
    put_links(txn, &kept)?;
    if t.sequence == 0 {
        return Ok(());
    }
    let salt = salts(1).map_err(no_salt)?[0];
    let prev = head_in(txn)?;
    let mut linker = Linker::from(prev);
    linker.erasure(
        t.sequence,
        &t.hash,
        t.erased_at,
        &t.reason,
        &sequences,
        salt,
    );
    append(txn, &linker.finish())
}

fn catalog_at(
    catalogs: &impl ReadableTable<i64, &'static [u8]>,
    at: i64,
) -> Result<Option<CatalogSpec>, StoreError> {
    catalogs
        .get(at)?
        .map(|v| {
            serde_json::from_slice(v.value())
                .map_err(|e| StoreError::corrupt("catalogs", format!("catalog: {e}")))
        })
        .transpose()
}

/// Up to `limit` links after `after`, each with its record as held: the
/// events' own links and the `chain` table's, merged by sequence.
pub(super) fn links_after(
    txn: &redb::ReadTransaction,
    after: u64,
    limit: usize,
) -> Result<Vec<(Link, Held)>, StoreError> {
    let events = txn.open_table(EVENTS)?;
    let chain = open_if_any(txn, CHAIN)?;
    let catalogs = open_if_any(txn, CATALOGS)?;
    let from = after.saturating_add(1);
    let mut rows = events.range(from..)?.peekable();
    let mut others = match &chain {
        Some(c) => Some(c.range(from..)?.peekable()),
        None => None,
    };
    let mut out = Vec::new();
    while out.len() < limit {
        let next_event = match rows.peek() {
            Some(Ok((k, _))) => Some(k.value()),
            Some(Err(_)) => {
                return Err(rows.next().expect("peeked").err().expect("an error").into());
            }
            None => None,
        };
        let next_other = match others.as_mut().and_then(|o| o.peek()) {
            Some(Ok((k, _))) => Some(k.value()),
            Some(Err(_)) => {
                let o = others.as_mut().expect("peeked");
                return Err(o.next().expect("peeked").err().expect("an error").into());
            }
            None => None,
        };
        let event_first = match (next_event, next_other) {
            (None, None) => break,
            (Some(e), Some(o)) => e < o,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if event_first {
            let (k, v) = rows.next().expect("peeked")?;
            let sequence = k.value();
            out.push(match decode_linked_event(sequence, v.value()) {
                Ok((e, Some(link))) => (link, Held::Event(Box::new(e))),
                Ok((_, None)) => (
                    unlinked(sequence),
                    Held::Unreadable("the event's link is missing from its record".into()),
                ),
                Err(e) => (unlinked(sequence), Held::Unreadable(e.to_string())),
            });
        } else {
            let o = others.as_mut().expect("peeked");
            let (k, v) = o.next().expect("peeked")?;
            let link = decode(k.value(), v.value())?;
            let held = match link.kind {
                // An event's link in this table: the event was erased.
                Kind::Event => Held::Missing,
                Kind::Erasure => Held::Erasure,
                Kind::Catalog => {
                    let at = link.body.as_slice().try_into().map(i64::from_be_bytes);
                    match (&catalogs, at) {
                        (Some(t), Ok(at)) => match catalog_at(t, at) {
                            Ok(c) => c.map_or(Held::Missing, |c| Held::Catalog(at, Box::new(c))),
                            Err(e) => Held::Unreadable(e.to_string()),
                        },
                        _ => Held::Missing,
                    }
                }
            };
            out.push((link, held));
        }
    }
    Ok(out)
}

/// The link shown for an event whose own link cannot be read.
fn unlinked(sequence: u64) -> Link {
    Link {
        sequence,
        kind: Kind::Event,
        salt: None,
        leaf: [0; 32],
        chain: [0; 32],
        body: Vec::new(),
    }
}

/// Schema 2 → 3: links every record on file, in sequence order, with no
/// salt (they were committed without one). Erasures from before link with
/// their tombstone as it stands and no list of what they erased (their
/// records are gone from the chain too). One transaction.
pub(super) fn migrate_2_to_3(
    txn: &redb::WriteTransaction,
) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    let started = std::time::Instant::now();
    let mut digests = HashMap::new();
    for row in txn.open_table(WORDINGS)?.range::<(&str, u32)>(..)? {
        let (k, v) = row?;
        let (consent, version) = k.value();
        let w = decode_wording(consent, version, v.value())?;
        digests.insert((consent.to_owned(), version), wording_digest(&w));
    }
    // Records other than events, by sequence.
    let mut others: std::collections::BTreeMap<u64, Prior> = Default::default();
    {
        let erasures = txn.open_table(ERASURES)?;
        for row in txn.open_table(ERASURE_FEED)?.range::<u64>(..)? {
            let (k, v) = row?;
            if let Some(t) = erasures.get(v.value())? {
                let b = t.value();
                let reason = String::from_utf8_lossy(&b[8..]).into_owned();
                others.insert(
                    k.value(),
                    Prior::Erasure(*v.value(), tombstone_erased_at(b)?, reason),
                );
            }
        }
        // Feed entries came with the newest catalogs: pair them from the end.
        let feed: Vec<u64> = txn
            .open_table(CATALOG_FEED)?
            .range::<u64>(..)?
            .map(|r| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        let kept: Vec<(i64, Vec<u8>)> = txn
            .open_table(CATALOGS)?
            .range::<i64>(..)?
            .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()?;
        for (sequence, (at, json)) in feed.iter().rev().zip(kept.iter().rev()) {
            let spec: CatalogSpec = serde_json::from_slice(json)
                .map_err(|e| StoreError::corrupt("catalogs", format!("catalog: {e}")))?;
            others.insert(*sequence, Prior::Catalog(*at, Box::new(spec)));
        }
    }
    let mut linker = Linker::from(GENESIS);
    let (mut n, mut after) = (0u64, 0u64);
    loop {
        let page: Vec<EventRecord> = txn
            .open_table(EVENTS)?
            .range(after.saturating_add(1)..)?
            .take(10_000)
            .map(|r| {
                let (k, v) = r?;
                decode_event(k.value(), v.value())
            })
            .collect::<Result<_, StoreError>>()?;
        let last_page = page.is_empty();
        for e in &page {
            while let Some(entry) = others.first_entry().filter(|o| *o.key() < e.sequence) {
                let (sequence, other) = entry.remove_entry();
                other.link(&mut linker, sequence);
                n += 1;
            }
            let d = digests
                .get(&(e.consent.as_str().to_owned(), e.version))
                .copied()
                .unwrap_or([0; 32]);
            linker.event(e, &d, NO_SALT);
            after = e.sequence;
            n += 1;
        }
        if last_page {
            while let Some((sequence, other)) = others.pop_first() {
                other.link(&mut linker, sequence);
                n += 1;
            }
        }
        let links = linker.take();
        {
            let mut events = txn.open_table(EVENTS)?;
            let mut buf = Vec::new();
            let mut page = page.iter();
            for l in links.iter().filter(|l| l.kind == Kind::Event) {
                let e = page.next().expect("one link per event, in order");
                buf.clear();
                encode_event(e, Some(l), &mut buf);
                events.insert(e.sequence, buf.as_slice())?;
            }
        }
        let others: Vec<Link> = links
            .into_iter()
            .filter(|l| l.kind != Kind::Event)
            .collect();
        put_links(txn, &others)?;
        if last_page {
            break;
        }
    }
    let last = linker.last();
    tracing::info!(
        records = n,
        seconds = started.elapsed().as_secs_f64(),
        "data file migrated to schema 3 (hash chain over every record)"
    );
    Ok(last)
}

/// Up to `limit` checkpoints after `after`.
pub(super) fn checkpoints(
    txn: &redb::ReadTransaction,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, String)>, StoreError> {
    let Some(t) = open_if_any(txn, CHECKPOINTS)? else {
        return Ok(Vec::new());
    };
    t.range(after.saturating_add(1)..)?
        .take(limit)
        .map(|r| {
            let (k, v) = r?;
            Ok((k.value(), v.value().to_owned()))
        })
        .collect()
}

/// Keeps a checkpoint (the first kept at a sequence stays), durable as
/// `how` says.
pub(super) fn keep_checkpoint(
    db: &redb::Database,
    sequence: u64,
    note: &str,
    how: super::logged::Durable<'_>,
) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(CHECKPOINTS)?;
        if t.get(sequence)?.is_none() {
            t.insert(sequence, note)?;
        }
    }
    super::logged::commit(txn, how)
}

/// What only the benchmarks ask of the store.
impl super::RedbStore {
    /// Bytes of records stored in the file (redb's own count, without free
    /// or preallocated space): what the size benchmarks compare.
    #[doc(hidden)]
    pub fn stored_bytes(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_write()?;
        let stats = txn.stats()?;
        let bytes = stats.stored_bytes() + stats.metadata_bytes();
        txn.abort()?;
        Ok(bytes)
    }

    /// The same store committing without the hash chain: only for the
    /// benchmark that measures what the chain costs (`benches/audit.rs`).
    /// Such a store does not verify; consentd never opens one this way.
    #[doc(hidden)]
    pub fn without_chain_for_bench(mut self) -> Self {
        self.chained = false;
        self
    }
}
