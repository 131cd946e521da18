//! The load bench's durable-write figures: raw redb's single-commit
//! floor, and where a Grant's time goes by the server's own `/metrics`
//! (and, on PostgreSQL, by the database's WAL statistics).

use std::collections::HashMap;
use std::time::Instant;

use super::support;

/// Raw redb, the floor a store without group commit stands on: one small
/// insert per durable (fsync'd) transaction, back to back, for `seconds`,
/// on a fresh file in `dir`; commits per second.
pub(crate) fn raw_redb_commits(dir: &std::path::Path, seconds: u64) -> anyhow::Result<f64> {
    const RAW: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("raw");
    let db = redb::Database::create(dir.join("raw.redb"))?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs() < seconds {
        let txn = db.begin_write()?;
        txn.open_table(RAW)?.insert(n, &[7u8; 100][..])?;
        txn.commit()?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Where a durable Grant's time went, from the server's own counters over
/// the phase: how many group commits, how many changes each, how long the
/// store transaction took (the ruling, the writes, the fsync or COMMIT),
/// and the rest of a Grant's mean latency (waiting for the writer, reply).
pub(crate) fn breakdown(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    grants: &support::Report,
) {
    let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
    let commits = delta("consentd_commits_total").max(1.0);
    let changes = delta("consentd_committed_changes_total");
    let commit_ms = delta("consentd_group_commit_seconds_sum") * 1e3 / commits;
    let mean_ms = grants.hist.mean() / 1e6;
    println!(
        "  {:.0} group commits/s of {:.1} changes each; a commit (ruling + store transaction) {commit_ms:.2} ms; a Grant's mean {mean_ms:.2} ms = {:.2} ms waiting for its commit to start, plus its commit",
        commits / grants.seconds,
        changes / commits,
        (mean_ms - commit_ms).max(0.0)
    );
}

/// The steps of a group commit, mean milliseconds each, from the server's
/// `consentd_store_commit_phase_seconds` over the phase.
pub(crate) fn steps(before: &HashMap<String, f64>, after: &HashMap<String, f64>) {
    let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
    let steps: Vec<String> = ["begin", "lock", "view", "rule", "write", "commit"]
        .iter()
        .filter_map(|p| {
            let series =
                |s: &str| format!("consentd_store_commit_phase_seconds_{s}{{phase=\"{p}\"}}");
            let n = delta(&series("count"));
            (n > 0.0).then(|| format!("{p} {:.2}", delta(&series("sum")) * 1e3 / n))
        })
        .collect();
    if !steps.is_empty() {
        println!(
            "  a commit's steps, mean ms (PostgreSQL: each but rule is one round trip and what the database did; redb: write is the inserts in memory, commit the log record written and fsync'd then redb's commit without fsync, or at a checkpoint the pages and their fsync): {}",
            steps.join(", ")
        );
    }
}

/// PostgreSQL's WAL counters (`pg_stat_wal`): flushes and the time spent
/// in them, ms (needs `track_wal_io_timing`, switched on here where the
/// role may: a throwaway server's superuser).
pub(crate) struct Wal {
    syncs: f64,
    sync_ms: f64,
}

impl Wal {
    pub(crate) async fn read(url: &str) -> Option<Wal> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        // Not one statement: ALTER SYSTEM runs outside a transaction only.
        if client
            .batch_execute("ALTER SYSTEM SET track_wal_io_timing = on")
            .await
            .is_ok()
        {
            let _ = client.batch_execute("SELECT pg_reload_conf()").await;
        }
        let row = client
            .query_one(
                "SELECT wal_sync::float8, wal_sync_time::float8 FROM pg_stat_wal",
                &[],
            )
            .await
            .ok()?;
        Some(Wal {
            syncs: row.get(0),
            sync_ms: row.get(1),
        })
    }

    /// Prints the WAL flushes between `self` and `after`, per commit.
    pub(crate) fn since(&self, after: &Wal, commits: f64) {
        let syncs = after.syncs - self.syncs;
        if syncs <= 0.0 {
            return;
        }
        println!(
            "  PostgreSQL's WAL: {:.2} flushes per group commit, {:.3} ms each (pg_stat_wal)",
            syncs / commits.max(1.0),
            (after.sync_ms - self.sync_ms) / syncs
        );
    }
}
