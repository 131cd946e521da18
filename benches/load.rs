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
//! Without `--addr` it starts consentd (temp data dir, examples/catalog.toml)
//! and a bare tonic server that answers CanSend from a DashMap, each on its
//! own 2-thread runtime, so client and servers share the machine's cores as
//! they would on one box. Reports, in order:
//! 1. durable Grant/s with `--writers` concurrent writers, and latency;
//! 2. unary CanSend requests/s and p50/p99/p999 at `--connections` and
//!    `--inflight`, for consentd and for the baseline, and their ratio;
//!    then with the List-Unsubscribe URL, then naming the address (`to`);
//! 3. CanSendBatch decisions/s with 1000-check batches.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use support::{channels, closed_loop};

use clap::Parser;
use consentd::pb::{
    self,
    consents_service_client::ConsentsServiceClient,
    eligibility_service_client::EligibilityServiceClient,
    eligibility_service_server::{EligibilityService, EligibilityServiceServer},
};
use dashmap::DashMap;
use tonic::{Request, Response, Status};

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
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    batch_inflight: usize,
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

/// The baseline: the least a tonic server can do for a CanSend.
struct Bare {
    map: DashMap<String, bool>,
}

#[tonic::async_trait]
impl EligibilityService for Bare {
    async fn can_send(
        &self,
        r: Request<pb::CanSendRequest>,
    ) -> Result<Response<pb::CanSendResponse>, Status> {
        let allowed = self.map.get(&r.get_ref().contact_id).is_some_and(|v| *v);
        Ok(Response::new(pb::CanSendResponse {
            allowed,
            reason: if allowed {
                pb::Reason::Granted
            } else {
                pb::Reason::NoConsent
            } as i32,
            ..Default::default()
        }))
    }

    async fn can_send_batch(
        &self,
        _: Request<pb::CanSendBatchRequest>,
    ) -> Result<Response<pb::CanSendBatchResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

fn contact(i: u64) -> String {
    format!("load-{i:09}")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server_rt = support::runtime("server")?;
    let client_rt = support::runtime("client")?;

    // The servers: one consentd per store.
    let mut dirs = Vec::new();
    let mut postgres = None;
    let mut targets: Vec<(String, SocketAddr)> = Vec::new();
    match args.addr {
        Some(a) => targets.push(("running".into(), a)),
        None => {
            for store in &args.store {
                let dir = tempfile::tempdir()?;
                let mut config = consentd::Config::ephemeral(dir.path());
                config.catalog =
                    Some(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml").into());
                config.store = match store.as_str() {
                    "postgres" => {
                        let pg: &support::throwaway::Throwaway = postgres.get_or_insert(
                            support::throwaway::Throwaway::start().map_err(anyhow::Error::msg)?,
                        );
                        pg.fresh_database()
                    }
                    other => other.to_owned(),
                };
                let addr = support::serve(&server_rt, &config)?.0;
                let label = if store.starts_with("postgres") {
                    "postgres"
                } else {
                    store.as_str()
                };
                targets.push((label.to_owned(), addr));
                dirs.push(dir);
            }
        }
    }
    let target = targets[0].1;
    let bare = Arc::new(Bare {
        map: DashMap::new(),
    });
    let baseline = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let svc = EligibilityServiceServer::from_arc(bare.clone());
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
        "consentd load: target {target}, baseline {baseline}, {} s/phase, {} connections, {} in flight, {} writers, {} cores",
        args.seconds,
        args.connections,
        args.inflight,
        args.writers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let targets_for_import = targets.clone();
    client_rt.block_on(async move {
        // 1. Durable grants, on each store; the first one's contacts are
        // the ones CanSend asks about.
        let mut seeded = 0;
        for (i, (label, addr)) in targets.iter().enumerate() {
            let chans = channels(*addr, args.connections).await;
            let next = Arc::new(AtomicU64::new(0));
            let (c2, n2) = (chans.clone(), next.clone());
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
            if i == 0 {
                seeded = next.load(Ordering::Relaxed).max(1);
            }
        }
        for i in 0..seeded {
            bare.map.insert(contact(i), true);
        }

        // 2. Unary CanSend: consentd, then the bare baseline.
        let mut rates = Vec::new();
        // The third run asks for the List-Unsubscribe URL with every answer;
        // the fourth names the address each message goes to (`to`).
        for (name, addr, include_unsubscribe, with_to) in [
            ("CanSend (consentd)", target, false, false),
            ("CanSend (bare tonic baseline)", baseline, false, false),
            ("CanSend + unsubscribe URL", target, true, false),
            ("CanSend + to (address)", target, false, true),
        ] {
            let chans = channels(addr, args.connections).await;
            let report = closed_loop(args.inflight, args.seconds, move |t, i| {
                let mut client = EligibilityServiceClient::new(chans[t % chans.len()].clone());
                let who = contact((i.wrapping_mul(2654435761) ^ t as u64) % seeded);
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
                    if !r.allowed || include_unsubscribe == r.unsubscribe_url.is_empty() {
                        return Err(Status::internal("seeded contact not allowed, or no URL"));
                    }
                    Ok(1)
                }
            })
            .await;
            println!("{}", report.line(name, "req"));
            rates.push(report.ops as f64 / report.seconds);
            if rates.len() == 2 {
                println!(
                    "CanSend consentd / baseline: {:.1} %",
                    100.0 * rates[0] / rates[1]
                );
            }
            if rates.len() == 3 {
                println!(
                    "CanSend with the unsubscribe URL / without: {:.1} % of the rate",
                    100.0 * rates[2] / rates[0]
                );
            }
            if rates.len() == 4 {
                println!(
                    "CanSend with to / without: {:.1} % of the rate",
                    100.0 * rates[3] / rates[0]
                );
            }
        }

        // 3. Batches.
        let chans = channels(target, args.connections).await;
        let batch = args.batch;
        // Built once: the client's cost per batch is then a clone, not 1000 format!s.
        let batches: Arc<Vec<pb::CanSendBatchRequest>> = Arc::new(
            (0..16u64)
                .map(|b| pb::CanSendBatchRequest {
                    checks: (0..batch as u64)
                        .map(|k| pb::CanSendRequest {
                            contact_id: contact(
                                (b * batch as u64 + k).wrapping_mul(2654435761) % seeded,
                            ),
                            channel: "sms".into(),
                            brand: "zenith".into(),
                            ..Default::default()
                        })
                        .collect(),
                    min_sequence: 0,
                })
                .collect(),
        );
        let report = closed_loop(args.batch_inflight, args.seconds, move |t, i| {
            let mut client = EligibilityServiceClient::new(chans[t % chans.len()].clone());
            let request = batches[(i as usize + t) % batches.len()].clone();
            async move {
                let r = client.can_send_batch(request).await?;
                Ok(r.get_ref().results.len() as u64)
            }
        })
        .await;
        println!(
            "{}",
            report.line(&format!("CanSendBatch ({batch} checks)"), "decisions")
        );

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
