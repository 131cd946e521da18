//! The PostgreSQL store's chain (DESIGN.md §11): linked inside the commit's
//! transaction, under the `meta` row's lock, so several nodes extend one
//! chain in sequence order. An event's link (salt, leaf, chain) is kept in
//! its own row (`events.link_*`: no second insert per event);
//! `consentd.chain` keeps (sequence, kind, salt, leaf, chain, body) of
//! catalog applies, erasures and erased events; `meta.chain_sequence` /
//! `meta.chain_head` the head, `consentd.checkpoints` the signed notes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deadpool_postgres::GenericClient;
use tokio_postgres::types::{Json, ToSql};

use super::PgStore;
use super::decode::{EVENT_COLUMNS, backend, event_from, pg, pool_error, u64_of, wording_from};
use crate::audit::{
    GENESIS, Held, Kind, Link, Linker, NO_SALT, Prior, link_batch, salts, wording_digest,
};
use crate::domain::CatalogSpec;
use crate::store::{StoreError, Tombstone, WriteBatch};

/// Digests of the wordings events name, by (consent, version): wordings
/// never change once kept, so each is read once per process.
pub(super) type Digests = Arc<Mutex<HashMap<(String, u32), [u8; 32]>>>;

fn no_salt(e: getrandom::Error) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("no random salt: {e}")))
}

/// The head as the locked `meta` row gave it.
pub(super) fn head_of(chain: Option<Vec<u8>>) -> Result<[u8; 32], StoreError> {
    match chain {
        None => Ok(GENESIS),
        Some(v) => v
            .try_into()
            .map_err(|_| StoreError::corrupt("meta", "chain_head length")),
    }
}

/// The links of a batch, from `head`; the digests of wordings not yet
/// known are read in the transaction (rare: a wording new to this process).
pub(super) async fn link(
    txn: &deadpool_postgres::Transaction<'_>,
    digests: &Digests,
    head: [u8; 32],
    batch: &WriteBatch,
) -> Result<Vec<Link>, StoreError> {
    let missing: Vec<(String, u32)> = {
        let known = digests.lock().unwrap_or_else(|p| p.into_inner());
        let mut m: Vec<(String, u32)> = batch
            .events
            .iter()
            .filter(|e| e.version > 0)
            .map(|e| (e.consent.as_str().to_owned(), e.version))
            .filter(|k| !known.contains_key(k))
            .collect();
        m.sort();
        m.dedup();
        m
    };
    let mut found = HashMap::new();
    for (consent, version) in missing {
        let row = txn
            .query_opt(
                "SELECT * FROM consentd.wordings WHERE consent = $1 AND version = $2",
                &[&consent, &(version as i32)],
            )
            .await
            .map_err(|e| pg(e, false))?;
        let digest = match row {
            Some(row) => Some(wording_digest(&wording_from(&row)?)),
            // Written by this very batch.
            None => batch
                .wordings
                .iter()
                .find(|w| w.consent.as_str() == consent && w.version == version)
                .map(wording_digest),
        };
        found.insert((consent, version), digest.unwrap_or([0; 32]));
    }
    let mut known = digests.lock().unwrap_or_else(|p| p.into_inner());
    known.extend(found);
    let (links, _) = link_batch(head, batch, &mut |consent, version| {
        known
            .get(&(consent.to_owned(), version))
            .copied()
            .unwrap_or([0; 32])
    })
    .map_err(no_salt)?;
    Ok(links)
}

/// The links of a batch's events, aligned with its event rows (none: the
/// chain is off, or the row came before it).
#[derive(Default)]
pub(super) struct EventLinks<'a> {
    pub(super) salt: Vec<Option<&'a [u8]>>,
    pub(super) leaf: Vec<Option<&'a [u8]>>,
    pub(super) chain: Vec<Option<&'a [u8]>>,
}

