//! Start-up: how fast the index is rebuilt from redb, and how long the
//! post-erasure rewrite pauses writes.
//!
//! `cargo bench --bench startup [-- --contacts N] [--store-cache-mb M]` writes N contacts with one
//! state each straight through the store (in 10,000-event transactions),
//! then times `Authority::open`, which loads the catalog and rebuilds the
//! index, and reports states/s; then erases one contact and times the
//! online rewrite that purges it from the file.
//!
//! `-- --store postgres` does the same on a throwaway PostgreSQL server of
//! this machine (rows written in 10,000-event transactions, then the index
//! rebuilt from it); the purge there is a VACUUM.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use consentd::authority::{Authority, Options};
use consentd::domain::CatalogSpec;
use consentd::store::{RedbStore, Store, Tombstone};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// In a fresh process: open the store in `dir` as the server does, rebuild
/// the index, and print the whole process's resident memory.
fn open_only(dir: &std::path::Path, cache_mb: usize) -> anyhow::Result<()> {
    let store = RedbStore::open_with_cache(dir, cache_mb * 1024 * 1024)?;
    let links = consentd::links::Links::open(dir, &[], "http://127.0.0.1:8080")?;
    let store: Arc<dyn Store> = Arc::new(store);
    let (authority, report) = Authority::open(store, links, Options::default())?;
    let rss = support::rss_bytes();
    println!(
        "memory: a fresh process serving {} contacts, store cache {cache_mb} MiB, is {} MB resident = {:.0} B per contact (index, catalog, store cache, allocator)",
        report.contacts,
        rss / 1_000_000,
        rss as f64 / report.contacts.max(1) as f64
    );
    tokio::runtime::Runtime::new()?.block_on(authority.close())?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut contacts: u64 = 1_000_000;
    let mut on_postgres = false;
    // As the server's --store-cache-mb.
    let mut cache_mb = consentd::store::DEFAULT_CACHE_BYTES / (1024 * 1024);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--store" {
            on_postgres = args.next().as_deref() == Some("postgres");
        }
        if a == "--contacts" {
            contacts = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--contacts N");
        }
        if a == "--store-cache-mb" {
            cache_mb = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--store-cache-mb N");
        }
        if a == "--open-only" {
            let dir = args.next().expect("--open-only DIR");
            return open_only(std::path::Path::new(&dir), cache_mb);
        }
    }
    let dir = tempfile::tempdir()?;
    if on_postgres {
        return postgres(dir.path(), contacts);
    }
    let store = RedbStore::open(dir.path())?;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml");
    let spec: CatalogSpec = consentd::server::read_catalog(std::path::Path::new(path))?;
    let written = Instant::now();
    support::write_contacts(&store, &spec, contacts)?;
    println!(
        "wrote {contacts} contacts in {:.1} s; data file {} MB",
        written.elapsed().as_secs_f64(),
        std::fs::metadata(dir.path().join("consentd.redb"))?.len() / 1_000_000
    );
    drop(store);

    rebuild(Arc::new(RedbStore::open(dir.path())?), dir.path(), "redb")?;
    after_start(dir.path(), contacts, cache_mb)
}

/// The same on PostgreSQL: write, rebuild, purge (a VACUUM).
fn postgres(dir: &std::path::Path, contacts: u64) -> anyhow::Result<()> {
    let server = support::throwaway::Throwaway::start().map_err(anyhow::Error::msg)?;
    let url = server.fresh_database();
    let store = consentd::store::PgStore::open(&url)?;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/catalog.toml");
    let spec: CatalogSpec = consentd::server::read_catalog(std::path::Path::new(path))?;
    let written = Instant::now();
    support::write_contacts(&store, &spec, contacts)?;
    println!(
        "wrote {contacts} contacts to PostgreSQL in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    drop(store);
    rebuild(
        Arc::new(consentd::store::PgStore::open(&url)?),
        dir,
        "PostgreSQL",
    )?;
    let seconds = erase_and_purge(&consentd::store::PgStore::open(&url)?)?;
    println!(
        "erasure on PostgreSQL: rows deleted when EraseContact answers; the VACUUM after it took {seconds:.2} s"
    );
    Ok(())
}

/// Rebuilds the index from `store` as the server does at start, and says
/// how fast.
fn rebuild(store: Arc<dyn Store>, dir: &std::path::Path, label: &str) -> anyhow::Result<()> {
    let links = consentd::links::Links::open(dir, &[], "http://127.0.0.1:8080")?;
    let (authority, report) = Authority::open(store, links, Options::default())?;
    println!(
        "start-up ({label}): {} states of {} contacts rebuilt in {:.2} s = {:.0} states/s",
        report.states,
        report.contacts,
        report.seconds,
        report.states as f64 / report.seconds
    );
    tokio::runtime::Runtime::new()?.block_on(authority.close())?;
    Ok(())
}

/// Erases one contact and times the purge that follows; seconds.
fn erase_and_purge(store: &dyn Store) -> anyhow::Result<f64> {
    store.erase(
        "crm-00000042",
        &Tombstone {
            hash: [42; 32],
            erased_at: 1_800_000_000_000_000_000,
            reason: "bench".into(),
            sequence: 0,
        },
    )?;
    let purge = Instant::now();
    assert!(store.purge_erased()?);
    Ok(purge.elapsed().as_secs_f64())
}

/// Memory of a fresh process, then the redb purge.
fn after_start(dir: &std::path::Path, contacts: u64, cache_mb: usize) -> anyhow::Result<()> {
    // Whole-process memory, measured where nothing else was ever loaded.
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("--store-cache-mb")
        .arg(cache_mb.to_string())
        .arg("--open-only")
        .arg(dir)
        .output()?;
    print!("{}", String::from_utf8_lossy(&child.stdout));

    // The pause an erasure costs writes: the online rewrite of the file.
    let seconds = erase_and_purge(&RedbStore::open(dir)?)?;
    println!(
        "erasure purge (online rewrite of {contacts} contacts): {seconds:.2} s; writes wait that long, CanSend does not"
    );
    Ok(())
}
