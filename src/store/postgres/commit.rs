//! The commit of a node that rules on the latest view (DESIGN.md §5, "one
//! view per commit"), as one transaction the writer drives:
//!
//! 1. take the commit lock: the one `meta` row, `SELECT ... FOR UPDATE`,
//!    held to COMMIT (catalog applies and erasures take it too);
//! 2. read everything committed after the writer's cursor and hand it to
//!    the writer, which applies it and rules its batch on that view;
//! 3. write what the writer returns (pipelined: one round trip for every
//!    statement) and COMMIT.
//!
//! The transaction runs on the store's runtime; the writer's thread waits
//! for the view, rules, and sends its write back through a channel. If the
//! writer gives up (its thread ends), the transaction is rolled back.
//!
//! What the writer's view makes redundant is not re-checked in SQL: only
//! assertions stay, which fail the commit loudly (a writer that ruled on a
//! stale view is a bug): a batch numbered below the counter, a state the
//! writer ruled applied that loses to one on file, a wording version that
//! would name a second text.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::chain::{
    Digests, Erased, EventLinks, INSERT_LINKS, LinkColumns, head_of, link, link_erasure,
};
use super::columns::Columns;
use super::decode::{i64_of, pg, pool_error, u64_of};
use super::feed::read_changes;
use super::{FEED_CHANNEL, PgStore};
use crate::audit::Kind;
use crate::store::{
    Changes, CommitPhases, Committed, Cursor, StoreError, Tombstone, Write, WriteBatch,
};

/// Where the view goes once read, and the writer's answer comes from.
type ViewSender = std::sync::mpsc::SyncSender<Result<Changes, StoreError>>;

impl PgStore {
    /// [`crate::store::SharedStore::commit_on_latest`]; also says whether
    /// an erasure found anything held.
    pub(super) fn commit_with(
        &self,
        cursor: Cursor,
        rule: &mut dyn FnMut(Changes) -> Write,
    ) -> Result<(Committed, bool), StoreError> {
        let (view_tx, view_rx) = std::sync::mpsc::sync_channel(1);
        let (write_tx, write_rx) = tokio::sync::oneshot::channel::<Write>();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.pool.clone();
        let timeout = self.timeout;
        let vacuum_due = self.vacuum_due.clone();
        let digests = self.chained.then(|| self.digests.clone());
        self.handle.spawn(async move {
            let mut view = Some(view_tx);
            let result = transaction(
                pool, cursor, timeout, &mut view, write_rx, vacuum_due, digests,
            )
            .await;
            match (view, result) {
                // Failed before the writer had its view: it waits there.
                (Some(view), Err(e)) => {
                    let _ = view.send(Err(e));
                }
                (_, result) => {
                    let _ = done_tx.send(result);
                }
            }
        });
        let stopped = || StoreError::Unavailable {
            in_doubt: true,
            cause: "the store's runtime stopped".into(),
        };
        match view_rx.recv() {
            Ok(Ok(changes)) => {
                let _ = write_tx.send(rule(changes));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(stopped()),
        }
        done_rx.recv().unwrap_or_else(|_| Err(stopped()))
    }
}

/// `fut`, or "unavailable" once `timeout` passes (in doubt if `sent`).
async fn within<T>(
    timeout: Duration,
    sent: &AtomicBool,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                in_doubt: sent.load(Ordering::SeqCst),
                cause: format!("no answer from PostgreSQL within {timeout:?}"),
            })
        })
}

