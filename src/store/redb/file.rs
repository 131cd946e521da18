//! Opening the data file: redb's builder with the page cache bounded, over
//! redb's file backend with the file's growth zeroed ahead (`zeroed.rs`),
//! readable by its owner only; redb's errors as the store's.

use std::path::Path;

use redb::Database;

use crate::store::StoreError;

// redb's errors as the store's: the OS error itself where there is one,
// so that callers can tell a disk fault.
impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) => StoreError::Io(io),
            other => StoreError::Backend(Box::new(other)),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                redb::Error::from(e).into()
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A redb builder with the page cache bounded.
pub(super) fn builder(cache_bytes: usize) -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(cache_bytes);
    b
}

/// Opens (creating if missing) the data file at `path` as redb's `create`
/// does, over redb's file backend with its growth zeroed ahead of the
/// writes (`zeroed.rs`).
pub(super) fn create(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let file = read_write(path)?;
    Ok(builder(cache_bytes).create_with_backend(super::zeroed::ZeroAhead::new(file)?)?)
}

/// Opens `path` to read and write, creating it if missing, keeping what it
/// holds.
pub(super) fn read_write(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Makes a data file readable and writable by its owner only (0600): it
/// holds contact ids and evidence.
pub(super) fn owner_only(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
