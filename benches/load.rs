//! Load generator for a running consentd, with a bare tonic baseline.
//!
//! ```text
//! cargo bench --bench load                      # in-process server + baseline
//! cargo bench --bench load -- --addr 127.0.0.1:50051 --seconds 20
//! cargo bench --bench load -- --store redb,postgres   # writes on both stores
//! ```
//!
//! `--store` lists the stores to start consentd on (`redb`, `postgres` for a
//! throwaway PostgreSQL server on this machine, or a `postgres://` URL);
//! the durable phases (Grant, Import) run on each, the CanSend phases on the
//! first (CanSend never touches the store).
//!
//! `--contacts N` starts consentd on a redb store of N contacts written
//! straight through it (`crm-00000001`…, one state each, every tenth
//! withdrawn) and gives the bare server the same N; the CanSend phases
//! then pick uniformly among them (memory-bound lookups, as at 10M).
//! Without it they use the contacts the Grant phase wrote.
//!
//! Without `--addr` it starts consentd (temp data dir, examples/catalog.toml)
//! and a bare tonic server that answers CanSend and CanSendBatch from a
//! DashMap (`--bare-full`: with the deciding consent and time consentd's
//! answers carry), both on one 2-thread runtime ("server"), the client on another,
//! so client and servers share the machine's cores as they would on one
//! box. Reports, in order:
//! 1. durable Grant/s with `--writers` concurrent writers, and latency; on
//!    redb, as a multiple of raw redb's single-commit rate (one insert per
//!    fsync'd transaction) measured right after, same disk, then the same
//!    writes from the lean client (below), which leaves the cores to the
//!    server;
//! 2. for the first `--hot` contacts ("cached keys"), then for all of them:
//!    unary CanSend and 1000-check CanSendBatch, consentd then the bare
//!    server, each with its rate, latency and the server threads' CPU time
//!    per call, and the ratios of the two (the bare server is measured in
//!    the same run, so the ratios repeat where the absolute rates do not);
//!    then the batches again from a lean client (`h2` directly, bodies
//!    encoded beforehand, answers not decoded), whose small CPU per batch
//!    leaves the cores to the servers; and unary CanSend from `h2load`
//!    (nghttp2's, when installed) on one contact, consentd then bare, then
//!    consentd with the List-Unsubscribe URL;
//! 3. CanSend with the List-Unsubscribe URL, then naming the address
//!    (`to`), as a share of plain CanSend's rate;
//! 4. one streamed import per store.

#[path = "support/bare.rs"]
mod bare;
#[path = "support/commits.rs"]
mod commits;
#[path = "support/h2load.rs"]
mod h2load;
#[path = "support/phase.rs"]
mod phase;
#[path = "support/rawh2.rs"]
mod rawh2;
#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;