async fn transaction(
    pool: Pool,
    cursor: Cursor,
    timeout: Duration,
    view: &mut Option<ViewSender>,
    write: tokio::sync::oneshot::Receiver<Write>,
    vacuum_due: Arc<AtomicBool>,
    digests: Option<Digests>,
) -> Result<(Committed, bool), StoreError> {
    let before = |e| pg(e, false);
    let sent = AtomicBool::new(false);
    let started = Instant::now();
    let mut client = within(timeout, &sent, async {
        pool.get().await.map_err(pool_error)
    })
    .await?;
    let txn = within(timeout, &sent, async {
        client.transaction().await.map_err(before)
    })
    .await?;
    let begun = Instant::now();
    // 1. The lock; 2. the view: sent together, run in order (the reads
    // start once the lock is held, so they see every commit before).
    let (head, changes) = within(timeout, &sent, read_changes(&txn, cursor, None, true)).await?;
    let viewed = Instant::now();
    let Some(view) = view.take() else {
        unreachable!("the view is sent once")
    };
    if view.send(Ok(changes)).is_err() {
        return Err(gave_up());
    }
    // The writer rules meanwhile; a writer that ends sends nothing.
    let write = write.await.map_err(|_| gave_up())?;
    let ruled = Instant::now();
    let next = head.next_sequence;
    let chain_head = head_of(head.chain)?;
    let (committed, held) = match write {
        Write::Nothing => {
            let _ = txn.rollback().await;
            return Ok((
                Committed {
                    first_sequence: u64_of(next, "meta")?,
                    catalog_version: u64_of(head.catalog_version, "meta")?,
                    phases: None,
                },
                false,
            ));
        }
        Write::Batch(batch) => {
            let first = batch.first_sequence();
            if !batch.events.is_empty() && i64_of(first, "sequence")? < next {
                return Err(StoreError::corrupt(
                    "events",
                    format!(
                        "a batch numbered from {first} below the store's next sequence {next}: \
                         ruled on a stale view"
                    ),
                ));
            }
            let links = match &digests {
                Some(digests) => {
                    within(timeout, &sent, link(&txn, digests, chain_head, &batch)).await?
                }
                None => Vec::new(),
            };
            let catalog_version = within(timeout, &sent, write_batch(&txn, batch, &links)).await?;
            (
                Committed {
                    first_sequence: first,
                    catalog_version: u64_of(catalog_version, "meta")?,
                    phases: None,
                },
                false,
            )
        }
        Write::Erase { contact, tombstone } => {
            let held = within(
                timeout,
                &sent,
                erase(&txn, &contact, &tombstone, next, chain_head),
            )
            .await?;
            (
                Committed {
                    first_sequence: u64_of(next, "meta")?,
                    catalog_version: u64_of(head.catalog_version, "meta")?,
                    phases: None,
                },
                held,
            )
        }
    };
    let written = Instant::now();
    within(timeout, &sent, async {
        sent.store(true, Ordering::SeqCst);
        txn.commit().await.map_err(|e| pg(e, true))
    })
    .await?;
    if held {
        vacuum_due.store(true, Ordering::SeqCst);
    }
    let phases = CommitPhases {
        begin: begun - started,
        lock: head.locked_at.saturating_duration_since(begun),
        view: viewed.saturating_duration_since(head.locked_at),
        rule: ruled - viewed,
        write: written - ruled,
        commit: written.elapsed(),
    };
    Ok((
        Committed {
            phases: Some(phases),
            ..committed
        },
        held,
    ))
}

fn gave_up() -> StoreError {
    StoreError::Unavailable {
        in_doubt: false,
        cause: "the writer gave up before writing".into(),
    }
}

type Param<'a> = &'a (dyn ToSql + Sync);