impl<'a> EventLinks<'a> {
    /// The links of the events numbered `sequences` (ascending), out of
    /// `links` (ascending).
    pub(super) fn of(sequences: &[i64], links: &'a [Link]) -> EventLinks<'a> {
        let mut events = links.iter().filter(|l| l.kind == Kind::Event).peekable();
        let mut c = EventLinks::default();
        for &s in sequences {
            while events.next_if(|l| (l.sequence as i64) < s).is_some() {}
            let l = events.next_if(|l| l.sequence as i64 == s);
            c.salt.push(l.and_then(|l| l.salt.as_ref().map(|s| &s[..])));
            c.leaf.push(l.map(|l| &l.leaf[..]));
            c.chain.push(l.map(|l| &l.chain[..]));
        }
        c
    }
}

/// Links as column arrays, for one `INSERT ... SELECT FROM UNNEST`.
#[derive(Default)]
pub(super) struct LinkColumns {
    pub(super) sequence: Vec<i64>,
    pub(super) kind: Vec<i16>,
    pub(super) salt: Vec<Option<Vec<u8>>>,
    pub(super) leaf: Vec<Vec<u8>>,
    pub(super) chain: Vec<Vec<u8>>,
    pub(super) body: Vec<Vec<u8>>,
    /// The head after them: (sequence, chain).
    pub(super) head: Option<(i64, Vec<u8>)>,
}

impl LinkColumns {
    pub(super) fn of<'a>(links: impl IntoIterator<Item = &'a Link>) -> LinkColumns {
        let mut c = LinkColumns::default();
        let mut last = None;
        for l in links {
            last = Some(l);
            c.sequence.push(l.sequence as i64);
            c.kind.push(l.kind as i16);
            c.salt.push(l.salt.map(|s| s.to_vec()));
            c.leaf.push(l.leaf.to_vec());
            c.chain.push(l.chain.to_vec());
            c.body.push(l.body.clone());
        }
        c.head = last.map(|l| (l.sequence as i64, l.chain.to_vec()));
        c
    }
}

/// The SQL that writes [`LinkColumns`] and moves the head (two statements,
/// sent in the commit's pipelined round trip).
pub(super) const INSERT_LINKS: &str =
    "INSERT INTO consentd.chain (sequence, kind, salt, leaf, chain, body)
     SELECT * FROM UNNEST($1::bigint[], $2::smallint[], $3::bytea[], $4::bytea[], $5::bytea[],
         $6::bytea[])";
pub(super) const MOVE_HEAD: &str = "UPDATE consentd.meta SET chain_sequence = $1, chain_head = $2";

/// An event an erasure deleted: its sequence and the link its row kept
/// (none: a row from before the chain, or with the chain off).
pub(super) type Erased = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Links an erasure that deleted the events `erased`: their links move
/// into `consentd.chain` without their salts, then the erasure's own.
pub(super) async fn link_erasure(
    txn: &deadpool_postgres::Transaction<'_>,
    head: [u8; 32],
    t: &Tombstone,
    sequence: i64,
    mut erased: Vec<Erased>,
) -> Result<(), StoreError> {
    let before = |e| pg(e, false);
    erased.sort_unstable_by_key(|e| e.0);
    let list: Vec<u64> = erased.iter().map(|e| e.0 as u64).collect();
    let salt = salts(1).map_err(no_salt)?[0];
    let mut linker = Linker::from(head);
    linker.erasure(
        sequence as u64,
        &t.hash,
        t.erased_at,
        &t.reason,
        &list,
        salt,
    );
    // The deleted events' links, unsalted, then the erasure's own (the head).
    let moved = erased.into_iter().filter_map(|(s, leaf, chain)| {
        Some(Link {
            sequence: s as u64,
            kind: Kind::Event,
            salt: None,
            leaf: leaf?.try_into().ok()?,
            chain: chain?.try_into().ok()?,
            body: Vec::new(),
        })
    });
    let links: Vec<Link> = moved.chain(linker.finish()).collect();
    let c = LinkColumns::of(&links);
    let (seq, chain) = c.head.clone().expect("the erasure's link");
    let params: [&(dyn ToSql + Sync); 6] =
        [&c.sequence, &c.kind, &c.salt, &c.leaf, &c.chain, &c.body];
    let head_params: [&(dyn ToSql + Sync); 2] = [&seq, &chain];
    let (insert, head) = tokio::join!(
        txn.execute(INSERT_LINKS, &params),
        txn.execute(MOVE_HEAD, &head_params),
    );
    insert.map_err(before)?;
    head.map_err(before)?;
    Ok(())
}

fn link_from(row: &tokio_postgres::Row) -> Result<Link, StoreError> {
    let sequence = u64_of(row.try_get("link_sequence").map_err(backend)?, "chain")?;
    let bad = |what: &str| StoreError::corrupt("chain", format!("the link at {sequence}: {what}"));
    let kind: i16 = row.try_get("link_kind").map_err(backend)?;
    let salt: Option<Vec<u8>> = row.try_get("link_salt").map_err(backend)?;
    let leaf: Vec<u8> = row.try_get("link_leaf").map_err(backend)?;
    let chain: Vec<u8> = row.try_get("link_chain").map_err(backend)?;
    Ok(Link {
        sequence,
        kind: u8::try_from(kind)
            .ok()
            .and_then(Kind::from_u8)
            .ok_or_else(|| bad("kind"))?,
        salt: salt
            .map(|s| s.try_into().map_err(|_| bad("salt length")))
            .transpose()?,
        leaf: leaf.try_into().map_err(|_| bad("leaf length"))?,
        chain: chain.try_into().map_err(|_| bad("chain length"))?,
        body: row.try_get("link_body").map_err(backend)?,
    })
}

