//! The post-erasure rewrite: redb keeps freed pages, so after an erasure
//! the bytes of the erased contact could linger in the file. The next open
//! copies every live record into a fresh file and swaps it in.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{
    CATALOG_FEED, CATALOGS, CONTACTS, ERASURE_FEED, ERASURES, EVENTS, HISTORY, IDEMPOTENCY,
    IDEMPOTENCY_BY_TIME, META, REWRITE_PENDING, WORDINGS,
};
use crate::store::StoreError;

/// Copies every live record of `old` (the file at `path`) into a fresh
/// file and moves it into place (fsync'd, atomic rename), so that no freed
/// page of the old file stays in the data dir; returns the new database.
/// Crash-safe: until the rename the old file is untouched, and still marked
/// for a rewrite. The caller is the only writer while it runs.
pub(super) fn rewrite(
    old: &Database,
    path: &Path,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    let started = std::time::Instant::now();
    let tmp = path.with_extension("rewrite");
    let _ = std::fs::remove_file(&tmp);
    let new = super::file::create(&tmp, cache_bytes)?;
    super::file::owner_only(&tmp)?;
    {
        let src = old.begin_read()?;
        let dst = new.begin_write()?;
        copy_table(&src, &dst, META)?;
        copy_table(&src, &dst, CONTACTS)?;
        copy_table(&src, &dst, HISTORY)?;
        copy_table(&src, &dst, EVENTS)?;
        copy_table(&src, &dst, IDEMPOTENCY)?;
        copy_table(&src, &dst, IDEMPOTENCY_BY_TIME)?;
        copy_table(&src, &dst, ERASURES)?;
        copy_table(&src, &dst, ERASURE_FEED)?;
        copy_table(&src, &dst, WORDINGS)?;
        copy_table(&src, &dst, CATALOGS)?;
        copy_table(&src, &dst, CATALOG_FEED)?;
        copy_table(&src, &dst, super::chain::CHAIN)?;
        copy_table(&src, &dst, super::chain::CHECKPOINTS)?;
        dst.open_table(META)?.remove(REWRITE_PENDING)?;
        dst.commit()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "data file rewritten after erasures"
    );
    Ok(new)
}

fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &redb::ReadTransaction,
    dst: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let from = match src.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut to = dst.open_table(def)?;
    for row in from.range::<K::SelfType<'_>>(..)? {
        let (k, v) = row?;
        to.insert(k.value(), v.value())?;
    }
    Ok(())
}