/// Writes a batch's rows and links; returns the catalog version after it.
async fn write_batch(
    txn: &deadpool_postgres::Transaction<'_>,
    batch: WriteBatch,
    links: &[crate::audit::Link],
) -> Result<i64, StoreError> {
    let before = |e| pg(e, false);
    let c = Columns::of(batch)?;
    // Events carry their links in their rows; a catalog apply's goes to
    // `consentd.chain`.
    let l = LinkColumns::of(links.iter().filter(|l| l.kind != Kind::Event));
    let link_params: [Param<'_>; 6] = [&l.sequence, &l.kind, &l.salt, &l.leaf, &l.chain, &l.body];
    let (head_sequence, head_chain) = links
        .last()
        .map(|l| (l.sequence as i64, l.chain.to_vec()))
        .unzip();
    let e = &c.events;
    let el = EventLinks::of(&e.sequence, links);
    let event_params: [Param<'_>; 18] = [
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
        &el.salt,
        &el.leaf,
        &el.chain,
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
    let key_params: [Param<'_>; 4] = [&c.keys, &c.key_sequences, &c.key_times, &c.key_fingerprints];
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
    // (SQL, its parameters, rows it must touch: the assertions; None: any).
    let mut statements: Vec<(&'static str, &[Param<'_>], Option<u64>, &'static str)> = Vec::new();
    if !e.sequence.is_empty() {
        statements.push((
            "INSERT INTO consentd.events (sequence, contact, consent, action, occurred_at,
                     recorded_at, source, evidence, version, idempotency_key, applied, actor,
                     pending, confirmed, confirmation_link, link_salt, link_leaf, link_chain)
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::smallint[],
                     $5::bigint[], $6::bigint[], $7::smallint[], $8::jsonb[], $9::int[],
                     $10::text[], $11::bool[], $12::text[], $13::bool[], $14::bool[],
                     $15::bool[], $16::bytea[], $17::bytea[], $18::bytea[])",
            &event_params,
            None,
            "events",
        ));
    }
    if !s.contact.is_empty() {
        statements.push((
            "INSERT INTO consentd.states (contact, consent, action, occurred_at,
                     recorded_at, source, version, sequence)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::smallint[], $4::bigint[],
                     $5::bigint[], $6::smallint[], $7::int[], $8::bigint[])
                 ON CONFLICT (contact, consent) DO UPDATE SET action = EXCLUDED.action,
                     occurred_at = EXCLUDED.occurred_at, recorded_at = EXCLUDED.recorded_at,
                     source = EXCLUDED.source, version = EXCLUDED.version,
                     sequence = EXCLUDED.sequence
                 -- An assertion: the writer ruled on the latest view, so every
                 -- state it applies wins by rule 2 (a row left alone fails
                 -- the commit).
                 WHERE EXCLUDED.occurred_at > states.occurred_at
                    OR (EXCLUDED.occurred_at = states.occurred_at
                        AND EXCLUDED.action = 2 AND states.action = 1)",
            &state_params,
            Some(s.contact.len() as u64),
            "states: a state ruled applied loses to one on file (ruled on a stale view)",
        ));
    }
    if !c.keys.is_empty() {
        statements.push((
            "INSERT INTO consentd.idempotency (key, sequence, recorded_at, fingerprint)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bytea[])
                 ON CONFLICT (key) DO UPDATE SET sequence = EXCLUDED.sequence,
                     recorded_at = EXCLUDED.recorded_at, fingerprint = EXCLUDED.fingerprint",
            &key_params,
            None,
            "idempotency",
        ));
    }
    // Three disjoint sets of (contact, consent): each row is touched by one
    // statement.
    if !c.pending_add.contact.is_empty() {
        statements.push((
            "INSERT INTO consentd.pending (contact, consent, count, last_at, link_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bigint[],
                     $5::bigint[])
                 ON CONFLICT (contact, consent) DO UPDATE SET
                     count = pending.count + EXCLUDED.count,
                     last_at = GREATEST(pending.last_at, EXCLUDED.last_at),
                     link_at = GREATEST(pending.link_at, EXCLUDED.link_at)",
            &pending_add,
            None,
            "pending",
        ));
    }
    if !c.pending_set.contact.is_empty() {
        statements.push((
            "INSERT INTO consentd.pending (contact, consent, count, last_at, link_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::bigint[],
                     $5::bigint[])
                 ON CONFLICT (contact, consent) DO UPDATE SET count = EXCLUDED.count,
                     last_at = EXCLUDED.last_at, link_at = EXCLUDED.link_at",
            &pending_set,
            None,
            "pending",
        ));
    }
    if !c.pending_ended.0.is_empty() {
        statements.push((
            "DELETE FROM consentd.pending p
                 USING UNNEST($1::text[], $2::text[]) AS ended(contact, consent)
                 WHERE p.contact = ended.contact AND p.consent = ended.consent",
            &pending_ended,
            None,
            "pending",
        ));
    }
    for params in &wording_params {
        statements.push((
            "INSERT INTO consentd.wordings (consent, version, title, text, parent,
                     channels, brands, in_force_from)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 -- The same words again change nothing; other words under a
                 -- version on file touch no row and fail the commit.
                 ON CONFLICT (consent, version) DO UPDATE SET in_force_from = wordings.in_force_from
                 WHERE wordings.text = EXCLUDED.text
                   AND wordings.parent IS NOT DISTINCT FROM EXCLUDED.parent
                   AND wordings.channels = EXCLUDED.channels
                   AND wordings.brands = EXCLUDED.brands",
            params,
            Some(1),
            "wordings: one version would name a second text (ruled on a stale catalog)",
        ));
    }
    if !l.sequence.is_empty() {
        statements.push((INSERT_LINKS, &link_params, None, "chain"));
    }
    if !e.sequence.is_empty() || c.catalog.is_some() {
        // Wakes the other nodes' feeds when this commits; says nothing.
        statements.push(("SELECT pg_notify($1, 'e')", &notify_params, None, "notify"));
    }
    let meta_params: [Param<'_>; 6] = [
        &c.next_sequence,
        &c.catalog,
        &c.catalog_at,
        &c.catalog_sequence,
        &head_sequence,
        &head_chain,
    ];
    // Prepared once per connection and cached: after the first commit,
    // every statement goes out in the one pipelined round trip. A new
    // catalog is also kept, under its version, for as-of reads.
    let meta_statement = txn.prepare_cached(
        "WITH meta AS (
             UPDATE consentd.meta SET next_sequence = GREATEST(next_sequence, $1),
                 catalog = COALESCE($2, catalog),
                 chain_sequence = COALESCE($5, chain_sequence),
                 chain_head = COALESCE($6, chain_head),
                 catalog_version = catalog_version + (CASE WHEN $2 IS NULL THEN 0 ELSE 1 END)
             RETURNING catalog_version),
         kept AS (
             INSERT INTO consentd.catalogs (version, in_force_from, catalog, sequence)
             SELECT catalog_version, $3, $2, $4 FROM meta WHERE $2 IS NOT NULL)
         SELECT catalog_version FROM meta",
    );
    let prepared = futures_util::future::try_join_all(
        statements.iter().map(|(sql, ..)| txn.prepare_cached(sql)),
    );
    let (meta_statement, prepared) = futures_util::future::join(meta_statement, prepared).await;
    let (meta_statement, prepared) = (meta_statement.map_err(before)?, prepared.map_err(before)?);
    let meta = txn.query_one(&meta_statement, &meta_params);
    let writes = statements
        .iter()
        .zip(&prepared)
        .map(|((_, params, ..), statement)| txn.execute(statement, params));
    let (meta, written) =
        futures_util::future::join(meta, futures_util::future::try_join_all(writes)).await;
    let written = written.map_err(before)?;
    let checks = statements.iter().map(|(_, _, n, what)| (*n, *what));
    for (touched, (expected, what)) in written.iter().zip(checks) {
        if expected.is_some_and(|n| n != *touched) {
            return Err(StoreError::corrupt("commit", what));
        }
    }
    Ok(meta.map_err(before)?.get(0))
}