fn held_from(link: &Link, row: &tokio_postgres::Row) -> Result<Held, StoreError> {
    Ok(match link.kind {
        Kind::Erasure => Held::Erasure,
        Kind::Event => {
            let present: Option<i64> = row.try_get("sequence").map_err(backend)?;
            match present {
                Some(_) => match event_from(row) {
                    Ok(e) => Held::Event(Box::new(e)),
                    Err(e) => Held::Unreadable(e.to_string()),
                },
                None => Held::Missing,
            }
        }
        Kind::Catalog => {
            let catalog: Option<serde_json::Value> =
                row.try_get("catalog_spec").map_err(backend)?;
            let at: Option<i64> = row.try_get("catalog_at").map_err(backend)?;
            match (catalog.map(serde_json::from_value::<CatalogSpec>), at) {
                (Some(Ok(spec)), Some(at)) => Held::Catalog(at, Box::new(spec)),
                (Some(Err(e)), _) => Held::Unreadable(format!("catalog: {e}")),
                _ => Held::Missing,
            }
        }
    })
}

impl PgStore {
    pub(super) fn links_page(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(Link, Held)>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            // Events keep their links in their rows; every other link (and
            // an erased event's) is in `consentd.chain`. A row without its
            // link, or a link without its row, is a gap the verifier names.
            "SELECT c.sequence AS link_sequence, c.kind AS link_kind, c.salt AS link_salt,
                    c.leaf AS link_leaf, c.chain AS link_chain, c.body AS link_body,
                    k.catalog AS catalog_spec, k.in_force_from AS catalog_at,
                    {}
             FROM (SELECT * FROM (
                     SELECT sequence, 1::smallint AS kind, link_salt AS salt,
                            link_leaf AS leaf, link_chain AS chain, ''::bytea AS body
                     FROM consentd.events WHERE sequence > $1 AND link_chain IS NOT NULL
                     UNION ALL
                     SELECT sequence, kind, salt, leaf, chain, body
                     FROM consentd.chain WHERE sequence > $1) l
                   ORDER BY sequence LIMIT $2) c
             LEFT JOIN consentd.events e ON e.sequence = c.sequence
             LEFT JOIN consentd.catalogs k ON k.sequence = c.sequence
             ORDER BY c.sequence",
            EVENT_COLUMNS
                .split(", ")
                .map(|c| format!("e.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(&sql, &[&after, &limit])
                .await
                .map_err(|e| pg(e, false))?;
            rows.iter()
                .map(|row| {
                    let link = link_from(row)?;
                    let held = held_from(&link, row)?;
                    Ok((link, held))
                })
                .collect()
        })
    }
}

