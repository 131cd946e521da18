//! A lean gRPC client for CanSendBatch and Grant: HTTP/2 straight from the
//! `h2` crate, every request encoded once beforehand, each answer checked
//! for its gRPC status and read to its end but not decoded. Its CPU per
//! call is a small part of the tonic client's, so on these 2 shared cores
//! the rates show more of the servers' own costs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::support;

/// Each request's body, framed for gRPC (a flag byte, a 4-byte length).
pub(crate) fn framed(request: &impl Message) -> Bytes {
    let message = request.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

/// What one run did: calls answered OK, calls failed, seconds, and each
/// answered call's latency (ns).
pub(crate) struct Run {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) seconds: f64,
    pub(crate) latency: hdrhistogram::Histogram<u64>,
}

/// Sends `bodies` round-robin to `path` on `connections` connections with
/// `inflight` calls outstanding in all, for `seconds`.
pub(crate) async fn run(
    addr: SocketAddr,
    path: &'static str,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    inflight: usize,
    seconds: u64,
) -> anyhow::Result<Run> {
    let calls = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for c in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(conn);
        for w in (c..inflight).step_by(connections) {
            let (send, bodies) = (send.clone(), bodies.clone());
            let (calls, failed) = (calls.clone(), failed.clone());
            workers.push(tokio::spawn(async move {
                let mut latency = hdrhistogram::Histogram::<u64>::new(3).expect("3 digits");
                let mut i = w;
                loop {
                    let sent = Instant::now();
                    if sent >= deadline {
                        break;
                    }
                    let body = bodies[i % bodies.len()].clone();
                    i += inflight;
                    match call(send.clone(), addr, path, body).await {
                        Ok(()) => {
                            calls.fetch_add(1, Ordering::Relaxed);
                            // `record` grows the histogram as needed
                            // (`saturating_record` would clamp to its
                            // first, tiny range).
                            let _ = latency.record(sent.elapsed().as_nanos() as u64);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    };
                }
                latency
            }));
        }
    }
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    for w in workers {
        latency.add(w.await?)?;
    }
    Ok(Run {
        calls: calls.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        latency,
    })
}

/// One call: the request, its body, the answer read to its trailers,
/// which must say `grpc-status: 0`.
async fn call(
    send: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
) -> anyhow::Result<()> {
    let mut send = send.ready().await?;
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut stream) = send.send_request(request, false)?;
    stream.send_data(body, true)?;
    let mut answer = response.await?.into_body();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk?;
        answer.flow_control().release_capacity(chunk.len())?;
    }
    let trailers = answer.trailers().await?;
    let ok = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|s| s == "0");
    anyhow::ensure!(ok, "grpc-status {trailers:?}");
    Ok(())
}

/// How hard a run pushes: connections, calls in flight over them, seconds.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub(crate) connections: usize,
    pub(crate) inflight: usize,
    pub(crate) seconds: u64,
}

/// CanSendBatch with `bodies` against consentd, then the bare server:
/// rates, the server and client threads' CPU per batch, the ratios.
pub(crate) async fn compare(
    target: SocketAddr,
    baseline: SocketAddr,
    label: &str,
    bodies: Arc<Vec<Bytes>>,
    checks: usize,
    load: Load,
) {
    let Load {
        connections,
        inflight,
        seconds,
    } = load;
    const PATH: &str = "/consent.v1.EligibilityService/CanSendBatch";
    let mut runs = Vec::new();
    for (name, addr) in [("consentd", target), ("bare tonic", baseline)] {
        let (server, client) = (
            support::cpu_seconds("server"),
            support::cpu_seconds("client"),
        );
        match run(addr, PATH, bodies.clone(), connections, inflight, seconds).await {
            Ok(r) => {
                let calls = r.calls.max(1) as f64;
                let server = (support::cpu_seconds("server") - server) * 1e6 / calls;
                let client = (support::cpu_seconds("client") - client) * 1e6 / calls;
                let rate = r.calls as f64 * checks as f64 / r.seconds;
                println!(
                    "{:<34} {rate:>10.0} decisions/s  ({} batches, {} failed)  CPU per call: server {server:.2} µs, client {client:.2} µs",
                    format!("CanSendBatch, lean client ({name})"),
                    r.calls,
                    r.failed
                );
                runs.push((rate, server));
            }
            Err(e) => {
                println!("-- the lean client failed: {e}");
                return;
            }
        }
    }
    if let [(ours, ours_cpu), (theirs, theirs_cpu)] = runs[..] {
        println!(
            "  batch of {checks} from the lean client, {label}: consentd / bare = {:.2}× the rate; server CPU per call {ours_cpu:.2} vs {theirs_cpu:.2} µs = {:.2}× less work",
            ours / theirs,
            theirs_cpu / ours_cpu
        );
    }
}