/// Deletes everything held for the contact and keeps its tombstone, which
/// takes `sequence` so that every node's feed meets it in order. Returns
/// whether anything was held.
async fn erase(
    txn: &deadpool_postgres::Transaction<'_>,
    contact: &str,
    t: &Tombstone,
    sequence: i64,
    chain_head: [u8; 32],
) -> Result<bool, StoreError> {
    let before = |e| pg(e, false);
    txn.execute(
        "DELETE FROM consentd.idempotency WHERE key IN (SELECT idempotency_key
             FROM consentd.events WHERE contact = $1 AND idempotency_key IS NOT NULL)",
        &[&contact],
    )
    .await
    .map_err(before)?;
    let hash = t.hash.as_slice();
    let by_contact: [&(dyn ToSql + Sync); 1] = [&contact];
    let at: [&(dyn ToSql + Sync); 1] = [&sequence];
    let tombstone: [&(dyn ToSql + Sync); 4] = [&hash, &t.erased_at, &t.reason, &sequence];
    let channel: [&(dyn ToSql + Sync); 1] = [&FEED_CHANNEL];
    let (states, pending, events, meta, tombstone, notify) = tokio::join!(
        txn.execute(
            "DELETE FROM consentd.states WHERE contact = $1",
            &by_contact
        ),
        txn.execute(
            "DELETE FROM consentd.pending WHERE contact = $1",
            &by_contact
        ),
        txn.query(
            "DELETE FROM consentd.events WHERE contact = $1
             RETURNING sequence, link_leaf, link_chain",
            &by_contact
        ),
        txn.execute(
            "UPDATE consentd.meta SET next_sequence = $1::bigint + 1",
            &at
        ),
        txn.execute(
            "INSERT INTO consentd.erasures (hash, erased_at, reason, sequence)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO UPDATE SET erased_at = EXCLUDED.erased_at,
                 reason = EXCLUDED.reason, sequence = EXCLUDED.sequence",
            &tombstone,
        ),
        // The notice names no one: the other nodes read the erasure's keyed
        // hash from the feed.
        txn.execute("SELECT pg_notify($1, 'e')", &channel),
    );
    let erased = events
        .map_err(before)?
        .iter()
        .map(|r| -> Result<Erased, StoreError> {
            let get = super::decode::backend;
            Ok((
                r.try_get(0).map_err(get)?,
                r.try_get(1).map_err(get)?,
                r.try_get(2).map_err(get)?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let held = states.map_err(before)? + pending.map_err(before)? + erased.len() as u64 > 0;
    meta.map_err(before)?;
    tombstone.map_err(before)?;
    notify.map_err(before)?;
    link_erasure(txn, chain_head, t, sequence, erased).await?;
    Ok(held)
}