/// At open, for a database whose records predate the chain: links every
/// record on file once, in sequence order, with no salt, under the commit
/// lock (a node starting beside running ones waits for it, once).
pub(super) async fn backfill(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let err = |e| pg(e, false);
    let txn = client.transaction().await.map_err(err)?;
    let meta = txn
        .query_one(
            "SELECT chain_head IS NULL AND (EXISTS (SELECT 1 FROM consentd.events)
                 OR EXISTS (SELECT 1 FROM consentd.erasures WHERE sequence IS NOT NULL)
                 OR EXISTS (SELECT 1 FROM consentd.catalogs WHERE sequence IS NOT NULL))
             FROM consentd.meta FOR UPDATE",
            &[],
        )
        .await
        .map_err(err)?;
    if !meta.try_get::<_, bool>(0).map_err(backend)? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut digests = HashMap::new();
    for row in txn
        .query("SELECT * FROM consentd.wordings", &[])
        .await
        .map_err(err)?
    {
        let w = wording_from(&row)?;
        digests.insert(
            (w.consent.as_str().to_owned(), w.version),
            wording_digest(&w),
        );
    }
    // Erasures and catalogs are few: read whole. Events come in pages.
    let mut others: std::collections::BTreeMap<i64, Prior> = Default::default();
    for row in txn
        .query(
            "SELECT sequence, hash, erased_at, reason FROM consentd.erasures
             WHERE sequence IS NOT NULL",
            &[],
        )
        .await
        .map_err(err)?
    {
        let hash: Vec<u8> = row.try_get(1).map_err(backend)?;
        let hash = hash
            .try_into()
            .map_err(|_| StoreError::corrupt("erasures", "hash length"))?;
        others.insert(
            row.try_get(0).map_err(backend)?,
            Prior::Erasure(
                hash,
                row.try_get(2).map_err(backend)?,
                row.try_get(3).map_err(backend)?,
            ),
        );
    }
    for row in txn
        .query(
            "SELECT sequence, in_force_from, catalog FROM consentd.catalogs
             WHERE sequence IS NOT NULL",
            &[],
        )
        .await
        .map_err(err)?
    {
        let Json(spec): Json<CatalogSpec> = row.try_get(2).map_err(backend)?;
        others.insert(
            row.try_get(0).map_err(backend)?,
            Prior::Catalog(row.try_get(1).map_err(backend)?, Box::new(spec)),
        );
    }
    let events_sql = format!(
        "SELECT {EVENT_COLUMNS} FROM consentd.events WHERE sequence > $1 ORDER BY sequence LIMIT 10000"
    );
    let mut linker = Linker::from(GENESIS);
    let (mut after, mut n) = (0i64, 0u64);
    loop {
        let rows = txn.query(&events_sql, &[&after]).await.map_err(err)?;
        let last_page = rows.is_empty();
        for row in &rows {
            let e = event_from(row)?;
            let seq = e.sequence as i64;
            while let Some(entry) = others.first_entry().filter(|o| *o.key() < seq) {
                let (s, other) = entry.remove_entry();
                other.link(&mut linker, s as u64);
                n += 1;
            }
            let d = digests
                .get(&(e.consent.as_str().to_owned(), e.version))
                .copied()
                .unwrap_or([0; 32]);
            linker.event(&e, &d, NO_SALT);
            after = seq;
            n += 1;
        }
        if last_page {
            while let Some((s, other)) = others.pop_first() {
                other.link(&mut linker, s as u64);
                n += 1;
            }
        }
        let last = linker.last();
        let links = linker.take();
        let c = LinkColumns::of(links.iter().filter(|l| l.kind != Kind::Event));
        if !c.sequence.is_empty() {
            let params: [&(dyn ToSql + Sync); 6] =
                [&c.sequence, &c.kind, &c.salt, &c.leaf, &c.chain, &c.body];
            txn.execute(INSERT_LINKS, &params).await.map_err(err)?;
        }
        let events: Vec<i64> = links
            .iter()
            .filter(|l| l.kind == Kind::Event)
            .map(|l| l.sequence as i64)
            .collect();
        if !events.is_empty() {
            let e = EventLinks::of(&events, &links);
            let params: [&(dyn ToSql + Sync); 4] = [&events, &e.salt, &e.leaf, &e.chain];
            txn.execute(
                "UPDATE consentd.events e SET link_salt = l.salt, link_leaf = l.leaf,
                     link_chain = l.chain
                 FROM UNNEST($1::bigint[], $2::bytea[], $3::bytea[], $4::bytea[])
                     AS l(sequence, salt, leaf, chain)
                 WHERE e.sequence = l.sequence",
                &params,
            )
            .await
            .map_err(err)?;
        }
        if last_page {
            if let Some((seq, chain)) = last {
                txn.execute(MOVE_HEAD, &[&(seq as i64), &chain.to_vec()])
                    .await
                    .map_err(err)?;
            }
            break;
        }
    }
    txn.commit().await.map_err(err)?;
    tracing::info!(
        records = n,
        seconds = started.elapsed().as_secs_f64(),
        "PostgreSQL store linked into a hash chain (records from before it have no salt)"
    );
    Ok(())
}

/// Checkpoint reads and writes.
impl PgStore {
    pub(super) fn keep_note(
        &self,
        sequence: u64,
        note: &str,
        sync: bool,
    ) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let (sequence, note) = (sequence as i64, note.to_owned());
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let txn = client.transaction().await.map_err(|e| pg(e, false))?;
            if !sync {
                // Durable with the next WAL flush (any commit, or the WAL
                // writer within its delay): no wait for a flush of its own.
                txn.batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                    .map_err(|e| pg(e, false))?;
            }
            txn.execute(
                "INSERT INTO consentd.checkpoints (sequence, note) VALUES ($1, $2)
                     ON CONFLICT (sequence) DO NOTHING",
                &[&sequence, &note],
            )
            .await
            .map_err(|e| pg(e, false))?;
            txn.commit().await.map_err(|e| pg(e, true))?;
            Ok(())
        })
    }
}