use phase::{measured, ratio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use support::{channels, closed_loop};

use bare::Bare;
use clap::Parser;
use consentd::pb::{
    self, consents_service_client::ConsentsServiceClient,
    eligibility_service_client::EligibilityServiceClient,
    eligibility_service_server::EligibilityServiceServer,
};
use dashmap::DashMap;
use tonic::Status;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// A running consentd (with examples/catalog.toml applied); default: start one in-process.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Seconds per phase.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// HTTP/2 connections the client opens (per target).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight at once, spread over the connections.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Concurrent writers in the Grant phase.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Checks per CanSendBatch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Batches in flight at once (tonic client).
    #[arg(long, default_value_t = 4)]
    batch_inflight: usize,
    /// Batches the lean client keeps in flight (it leaves cores free).
    #[arg(long, default_value_t = 16)]
    lean_inflight: usize,
    /// Contacts consentd starts with (written straight to its redb store)
    /// and the bare server holds; 0: those the Grant phase writes.
    #[arg(long, default_value_t = 0)]
    contacts: u64,
    /// The redb page cache of the consentd it starts, MiB (the server's
    /// `--store-cache-mb`).
    #[arg(long)]
    store_cache_mb: Option<u64>,
    /// The bare server's answers carry the deciding consent and its time,
    /// as consentd's do (the client's CPU per call grows with the answer).
    #[arg(long)]
    bare_full: bool,
    /// Only the durable phases (Grant, raw redb, Import): no CanSend.
    #[arg(long)]
    writes_only: bool,
    /// Contacts of the "cached keys" phases.
    #[arg(long, default_value_t = 1000)]
    hot: u64,
    /// Rows in the import phase.
    #[arg(long, default_value_t = 200_000)]
    import_rows: u64,
    /// Stores to run the durable phases on, comma-separated: `redb`,
    /// `postgres` (a throwaway server), or a `postgres://` URL.
    #[arg(long, default_value = "redb", value_delimiter = ',')]
    store: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn contact(i: u64) -> String {
    format!("load-{i:09}")
}

/// The contacts a CanSend phase asks about: `n` of them, picked uniformly.
#[derive(Clone, Copy)]
struct Keys {
    n: u64,
    /// Written by `--contacts` (`crm-…`, every tenth withdrawn), or by the
    /// Grant phase (`load-…`, all granted).
    crm: bool,
}

impl Keys {
    /// The `i`th request's contact (a multiplicative hash spreads them).
    fn pick(self, i: u64) -> u64 {
        i.wrapping_mul(2654435761) % self.n
    }

    fn id(self, k: u64) -> String {
        if self.crm {
            support::crm_contact(k + 1)
        } else {
            contact(k)
        }
    }

    fn allowed(self, k: u64) -> bool {
        !self.crm || !(k + 1).is_multiple_of(10)
    }
}

/// Unary CanSend for `seconds` at `inflight`; the answer must be the
/// contact's (and carry a URL when asked and allowed).
async fn unary(
    addr: SocketAddr,
    args: &Args,
    keys: Keys,
    include_unsubscribe: bool,
    with_to: bool,
) -> support::Report {
    let chans = channels(addr, args.connections).await;
    closed_loop(args.inflight, args.seconds, move |t, i| {
        let mut client = EligibilityServiceClient::new(chans[t % chans.len()].clone());
        let k = keys.pick(i ^ ((t as u64) << 40));
        let who = keys.id(k);
        let to = with_to.then(|| pb::Address {
            kind: pb::AddressKind::Unspecified as i32,
            value: format!("{who}@Example.com"),
        });
        async move {
            let r = client
                .can_send(pb::CanSendRequest {
                    contact_id: who,
                    channel: "email".into(),
                    brand: "acme".into(),
                    include_unsubscribe,
                    to,
                    ..Default::default()
                })
                .await?;
            let r = r.get_ref();
            if r.allowed != keys.allowed(k)
                || (include_unsubscribe && r.allowed) == r.unsubscribe_url.is_empty()
            {
                return Err(Status::internal("not the contact's answer, or no URL"));
            }
            Ok(1)
        }
    })
    .await
}

/// CanSendBatch of `--batch` checks for `seconds`; every answer must be
/// its contact's.
async fn batches(addr: SocketAddr, args: &Args, keys: Keys) -> support::Report {
    let chans = channels(addr, args.connections).await;
    let batch = args.batch as u64;
    // Built once: the client's cost per batch is then a clone, not 1000 format!s.
    let batches: Arc<Vec<(pb::CanSendBatchRequest, Vec<bool>)>> = Arc::new(
        (0..16u64)
            .map(|b| {
                let picked: Vec<u64> = (0..batch).map(|k| keys.pick(b * batch + k)).collect();
                let request = pb::CanSendBatchRequest {
                    checks: picked.iter().map(|&k| check_of(keys, k)).collect(),
                    min_sequence: 0,
                };
                (request, picked.iter().map(|&k| keys.allowed(k)).collect())
            })
            .collect(),
    );
    closed_loop(args.batch_inflight, args.seconds, move |t, i| {
        let mut client = EligibilityServiceClient::new(chans[t % chans.len()].clone());
        let which = (i as usize + t) % batches.len();
        let batches = batches.clone();
        async move {
            let (request, expected) = &batches[which];
            let r = client.can_send_batch(request.clone()).await?;
            let results = &r.get_ref().results;
            if results.len() != expected.len()
                || results.iter().zip(expected).any(|(r, &a)| r.allowed != a)
            {
                return Err(Status::internal("not the contacts' answers"));
            }
            Ok(results.len() as u64)
        }
    })
    .await
}

/// The check a load phase sends about contact `k`.
fn check_of(keys: Keys, k: u64) -> pb::CanSendRequest {
    pb::CanSendRequest {
        contact_id: keys.id(k),
        channel: "email".into(),
        brand: "acme".into(),
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server_rt = support::runtime("server")?;
    let client_rt = support::runtime("client")?;

    // The servers: one consentd per store.
    let mut dirs = Vec::new();
    let mut postgres = None;
    let mut targets: Vec<(String, SocketAddr)> = Vec::new();
    // Each started consentd's admin address, by label.
    let mut admins: std::collections::HashMap<String, SocketAddr> = Default::default();
    // Each PostgreSQL store's URL, by label (for its WAL counters).
    let mut pg_urls: std::collections::HashMap<String, String> = Default::default();
    match args.addr {
        Some(a) => targets.push(("running".into(), a)),
        None => {
            for (i, store) in args.store.iter().enumerate() {
                let dir = tempfile::tempdir()?;
                let mut config = consentd::Config::ephemeral(dir.path());
                let catalog = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml");
                config.catalog = Some(catalog.into());
                if let Some(mb) = args.store_cache_mb {
                    config.store_cache_mb = mb;
                }
                if i == 0 && args.contacts > 0 {
                    anyhow::ensure!(store == "redb", "--contacts writes a redb store");
                    let started = Instant::now();
                    let spec = consentd::server::read_catalog(std::path::Path::new(catalog))?;
                    let redb = consentd::store::RedbStore::open(dir.path())?;
                    support::write_contacts(&redb, &spec, args.contacts)?;
                    println!(
                        "wrote {} contacts in {:.1} s",
                        args.contacts,
                        started.elapsed().as_secs_f64()
                    );
                }
                config.store = match store.as_str() {
                    "postgres" => {
                        let pg: &support::throwaway::Throwaway = postgres.get_or_insert(
                            support::throwaway::Throwaway::start().map_err(anyhow::Error::msg)?,
                        );
                        pg.fresh_database()
                    }
                    other => other.to_owned(),
                };
                let started = Instant::now();
                let (addr, _, admin) = support::serve_with_admin(&server_rt, &config)?;
                if i == 0 && args.contacts > 0 {
                    println!(
                        "consentd started on them in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                let label = if store.starts_with("postgres") {
                    "postgres"
                } else {
                    store.as_str()
                };
                if store.starts_with("postgres") {
                    pg_urls.insert(label.to_owned(), config.store.clone());
                }
                targets.push((label.to_owned(), addr));
                admins.insert(label.to_owned(), admin);
                dirs.push(dir);
            }
        }
    }
    let target = targets[0].1;
    let bare = Arc::new(Bare {
        map: DashMap::new(),
        full: args.bare_full,
    });
    let baseline = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let svc = EligibilityServiceServer::from_arc(bare.clone())
            .max_decoding_message_size(8 * 1024 * 1024);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        anyhow::Ok(addr)
    })?;

    println!(
        "consentd load: target {target}, baseline {baseline} ({} answers), {} s/phase, {} connections, {} in flight, {} writers, {} cores",
        if args.bare_full { "full" } else { "minimal" },
        args.seconds,
        args.connections,
        args.inflight,
        args.writers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let targets_for_import = targets.clone();
    client_rt.block_on(async move {
        // 1. Durable grants, on each store.
        let mut seeded = 0;
        for (i, (label, addr)) in targets.iter().enumerate() {
            let chans = channels(*addr, args.connections).await;
            let next = Arc::new(AtomicU64::new(0));
            let (c2, n2) = (chans.clone(), next.clone());
            let before = admins.get(label).map(|a| support::scrape(*a));
            let wal_before = match pg_urls.get(label) {
                Some(url) => commits::Wal::read(url).await,
                None => None,
            };
            let grants = closed_loop(args.writers, args.seconds, move |t, _| {
                let mut client = ConsentsServiceClient::new(c2[t % c2.len()].clone());
                let id = n2.fetch_add(1, Ordering::Relaxed);
                async move {
                    let change = pb::GrantRequest {
                        contact_id: contact(id),
                        consent_id: "marketing".into(),
                        source: pb::Source::Api as i32,
                        ..Default::default()
                    };
                    client.grant(change).await?;
                    Ok(1)
                }
            })
            .await;
            println!(
                "{}",
                grants.line(&format!("Grant (durable, {label})"), "grants")
            );
            if let (Some(before), Some(admin)) = (before, admins.get(label)) {
                let after = support::scrape(*admin);
                commits::breakdown(&before, &after, &grants);
                commits::steps(&before, &after);
                let wal_after = match pg_urls.get(label) {
                    Some(url) => commits::Wal::read(url).await,
                    None => None,
                };
                if let (Some(b), Some(a)) = (wal_before, wal_after) {
                    let n = after.get("consentd_commits_total").unwrap_or(&0.0)
                        - before.get("consentd_commits_total").unwrap_or(&0.0);
                    b.since(&a, n);
                }
            }
            if label == "redb" {
                let raw_dir = tempfile::tempdir().expect("a temp dir");
                let raw = commits::raw_redb_commits(raw_dir.path(), args.seconds.min(5))
                    .expect("raw redb commits");
                println!(
                    "{:<34} {raw:>10.0} commits/s (one insert per fsync'd transaction)\n  Grant on redb / raw redb single commits: {:.1}×, p99 {:.2} ms",
                    "raw redb, single commits",
                    grants.ops as f64 / grants.seconds / raw,
                    grants.hist.value_at_quantile(0.99) as f64 / 1e6
                );
                // The same writes from the lean client (each a new
                // contact's), which leaves the cores to the server.
                let load = rawh2::Load {
                    connections: args.connections,
                    inflight: args.writers,
                    seconds: args.seconds,
                };
                rawh2::against_raw(*addr, baseline, label, load, raw).await;
            }
            if i == 0 {
                seeded = next.load(Ordering::Relaxed).max(1);
            }
        }
        let all = if args.contacts > 0 {
            Keys {
                n: args.contacts,
                crm: true,
            }
        } else {
            Keys {
                n: seeded,
                crm: false,
            }
        };
        if !args.writes_only {
            for k in 0..all.n {
                bare.map.insert(all.id(k), all.allowed(k));
            }
        }

        // 2. Cached keys, then all of them: consentd, then the bare server.
        let hot = Keys {
            n: args.hot.min(all.n),
            ..all
        };
        let mut plain = None;
        let reads = if args.writes_only {
            Vec::new()
        } else {
            vec![
                (format!("{} cached keys", hot.n), hot),
                (format!("{} random contacts", all.n), all),
            ]
        };
        for (label, keys) in reads {
            println!("-- {label}");
            let ours = measured(
                "CanSend (consentd)",
                "req",
                1.0,
                unary(target, &args, keys, false, false),
            )
            .await;
            let theirs = measured(
                "CanSend (bare tonic)",
                "req",
                1.0,
                unary(baseline, &args, keys, false, false),
            )
            .await;
            let batch = args.batch as f64;
            let ours_b = measured(
                "CanSendBatch (consentd)",
                "decisions",
                batch,
                batches(target, &args, keys),
            )
            .await;
            let theirs_b = measured(
                "CanSendBatch (bare tonic)",
                "decisions",
                batch,
                batches(baseline, &args, keys),
            )
            .await;
            ratio(&format!("unary, {label}"), &ours, &theirs);
            ratio(
                &format!("batch of {}, {label}", args.batch),
                &ours_b,
                &theirs_b,
            );
            plain.get_or_insert(ours.rate());
            // The same from a lean client, over 256 distinct batches.
            let bodies = (0..256u64)
                .map(|b| {
                    rawh2::framed(&pb::CanSendBatchRequest {
                        checks: (0..args.batch as u64)
                            .map(|k| check_of(keys, keys.pick(b * args.batch as u64 + k)))
                            .collect(),
                        min_sequence: 0,
                    })
                })
                .collect();
            let load = rawh2::Load {
                connections: args.connections,
                inflight: args.lean_inflight,
                seconds: args.seconds,
            };
            let bodies = Arc::new(bodies);
            rawh2::compare(target, baseline, &label, bodies, args.batch, load).await;
        }

        // 2b. Unary CanSend from an outside client (h2load), one contact.
        if !args.writes_only {
            let request = check_of(hot, 0);
            let load = h2load::Load {
                seconds: args.seconds,
                connections: args.connections,
                streams: args.inflight.div_ceil(args.connections),
            };
            // The same check asking for its List-Unsubscribe URL: the
            // server's own cost of the link, from a client whose cost per
            // call does not grow with the answer.
            if let Some((plain_rate, plain_cpu)) =
                h2load::compare(target, baseline, &request, load)
            {
                let with_url = pb::CanSendRequest {
                    include_unsubscribe: true,
                    ..request
                };
                let name = "CanSend + unsubscribe URL, h2load";
                if let Some((rate, cpu)) = h2load::phase(name, target, &with_url, load) {
                    println!(
                        "  {name} / plain: {:.1} % of the rate; server CPU per call {cpu:.2} vs {plain_cpu:.2} µs",
                        100.0 * rate / plain_rate
                    );
                }
            }
        }

        // 3. What a marketing mail asks: the List-Unsubscribe URL, the address.
        let plain = plain.unwrap_or(1.0);
        let extras = if args.writes_only {
            Vec::new()
        } else {
            vec![
                ("CanSend + unsubscribe URL", true, false),
                ("CanSend + to (address)", false, true),
            ]
        };
        for (name, url, to) in extras {
            let p = measured(name, "req", 1.0, unary(target, &args, hot, url, to)).await;
            println!(
                "  {name} / plain CanSend: {:.1} % of the rate",
                100.0 * p.rate() / plain
            );
        }

        // 4. One streamed import of `--import-rows` rows, durable, per store.
        for (label, addr) in targets_for_import {
            let rows = args.import_rows;
            let mut client = ConsentsServiceClient::new(channels(addr, 1).await.remove(0));
            let started = Instant::now();
            let stream = tokio_stream::iter((0..rows).map(|i| support::import_row(i, "load")));
            match client.import(stream).await {
                Ok(s) => {
                    let s = s.into_inner();
                    println!(
                        "{:<34} {:>10.0} rows/s  ({} rows, {} applied, {} rejected)",
                        format!("Import (durable, {label})"),
                        rows as f64 / started.elapsed().as_secs_f64(),
                        s.received,
                        s.applied,
                        s.rejected
                    );
                }
                Err(e) => println!("Import failed: {e}"),
            }
        }
    });
    drop(dirs);
    Ok(())
}
