//! What the hash chain costs and how fast it verifies (DESIGN.md §11):
//!
//! ```text
//! cargo bench --bench audit [-- --seconds 8 --rounds 3 --writers 64 --records 1000000 --postgres]
//! ```
//!
//! 1. Durable Grant/s and latency with `--writers` concurrent writers, a
//!    consentd in process on redb, **with the chain and without it**
//!    (the store's bench-only switch), alternating A/B rounds in the same
//!    run so that both meet the same disk and the same noise; with
//!    `--postgres`, the same on a throwaway PostgreSQL server.
//! 2. Verification: `--records` grants committed straight into a redb
//!    store (batches of 1,000), then `consentd::audit::verify` over it:
//!    records/s.
//! 3. Size per record: the redb file with the chain against one without,
//!    same records; on PostgreSQL the chain table's size per row.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use consentd::domain::{Action, ConsentId, ContactId, EventRecord, Source};
use consentd::pb::{self, consents_service_client::ConsentsServiceClient};
use consentd::store::{PgStore, RedbStore, Store, WriteBatch};
use support::{closed_loop, runtime};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Seconds of each Grant round.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds of each mode, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Records committed for the verification and size phases.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Also measure the Grant phase on a throwaway PostgreSQL server.
    #[arg(long)]
    postgres: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One Grant round against a fresh consentd over `store`: (grants/s, p99 ms).
fn grant_round(args: &Args, store: Arc<dyn Store>, label: &str) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let mut config = consentd::Config::ephemeral(dir.path());
    config.catalog = Some(std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/catalog.toml"
    )));
    let rt = runtime("bench-audit")?;
    let (report, stop) = rt.block_on(async {
        let bound = consentd::server::Server::bind_with_store(&config, store).await?;
        let addr = bound.grpc_addr;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(bound.serve(async {
            let _ = rx.await;
        }));
        let channels = support::channels(addr, 8).await;
        let tag = label.replace(' ', "-");
        let report = closed_loop(args.writers, args.seconds, move |t, i| {
            let mut client = ConsentsServiceClient::new(channels[t % channels.len()].clone());
            let contact = format!("{tag}-{t}-{i}");
            async move {
                client
                    .grant(pb::GrantRequest {
                        contact_id: contact,
                        consent_id: "marketing".into(),
                        source: pb::Source::Form as i32,
                        evidence: [("form".to_string(), "bench".to_string())].into(),
                        ..Default::default()
                    })
                    .await?;
                Ok(1)
            }
        })
        .await;
        let _ = tx.send(());
        anyhow::Ok((report, served))
    })?;
    let _ = rt.block_on(stop);
    println!("{}", report.line(&format!("Grant, {label}"), "grants"));
    let per_s = report.ops as f64 / report.seconds;
    let p99 = report.hist.value_at_quantile(0.99) as f64 / 1e6;
    Ok((per_s, p99))
}

fn summary(what: &str, with: &[(f64, f64)], without: &[(f64, f64)]) {
    let mean =
        |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let (w, wo) = (mean(with, |x| x.0), mean(without, |x| x.0));
    let (wp, wop) = (mean(with, |x| x.1), mean(without, |x| x.1));
    println!(
        "{what}: with the chain {w:.0} grants/s (p99 {wp:.2} ms), without {wo:.0} grants/s (p99 {wop:.2} ms): {:.1}% {} grants/s, p99 {:+.1}%",
        ((w / wo) - 1.0).abs() * 100.0,
        if w < wo { "fewer" } else { "more" },
        ((wp / wop) - 1.0) * 100.0
    );
}

fn event(i: u64) -> EventRecord {
    EventRecord {
        contact: ContactId::parse("c", &format!("contact-{i:09}")).unwrap(),
        consent: ConsentId::parse("c", "marketing").unwrap(),
        action: Action::Grant,
        occurred_at: 1_700_000_000_000_000_000 + i as i64,
        recorded_at: 1_700_000_000_000_000_000 + i as i64,
        source: Source::Form,
        evidence: [("form".to_string(), "signup-2026".to_string())].into(),
        version: 1,
        sequence: i,
        idempotency_key: None,
        applied: true,
        actor: "crm".into(),
        pending: false,
        confirmed: false,
        confirmation_link: false,
        chain: None,
    }
}

