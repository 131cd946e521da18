//! Several nodes on one PostgreSQL: `cargo bench --bench nodes [-- --nodes 3
//! --seconds 6 --writes 500]` starts a throwaway PostgreSQL server and N
//! consentd nodes on it (in this process, as the load bench does), then
//! reports:
//!
//! 1. durable grants/s with 64 writers spread over the nodes;
//! 2. propagation under that write load: a grant on one node, then a
//!    CanSend on the next node carrying the grant's sequence as its
//!    freshness token; the time from the grant's answer to the CanSend's
//!    (p50/p99/max over `--writes` writes) is how long a change takes to be
//!    applied elsewhere;
//! 3. CanSend/s on each node alone, then on all at once, and the database
//!    transactions counted meanwhile (`pg_stat_database`): what the feed's
//!    idle polls cost, against the number of CanSend answered (reads never
//!    touch the database).

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;
use consentd::pb::{
    self, consents_service_client::ConsentsServiceClient,
    eligibility_service_client::EligibilityServiceClient,
};
use hdrhistogram::Histogram;
use support::{channels, closed_loop};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Nodes on the one database.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Writes whose propagation is timed.
    #[arg(long, default_value_t = 500)]
    writes: u64,
    /// Concurrent writers in the grant phase (spread over the nodes).
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn grant(contact: String, consent: &str) -> pb::GrantRequest {
    pb::GrantRequest {
        contact_id: contact,
        consent_id: consent.into(),
        source: pb::Source::Api as i32,
        ..Default::default()
    }
}

/// Transactions the database has counted so far.
async fn transactions(url: &str) -> anyhow::Result<i64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    let n: i64 = client
        .query_one(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    drop(client);
    let _ = conn.await;
    Ok(n)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pg = support::throwaway::Throwaway::start().map_err(anyhow::Error::msg)?;
    let url = pg.fresh_database();
    let server_rt = support::runtime("server")?;
    let client_rt = support::runtime("client")?;
    let mut dirs = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for i in 0..args.nodes {
        let dir = tempfile::tempdir()?;
        let mut config = consentd::Config::ephemeral(dir.path());
        config.store = url.clone();
        // One cluster, one checkpoint key (DESIGN.md §11).
        config.signing_key = Some(
            dirs.first()
                .map_or(dir.path(), |d: &tempfile::TempDir| d.path())
                .join("signing.key"),
        );
        if i == 0 {
            config.catalog =
                Some(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml").into());
        }
        addrs.push(support::serve(&server_rt, &config)?.0);
        dirs.push(dir);
    }
    println!(
        "consentd nodes: {} nodes on one PostgreSQL 15 (same machine), {} s/phase, {} cores",
        args.nodes,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    client_rt.block_on(async move {
        let mut node_channels = Vec::new();
        for &addr in &addrs {
            node_channels.push(channels(addr, 2).await);
        }
        let node_channels = Arc::new(node_channels);

        // 1. Durable grants, writers spread over the nodes.
        let next = Arc::new(AtomicU64::new(0));
        let (chans, n2) = (node_channels.clone(), next.clone());
        let nodes = args.nodes;
        let grants = closed_loop(args.writers, args.seconds, move |t, _| {
            let node = &chans[t % nodes];
            let mut client = ConsentsServiceClient::new(node[t % node.len()].clone());
            let id = n2.fetch_add(1, Ordering::Relaxed);
            async move {
                client
                    .grant(grant(format!("node-{id:09}"), "marketing"))
                    .await?;
                Ok(1)
            }
        })
        .await;
        println!(
            "{}",
            grants.line(&format!("Grant (durable, {nodes} nodes)"), "grants")
        );
        let seeded = next.load(Ordering::Relaxed).max(1);

        // 2. Propagation under write load: background writers keep going.
        let stop = Arc::new(AtomicBool::new(false));
        let mut background = Vec::new();
        for t in 0..(args.writers / 2).max(1) {
            let node = &node_channels[t % nodes];
            let mut client = ConsentsServiceClient::new(node[t % node.len()].clone());
            let stop = stop.clone();
            background.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = client
                        .grant(grant(format!("bg-{t}-{i}"), "surveys"))
                        .await;
                    i += 1;
                }
            }));
        }
        let mut delays = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for w in 0..args.writes {
            let from = (w as usize) % nodes;
            let to = (from + 1) % nodes;
            let mut writer = ConsentsServiceClient::new(node_channels[from][0].clone());
            let mut reader = EligibilityServiceClient::new(node_channels[to][0].clone());
            let who = format!("prop-{w}");
            let sequence = writer
                .grant(grant(who.clone(), "marketing"))
                .await?
                .into_inner()
                .sequence;
            let acked = Instant::now();
            let answer = reader
                .can_send(pb::CanSendRequest {
                    contact_id: who,
                    channel: "email".into(),
                    brand: "zenith".into(),
                    min_sequence: sequence,
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::ensure!(answer.allowed, "node {to} did not see the grant");
            delays.record(acked.elapsed().as_micros() as u64)?;
        }
        stop.store(true, Ordering::Relaxed);
        for b in background {
            let _ = b.await;
        }
        let ms = |q: f64| delays.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "propagation under write load ({} writes, grant on one node, token'd CanSend on the next): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            args.writes,
            ms(0.5),
            ms(0.99),
            delays.max() as f64 / 1000.0
        );

        // 3. CanSend on each node alone, then on all at once.
        let check = move |chans: Arc<Vec<Vec<tonic::transport::Channel>>>, node: Option<usize>| {
            move |t: usize, i: u64| {
                let n = node.unwrap_or(t % chans.len());
                let mut client = EligibilityServiceClient::new(chans[n][t % chans[n].len()].clone());
                let who = format!("node-{:09}", (i.wrapping_mul(2654435761) ^ t as u64) % seeded);
                async move {
                    let r = client
                        .can_send(pb::CanSendRequest {
                            contact_id: who,
                            channel: "email".into(),
                            brand: "acme".into(),
                            ..Default::default()
                        })
                        .await?;
                    if !r.get_ref().allowed {
                        return Err(tonic::Status::internal("seeded contact not allowed"));
                    }
                    Ok(1)
                }
            }
        };
        for n in 0..nodes {
            let report = closed_loop(64, args.seconds, check(node_channels.clone(), Some(n))).await;
            println!("{}", report.line(&format!("CanSend, node {n} alone"), "req"));
        }
        let before = transactions(&url).await?;
        let report = closed_loop(64, args.seconds, check(node_channels.clone(), None)).await;
        let after = transactions(&url).await?;
        println!("{}", report.line(&format!("CanSend, all {nodes} nodes at once"), "req"));
        println!(
            "database transactions during that phase: {} (the feeds' idle polls), for {} CanSend answered: {:.6} per CanSend",
            after - before,
            report.ops,
            (after - before) as f64 / report.ops.max(1) as f64
        );
        anyhow::Ok(())
    })?;
    drop(dirs);
    drop(pg);
    Ok(())
}
