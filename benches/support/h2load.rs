//! An outside load client for unary CanSend: `h2load` (nghttp2's, `apt-get
//! install nghttp2-client`) when it is installed, sending one framed
//! CanSendRequest over and over on a few connections. Its CPU per call is
//! a fraction of a tonic client's and does not depend on the answer's
//! fields, so the rate ratio shows the servers' own costs more nearly.

use std::net::SocketAddr;
use std::process::Command;

use super::support;

/// Unary CanSend from h2load against consentd, then the bare server, on
/// one contact (`request`'s): rates, the server threads' CPU per call,
/// ratios. Returns consentd's (rate, CPU per call), if h2load ran.
pub(crate) fn compare(
    target: SocketAddr,
    baseline: SocketAddr,
    request: &consentd::pb::CanSendRequest,
    load: Load,
) -> Option<(f64, f64)> {
    let ours = phase("CanSend, h2load (consentd)", target, request, load)?;
    let theirs = phase("CanSend, h2load (bare tonic)", baseline, request, load)?;
    println!(
        "  unary from h2load, 1 contact: consentd / bare = {:.2}× the rate; server CPU per call {:.2} vs {:.2} µs = {:.2}× less work",
        ours.0 / theirs.0,
        ours.1,
        theirs.1,
        theirs.1 / ours.1
    );
    Some(ours)
}

/// How h2load drives a server.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub(crate) seconds: u64,
    pub(crate) connections: usize,
    pub(crate) streams: usize,
}

/// One h2load phase against `addr`, printed as `name`: its rate and the
/// server threads' CPU per call; `None` (said once) when h2load is not
/// installed or failed.
pub(crate) fn phase(
    name: &str,
    addr: SocketAddr,
    request: &consentd::pb::CanSendRequest,
    load: Load,
) -> Option<(f64, f64)> {
    let cpu = support::cpu_seconds("server");
    match can_send(addr, request, load.seconds, load.connections, load.streams) {
        Ok(Some(run)) => {
            let calls = run.rate * load.seconds as f64;
            let per_call = (support::cpu_seconds("server") - cpu) * 1e6 / calls.max(1.0);
            println!(
                "{name:<34} {:>10.0} req/s  ({} succeeded, {} failed)  CPU per call: server {per_call:.2} µs",
                run.rate, run.succeeded, run.failed
            );
            Some((run.rate, per_call))
        }
        Ok(None) => {
            println!(
                "-- h2load is not installed (apt-get install nghttp2-client): no outside-client phase"
            );
            None
        }
        Err(e) => {
            println!("-- h2load failed: {e}");
            None
        }
    }
}

/// What one h2load run reported.
pub(crate) struct Run {
    pub(crate) rate: f64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
}

/// Runs h2load for `seconds` against `addr`'s CanSend with `request`;
/// `None` when h2load is not installed.
pub(crate) fn can_send(
    addr: SocketAddr,
    request: &consentd::pb::CanSendRequest,
    seconds: u64,
    connections: usize,
    streams: usize,
) -> anyhow::Result<Option<Run>> {
    let body = tempfile::NamedTempFile::new()?;
    std::fs::write(body.path(), super::rawh2::framed(request))?;
    let output = match Command::new("h2load")
        .arg(format!("--duration={seconds}"))
        .arg(format!("--clients={connections}"))
        .arg(format!("--max-concurrent-streams={streams}"))
        .arg("--threads=1")
        .arg("--data")
        .arg(body.path())
        .args(["--header", "content-type: application/grpc"])
        .args(["--header", "te: trailers"])
        .arg(format!(
            "http://{addr}/consent.v1.EligibilityService/CanSend"
        ))
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |line: &str, after: &str, before: &str| -> Option<f64> {
        let (_, rest) = line.split_once(after)?;
        rest.split(before).next()?.trim().parse().ok()
    };
    let mut run = Run {
        rate: 0.0,
        succeeded: 0,
        failed: 0,
    };
    for line in text.lines() {
        if line.starts_with("finished in") {
            run.rate = field(line, ",", "req/s").unwrap_or(0.0);
        }
        if line.starts_with("requests:") {
            run.succeeded = field(line, "done,", "succeeded").unwrap_or(0.0) as u64;
            run.failed = field(line, "succeeded,", "failed").unwrap_or(0.0) as u64;
        }
    }
    anyhow::ensure!(run.rate > 0.0, "h2load said:\n{text}");
    Ok(Some(run))
}