/// Commits `n` one-grant contacts into `store`, 1,000 per batch.
fn fill(store: &dyn Store, n: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut next = 1;
    while next <= n {
        let last = (next + 999).min(n);
        store.commit(&WriteBatch {
            events: (next..=last).map(event).collect(),
            next_sequence: last + 1,
            ..Default::default()
        })?;
        next = last + 1;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "consentd audit bench: {} rounds × {} s per mode, {} writers, {} records, {} cores",
        args.rounds,
        args.seconds,
        args.writers,
        args.records,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 0. The hashing alone: canonical form, leaf and link of 1M events.
    let events: Vec<EventRecord> = (1..=1_000_000).map(event).collect();
    let started = Instant::now();
    let mut linker = consentd::audit::Linker::from(consentd::audit::GENESIS);
    for e in &events {
        linker.event(e, &[0; 32], consentd::audit::NO_SALT);
        if e.sequence % 1000 == 0 {
            linker.take();
        }
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "linking in memory (canonical form, leaf, link): {:.0} ns per event",
        s * 1e9 / events.len() as f64
    );
    drop(events);

    // 1. Grant with the chain and without, alternating.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for chained in [round % 2 == 0, round % 2 != 0] {
            let dir = tempfile::tempdir()?;
            let store = RedbStore::open(dir.path())?;
            let (store, label): (Arc<dyn Store>, _) = if chained {
                (Arc::new(store), "redb, chained")
            } else {
                (Arc::new(store.without_chain_for_bench()), "redb, no chain")
            };
            let r = grant_round(&args, store, label)?;
            if chained {
                with.push(r)
            } else {
                without.push(r)
            }
        }
    }
    summary("redb", &with, &without);
    if args.postgres {
        let pg = support::throwaway::Throwaway::start().map_err(anyhow::Error::msg)?;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let mut chained_url = String::new();
        for round in 0..args.rounds {
            for chained in [round % 2 == 0, round % 2 != 0] {
                let url = pg.fresh_database();
                if chained {
                    chained_url = url.clone();
                }
                let store = PgStore::open(&url)?;
                let (store, label): (Arc<dyn Store>, _) = if chained {
                    (Arc::new(store), "PostgreSQL, chained")
                } else {
                    (
                        Arc::new(store.without_chain_for_bench()),
                        "PostgreSQL, no chain",
                    )
                };
                let r = grant_round(&args, store, label)?;
                if chained {
                    with.push(r)
                } else {
                    without.push(r)
                }
            }
        }
        summary("PostgreSQL", &with, &without);
        let rt = runtime("bench-audit-pg")?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&chained_url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            client
                .batch_execute("VACUUM ANALYZE consentd.chain, consentd.events")
                .await?;
            // An event's link is three columns of its row; other records'
            // links (catalog applies, erasures) are rows of the chain table.
            let row = client
                .query_one(
                    "SELECT pg_total_relation_size('consentd.chain')
                          + (SELECT coalesce(sum(pg_column_size(link_salt) + pg_column_size(link_leaf)
                                + pg_column_size(link_chain)), 0) FROM consentd.events),
                            (SELECT count(*) FROM consentd.chain)
                          + (SELECT count(*) FROM consentd.events)",
                    &[],
                )
                .await?;
            let (bytes, rows): (i64, i64) = (row.get(0), row.get(1));
            println!(
                "PostgreSQL links: {rows} in {:.2} MB (event columns and the chain table): \
                 {:.0} bytes per record",
                bytes as f64 / 1e6,
                bytes as f64 / rows.max(1) as f64
            );
            anyhow::Ok(())
        })?;
    }

    // 2. and 3. Verification speed, size per record.
    let chained_dir = tempfile::tempdir()?;
    let plain_dir = tempfile::tempdir()?;
    {
        let chained = RedbStore::open(chained_dir.path())?;
        let s = fill(&chained, args.records)?;
        println!(
            "filled {} records with the chain in {s:.1} s ({:.0} records/s, batches of 1,000)",
            args.records,
            args.records as f64 / s
        );
        let plain = RedbStore::open(plain_dir.path())?.without_chain_for_bench();
        let s = fill(&plain, args.records)?;
        println!(
            "filled {} records without it in {s:.1} s ({:.0} records/s)",
            args.records,
            args.records as f64 / s
        );
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let signer = consentd::audit::note::Signer::from_key(key, "bench");
        let (head, chain) = chained.chain_head()?.expect("linked");
        chained.keep_checkpoint(head, &signer.checkpoint(head, &chain), true)?;
        let started = Instant::now();
        let v = consentd::audit::verify(&chained, &signer.verifying_key(), &[], &mut |_| {})?;
        let s = started.elapsed().as_secs_f64();
        println!(
            "verified {} records and {} checkpoint in {s:.2} s: {:.0} records/s",
            v.records,
            v.checkpoints,
            v.records as f64 / s
        );
    }
    let a = RedbStore::open(chained_dir.path())?.stored_bytes()?;
    let b = RedbStore::open(plain_dir.path())?.stored_bytes()?;
    println!(
        "redb stored bytes: {:.1} MB with the chain, {:.1} MB without: {:.0} bytes per record for the chain ({:.0} per record in all)",
        a as f64 / 1e6,
        b as f64 / 1e6,
        (a as f64 - b as f64) / args.records as f64,
        a as f64 / args.records as f64
    );
    Ok(())
}