/// Durable Grants from the lean client, `load.inflight` in flight, each a
/// new contact's, against `target`. Prints the rate, its latency and both
/// sides' CPU per grant (the server's call path: its runtime's threads;
/// the writer thread apart, with its mostly idle ticker, whose name it
/// starts: ruling, the store's transaction, the log's fsync, answering);
/// returns the rate and its p99 (ms).
async fn grants(target: SocketAddr, label: &str, load: Load) -> Option<Grants> {
    const PATH: &str = "/consent.v1.ConsentsService/Grant";
    // 120,000 a second: more than one consentd takes on these machines, so
    // no contact is granted twice.
    let bodies: Vec<Bytes> = (0..load.seconds * 120_000)
        .map(|i| {
            framed(&consentd::pb::GrantRequest {
                contact_id: format!("lean-{i:09}"),
                consent_id: "marketing".into(),
                source: consentd::pb::Source::Api as i32,
                ..Default::default()
            })
        })
        .collect();
    let (r, cpu) = measured(
        target,
        PATH,
        bodies,
        load,
        ["server", "consentd-writer", "client"],
    )
    .await?;
    let [server, writer, client] = cpu;
    let rate = r.calls as f64 / r.seconds;
    let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1e6;
    println!(
        "{:<34} {rate:>10.0} grants/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} grants, {} failed)  CPU per grant: server call path {server:.2} µs, writer {writer:.2} µs, client {client:.2} µs",
        format!("Grant, lean client ({label})"),
        ms(0.5),
        ms(0.99),
        r.calls,
        r.failed
    );
    Some(Grants {
        rate,
        p99: ms(0.99),
        cpu,
    })
}

/// The lean client's Grant phase against `raw` redb single commits a
/// second: its ratio, what a writer costing nothing would give at the CPU
/// the threads used (the call path and the client are HTTP/2 on these
/// same cores), and the ceiling: the bare server at `baseline`, nothing
/// written, from the same client, which no unary write can pass here.
pub(crate) async fn against_raw(
    target: SocketAddr,
    baseline: SocketAddr,
    label: &str,
    load: Load,
    raw: f64,
) {
    let Some(lean) = grants(target, label, load).await else {
        return;
    };
    println!(
        "  Grant from the lean client / raw redb single commits: {:.1}×, p99 {:.2} ms",
        lean.rate / raw,
        lean.p99
    );
    let (free, budget) = lean.budget(10.0 * raw);
    let [_, writer, _] = lean.cpu;
    println!(
        "  at the CPU these threads used, a writer costing nothing would give {:.1}× raw redb; 10× leaves the writer {budget:.2} µs a grant (it spent {writer:.2})",
        free / raw,
    );
    if let Some(ceiling) = bare_unary(baseline, load).await {
        println!(
            "  the ceiling here: the bare server writing nothing = {:.1}× raw redb single commits; Grant reaches {:.0}% of it",
            ceiling / raw,
            100.0 * lean.rate / ceiling
        );
    }
}

/// The lean client's Grant phase: grants a second, p99 (ms), and the CPU
/// per grant (µs) of the server's call path, the writer and the client.
struct Grants {
    rate: f64,
    p99: f64,
    cpu: [f64; 3],
}

impl Grants {
    /// What bounds the rate on these cores: at the CPU the three used, a
    /// writer costing nothing would give (grants/s), and the most the
    /// writer may spend a grant (µs) for `target` grants/s.
    fn budget(&self, target: f64) -> (f64, f64) {
        let [server, writer, client] = self.cpu;
        let cores = self.rate * (server + writer + client) / 1e6;
        let others = (server + client).max(f64::MIN_POSITIVE);
        (cores * 1e6 / others, cores * 1e6 / target - others)
    }
}

/// `run` with `load`, and the CPU per call of the threads whose names
/// start with each of `threads` (µs); `None`, said, if it failed.
async fn measured<const N: usize>(
    addr: SocketAddr,
    path: &'static str,
    bodies: Vec<Bytes>,
    load: Load,
    threads: [&str; N],
) -> Option<(Run, [f64; N])> {
    let before = threads.map(support::cpu_seconds);
    let r = run(
        addr,
        path,
        Arc::new(bodies),
        load.connections,
        load.inflight,
        load.seconds,
    )
    .await
    .inspect_err(|e| println!("-- the lean client failed against {addr}: {e}"))
    .ok()?;
    let calls = r.calls.max(1) as f64;
    let cpu = std::array::from_fn(|i| (support::cpu_seconds(threads[i]) - before[i]) * 1e6 / calls);
    Some((r, cpu))
}

/// The ceiling for any unary write on these cores: unary CanSend from the
/// same lean client, with the same load, against the bare tonic server,
/// which writes nothing and answers from an empty map. Prints its rate and
/// both sides' CPU per call; returns the rate.
async fn bare_unary(baseline: SocketAddr, load: Load) -> Option<f64> {
    const PATH: &str = "/consent.v1.EligibilityService/CanSend";
    let bodies: Vec<Bytes> = (0..4096)
        .map(|i| {
            framed(&consentd::pb::CanSendRequest {
                contact_id: format!("lean-{i:09}"),
                channel: "email".into(),
                brand: "acme".into(),
                ..Default::default()
            })
        })
        .collect();
    let (r, [server, client]) =
        measured(baseline, PATH, bodies, load, ["server", "client"]).await?;
    let rate = r.calls as f64 / r.seconds;
    println!(
        "{:<34} {rate:>10.0} calls/s   p50 {:>6.2} ms  p99 {:>6.2} ms  ({} calls, {} failed)  CPU per call: server {server:.2} µs, client {client:.2} µs",
        "unary CanSend, lean client (bare)",
        r.latency.value_at_quantile(0.5) as f64 / 1e6,
        r.latency.value_at_quantile(0.99) as f64 / 1e6,
        r.calls,
        r.failed
    );
    Some(rate)
}
