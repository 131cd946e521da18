//! The redb store's chain (DESIGN.md §11), linked inside the write
//! transaction of the commit or erasure it covers (one writer: the
//! transaction is the commit lock):
//!
//! - `chain`: sequence → kind (1 byte), salt flag (1 byte), the salt (16
//!   bytes, when the flag is 1), leaf (32), chain (32), body (the rest);
//! - `checkpoints`: sequence → the signed note;
//! - `meta` `chain_head`: the last sequence linked (u64 LE) ‖ its chain.

use std::collections::HashMap;

use redb::{ReadableTable, TableDefinition};

use super::codec::{decode_event, decode_wording, tombstone_erased_at};
use super::{CATALOG_FEED, CATALOGS, ERASURE_FEED, ERASURES, EVENTS, META, WORDINGS, open_if_any};
use crate::audit::{GENESIS, Held, Kind, Link, Linker, NO_SALT, link_batch, salts, wording_digest};
use crate::domain::CatalogSpec;
use crate::store::{StoreError, Tombstone, WriteBatch};

pub(super) const CHAIN: TableDefinition<u64, &[u8]> = TableDefinition::new("chain");
pub(super) const CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("checkpoints");
const HEAD: &str = "chain_head";

fn no_salt(e: getrandom::Error) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("no random salt: {e}")))
}

fn encode(l: &Link) -> Vec<u8> {
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

fn decode(sequence: u64, b: &[u8]) -> Result<Link, StoreError> {
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

/// Fills in the chain value of events read in `txn` (from the `chain`
/// table; none in a file without one).
pub(super) fn fill(
    txn: &redb::ReadTransaction,
    events: &mut [crate::domain::EventRecord],
) -> Result<(), StoreError> {
    let Some(chain) = open_if_any(txn, CHAIN)? else {
        return Ok(());
    };
    for e in events {
        if let Some(v) = chain.get(e.sequence)? {
            e.chain = Some(decode(e.sequence, v.value())?.chain);
        }
    }
    Ok(())
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

/// Links a batch's records (its wordings already written in `txn`).
pub(super) fn link_batch_in(
    txn: &redb::WriteTransaction,
    batch: &WriteBatch,
) -> Result<(), StoreError> {
    if batch.events.is_empty() && (batch.catalog.is_none() || batch.catalog_sequence == 0) {
        return Ok(());
    }
    let prev = head_in(txn)?;
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
    if let Some(e) = failed {
        return Err(e);
    }
    drop(wordings);
    append(txn, &links)
}

/// Links an erasure that deleted the records `erased` (their links stay,
/// without their salts).
pub(super) fn link_erasure_in(
    txn: &redb::WriteTransaction,
    t: &Tombstone,
    erased: &[u64],
) -> Result<(), StoreError> {
    let salt = salts(1).map_err(no_salt)?[0];
    let prev = head_in(txn)?;
    {
        let mut chain = txn.open_table(CHAIN)?;
        for &s in erased {
            let link = match chain.get(s)? {
                Some(v) => decode(s, v.value())?,
                None => continue,
            };
            chain.insert(s, encode(&Link { salt: None, ..link }).as_slice())?;
        }
    }
    let mut linker = Linker::from(prev);
    linker.erasure(t.sequence, &t.hash, t.erased_at, &t.reason, erased, salt);
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

/// Up to `limit` links after `after`, each with its record as held.
pub(super) fn links_after(
    txn: &redb::ReadTransaction,
    after: u64,
    limit: usize,
) -> Result<Vec<(Link, Held)>, StoreError> {
    let Some(chain) = open_if_any(txn, CHAIN)? else {
        return Ok(Vec::new());
    };
    let events = txn.open_table(EVENTS)?;
    let catalogs = open_if_any(txn, CATALOGS)?;
    let mut out = Vec::new();
    for row in chain.range(after.saturating_add(1)..)?.take(limit) {
        let (k, v) = row?;
        let link = decode(k.value(), v.value())?;
        let held = match link.kind {
            Kind::Event => match events.get(link.sequence)? {
                Some(v) => match decode_event(link.sequence, v.value()) {
                    Ok(e) => Held::Event(Box::new(e)),
                    Err(e) => Held::Unreadable(e.to_string()),
                },
                None => Held::Missing,
            },
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
    Ok(out)
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
    let mut others: std::collections::BTreeMap<u64, Other> = Default::default();
    {
        let erasures = txn.open_table(ERASURES)?;
        for row in txn.open_table(ERASURE_FEED)?.range::<u64>(..)? {
            let (k, v) = row?;
            if let Some(t) = erasures.get(v.value())? {
                let b = t.value();
                let reason = String::from_utf8_lossy(&b[8..]).into_owned();
                others.insert(
                    k.value(),
                    Other::Erasure(*v.value(), tombstone_erased_at(b)?, reason),
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
            others.insert(*sequence, Other::Catalog(*at, Box::new(spec)));
        }
    }
    let mut linker = Linker::from(GENESIS);
    let mut n = 0u64;
    {
        let events = txn.open_table(EVENTS)?;
        let mut rows = events.range::<u64>(..)?.peekable();
        loop {
            let next_event = match rows.peek() {
                Some(Ok((k, _))) => Some(k.value()),
                Some(Err(_)) => {
                    return Err(rows.next().expect("peeked").err().expect("err").into());
                }
                None => None,
            };
            let next_other = others.first_key_value().map(|(s, _)| *s);
            match (next_event, next_other) {
                (Some(e), o) if o.is_none_or(|o| e < o) => {
                    let (k, v) = rows.next().expect("peeked")?;
                    let event = decode_event(k.value(), v.value())?;
                    let d = digests
                        .get(&(event.consent.as_str().to_owned(), event.version))
                        .copied()
                        .unwrap_or([0; 32]);
                    linker.event(&event, &d, NO_SALT);
                }
                (Some(_), None) => unreachable!("taken by the first arm"),
                (_, Some(_)) => {
                    let (sequence, other) = others.pop_first().expect("peeked");
                    match other {
                        Other::Erasure(hash, at, reason) => {
                            linker.erasure(sequence, &hash, at, &reason, &[], NO_SALT)
                        }
                        Other::Catalog(at, spec) => linker.catalog(sequence, at, &spec, NO_SALT),
                    }
                }
                (None, None) => break,
            }
            n += 1;
            if n % 10_000 == 0 {
                put_links(txn, &linker.take())?;
            }
        }
    }
    let last = linker.last();
    put_links(txn, &linker.finish())?;
    tracing::info!(
        records = n,
        seconds = started.elapsed().as_secs_f64(),
        "data file migrated to schema 3 (hash chain over every record)"
    );
    Ok(last)
}

enum Other {
    Erasure([u8; 32], i64, String),
    Catalog(i64, Box<CatalogSpec>),
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
