//! What more than one bench needs (each uses its own part of it).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The throwaway PostgreSQL server of the tests.
#[path = "../../tests/support/sign.rs"]
pub(crate) mod sign;
#[path = "../../tests/support/throwaway.rs"]
pub(crate) mod throwaway;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// Resident memory of this process, in bytes (Linux; 0 elsewhere).
pub(crate) fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Row `i` of a bench import: a grant of `marketing.zenith` to a new
/// contact, decided in the past, with one evidence entry.
pub(crate) fn import_row(i: u64, batch: &str) -> consentd::pb::ImportRequest {
    use consentd::pb;
    pb::ImportRequest {
        action: pb::Action::Grant as i32,
        change: Some(pb::ConsentChange {
            contact_id: format!("import-{i:09}"),
            consent_id: "marketing.zenith".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i as i64,
                nanos: 0,
            }),
            source: pb::Source::Import as i32,
            evidence: [("import_batch".to_string(), batch.to_string())].into(),
            ..Default::default()
        }),
    }
}

/// A runtime of two worker threads: servers on one, clients on another,
/// sharing the machine's cores as they would on one box.
pub(crate) fn runtime(name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
}

/// `n` HTTP/2 connections to `addr`.
pub(crate) async fn channels(addr: SocketAddr, n: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        out.push(ch);
    }
    out
}

/// What a closed loop did: operations, errors, and their latencies.
pub(crate) struct Report {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) hist: Histogram<u64>,
}

impl Report {
    pub(crate) fn line(&self, what: &str, unit: &str) -> String {
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "{what:<34} {:>10.0} {unit}/s  p50 {:>7.1} µs  p99 {:>7.1} µs  p999 {:>7.1} µs  ({} ops, {} errors)",
            self.ops as f64 / self.seconds,
            us(0.50),
            us(0.99),
            us(0.999),
            self.ops,
            self.errors
        )
    }
}

/// Runs `tasks` closed loops for `seconds`; each call returns how many ops it did.
pub(crate) async fn closed_loop<F, Fut>(tasks: usize, seconds: u64, make: F) -> Report
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64, Status>> + Send,
{
    let make = Arc::new(make);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let make = make.clone();
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
            let (mut ops, mut errors, mut i) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match make(t, i).await {
                    Ok(n) => {
                        ops += n;
                        let _ = hist.record(t0.elapsed().as_nanos() as u64);
                    }
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (ops, errors, hist)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = Report {
        ops: 0,
        errors: 0,
        seconds: 0.0,
        hist: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).unwrap(),
    };
    for h in handles {
        let (ops, errors, hist) = h.await.unwrap();
        report.ops += ops;
        report.errors += errors;
        report.hist.add(hist).unwrap();
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Starts consentd with `config` on `rt`, serving until the process ends;
/// its (gRPC, HTTP) addresses.
pub(crate) fn serve(
    rt: &tokio::runtime::Runtime,
    config: &consentd::Config,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    serve_with_admin(rt, config).map(|(grpc, http, _)| (grpc, http))
}

/// As [`serve`], with the admin address (`/metrics`) too.
pub(crate) fn serve_with_admin(
    rt: &tokio::runtime::Runtime,
    config: &consentd::Config,
) -> anyhow::Result<(SocketAddr, SocketAddr, SocketAddr)> {
    rt.block_on(async {
        let bound = consentd::server::Server::bind(config).await?;
        let addrs = (bound.grpc_addr, bound.http_addr, bound.admin_addr);
        tokio::spawn(bound.serve(std::future::pending()));
        Ok(addrs)
    })
}

/// The id of contact `i` of [`write_contacts`].
pub(crate) fn crm_contact(i: u64) -> String {
    format!("crm-{i:08}")
}

/// `contacts` contacts (`crm-00000001`…) with one state each of
/// `marketing.acme` (every tenth withdrawn, the rest granted), written
/// straight through the store in 10,000-event commits.
pub(crate) fn write_contacts(
    store: &dyn consentd::store::Store,
    spec: &consentd::domain::CatalogSpec,
    contacts: u64,
) -> anyhow::Result<()> {
    use consentd::domain::{Action, ConsentId, ContactId, EventRecord, Source};
    let consent = ConsentId::parse("consent", "marketing.acme")?;
    let mut seq = 1u64;
    while seq <= contacts {
        let end = (seq + 10_000).min(contacts + 1);
        let events = (seq..end)
            .map(|i| EventRecord {
                contact: ContactId::parse("contact", &crm_contact(i)).expect("valid id"),
                consent: consent.clone(),
                action: if i % 10 == 0 {
                    Action::Withdraw
                } else {
                    Action::Grant
                },
                occurred_at: 1_700_000_000_000_000_000 + i as i64,
                recorded_at: 1_700_000_000_000_000_000 + i as i64,
                source: Source::Import,
                evidence: [("batch".to_string(), "2026-11".to_string())].into(),
                version: 1,
                sequence: i,
                idempotency_key: None,
                applied: true,
                actor: "crm-import".into(),
                pending: false,
                confirmed: false,
                confirmation_link: false,
                chain: None,
            })
            .collect();
        store.commit(&consentd::store::WriteBatch {
            events,
            catalog: (seq == 1).then(|| spec.clone()),
            next_sequence: end,
            ..Default::default()
        })?;
        seq = end;
    }
    Ok(())
}

/// CPU time (user + system) spent so far by this process's threads whose
/// name starts with `prefix` (a runtime's workers: see [`runtime`]), in
/// seconds; Linux only (0 elsewhere).
pub(crate) fn cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    // Clock ticks per second: 100 on every Linux this runs on.
    const TICKS: f64 = 100.0;
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let named = std::fs::read_to_string(path.join("comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with(prefix));
        if !named {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state is 3rd,
        // utime 14th and stime 15th of the whole line.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ticks as f64 / TICKS
}

/// The unlabelled series of a consentd's `/metrics` (name → value), read
/// with one plain HTTP/1.1 GET.
pub(crate) fn scrape(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    use std::io::{Read, Write};
    let mut text = String::new();
    if let Ok(mut conn) = std::net::TcpStream::connect(admin) {
        let _ = write!(
            conn,
            "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
        );
        let _ = conn.read_to_string(&mut text);
    }
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}
