//! Memory an import leaves behind: `cargo bench --bench memory [-- --rows N]`
//! starts the real `consentd` binary, streams one import of N rows (default
//! 1,000,000 new contacts) and prints the server's resident memory before,
//! right after, and after 15 s idle. What remains is the index of the new
//! contacts and the store cache; the import's transient buffers go back to
//! the system (jemalloc background threads purge freed pages after ~10 s).
//!
//! Compare with the allocator's own retention:
//! `_RJEM_MALLOC_CONF=background_thread:false cargo bench --bench memory`.

#[path = "../tests/soak_cycles/process.rs"]
mod process;
#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use consentd::pb::consents_service_client::ConsentsServiceClient;

fn rss_mb(pid: u32) -> f64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (pages * 4096) as f64 / 1e6
}

fn main() -> anyhow::Result<()> {
    let mut rows = 1_000_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rows" {
            rows = args.next().and_then(|n| n.parse().ok()).expect("--rows N");
        }
    }
    let dir = tempfile::tempdir()?;
    let catalog = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/catalog.toml"
    ));
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_consentd"));
    let server = process::start(binary, dir.path(), Some(catalog));
    let pid = server.child.id();
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_mb(pid);

    let runtime = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    let summary = runtime.block_on(async {
        let mut client = ConsentsServiceClient::connect(format!("http://{}", server.grpc)).await?;
        let stream = tokio_stream::iter((0..rows).map(|i| support::import_row(i, "memory")));
        anyhow::Ok(client.import(stream).await?.into_inner())
    })?;
    let took = started.elapsed().as_secs_f64();
    let after = rss_mb(pid);
    std::thread::sleep(Duration::from_secs(15));
    let settled = rss_mb(pid);
    println!(
        "import of {} rows ({} applied) in {took:.1} s; consentd RSS: {before:.0} MB before, {after:.0} MB right after, {settled:.0} MB after 15 s idle = {:.0} B per imported contact kept",
        summary.received,
        summary.applied,
        (settled - before) * 1e6 / summary.applied.max(1) as f64
    );
    server.kill();
    Ok(())
}
