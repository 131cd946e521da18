//! The data file's storage backend: redb's own file backend, except that
//! the space redb grows the file by is written with zeros just ahead of
//! where redb writes, so that a commit's fsync writes data and nothing
//! else.
//!
//! redb grows its file with `set_len`: the new space is a hole. The first
//! write into a hole makes the filesystem allocate blocks for it, and the
//! fsync of the commit that wrote it must then also write what records the
//! allocation (on ext4: the block bitmap, the extent tree, the inode), each
//! a write of its own that the fsync waits for in turn. Under load nearly
//! every group commit writes new pages at the end of the data, so nearly
//! every commit paid for it. Here the first write past the zeroed part
//! writes zeros for the next [`AHEAD`] bytes with it: the allocation is
//! paid once per [`AHEAD`] bytes of growth, by one commit, and the fsync of
//! the others writes their pages only. Measured with redb alone, commits
//! of the server's shape (5 tables, 23 and 32 changes each): 411 → 350 µs
//! and 465 → 333 µs per commit. `fallocate` does not do it (writing into
//! its unwritten extents changes the extent tree just the same).
//!
//! Writing zeros never changes what the file holds: redb's contract is
//! that space it grows by reads as zeros, and zeros are written only where
//! redb has written nothing since the file grew there (`zeroed_to`).

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::{Mutex, PoisonError};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// How far past redb's highest write the file is written with zeros.
const AHEAD: u64 = 256 * 1024;
/// A write this far past the zeroed part is not zeroed up to: the space
/// between stays a hole, and zeroing stops until the file next grows.
const REACH: u64 = 8 * 1024 * 1024;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Writes zeros over `from..to` through `write` (offset, bytes), a
/// buffer's worth at a time: here, and for the log's growth (`log.rs`).
pub(super) fn write_zeros(
    from: u64,
    to: u64,
    mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        write(at, &ZEROS[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// redb's file backend, its growth zeroed ahead of redb's writes.
#[derive(Debug)]
pub(super) struct ZeroAhead {
    inner: FileBackend,
    /// Where the zeroed part of the file ends: at and past it redb has
    /// written nothing since the file grew there, so zeros may be written
    /// there. `None` when that is not known: after opening (the file may
    /// end in a hole whose start is unknown), after a write past [`REACH`],
    /// after a failed write; the next growth makes it known again (the old
    /// end). Held while writing: no other write lands where zeros are going.
    zeroed_to: Mutex<Option<u64>>,
}

impl ZeroAhead {
    pub(super) fn new(file: File) -> Result<Self, redb::DatabaseError> {
        Ok(Self {
            inner: FileBackend::new(file)?,
            zeroed_to: Mutex::new(None),
        })
    }

    fn zeroed_to(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.zeroed_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn zero(&self, from: u64, to: u64) -> io::Result<()> {
        write_zeros(from, to, |at, zeros| self.inner.write(at, zeros))
    }

    /// Writes `data` at `offset`, zeroing up to it and [`AHEAD`] past it
    /// when it reaches past the zeroed part; returns the new end of the
    /// zeroed part.
    fn write_zeroing(
        &self,
        zeroed_to: Option<u64>,
        offset: u64,
        data: &[u8],
    ) -> io::Result<Option<u64>> {
        let end = offset + data.len() as u64;
        let Some(z) = zeroed_to.filter(|&z| end > z) else {
            self.inner.write(offset, data)?;
            return Ok(zeroed_to);
        };
        if offset > z.saturating_add(REACH) {
            self.inner.write(offset, data)?;
            return Ok(None);
        }
        self.zero(z, offset)?;
        self.inner.write(offset, data)?;
        let ahead = (end + AHEAD).min(self.inner.len()?).max(end);
        self.zero(end, ahead)?;
        Ok(Some(ahead))
    }
}

impl StorageBackend for ZeroAhead {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut zeroed_to = self.zeroed_to();
        let old = self.inner.len()?;
        let result = self.inner.set_len(len);
        *zeroed_to = match (&result, *zeroed_to) {
            (Err(_), _) => None,
            // Nothing was written past the old end.
            (Ok(()), z) if len > old => Some(z.map_or(old, |z| z.min(old))),
            (Ok(()), z) => z.map(|z| z.min(len)),
        };
        result
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut zeroed_to = self.zeroed_to();
        let written = self.write_zeroing(*zeroed_to, offset, data);
        // After a failure part of `data` may be on the file past the
        // zeroed part: where that is is no longer known.
        *zeroed_to = written.as_ref().map_or(None, |z| *z);
        written.map(|_| ())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn backend(dir: &tempfile::TempDir) -> (ZeroAhead, std::path::PathBuf) {
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        (ZeroAhead::new(file).unwrap(), path)
    }

    /// Whatever redb does (writes anywhere, far past the end of its data or
    /// near it, growing, shrinking), the file holds exactly what was
    /// written, zeros elsewhere: zeroing ahead never overwrites a byte.
    #[test]
    fn the_file_holds_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let (b, path) = backend(&dir);
        let mut model: Vec<u8> = Vec::new();
        // The page past the highest one written (where redb's next new
        // pages mostly go).
        let mut frontier = 0u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..4000u64 {
            let len = model.len() as u64;
            let pages = len / 4096;
            match next(40) {
                // Grow, as redb does: by doubling, up to 48 MiB here.
                0 if len < 24 << 20 => {
                    let to = (len * 2).max(64 * 1024) + next(4) * 4096;
                    b.set_len(to).unwrap();
                    model.resize(to as usize, 0);
                }
                // Shrink now and then.
                1 if len > 1 << 20 => {
                    let to = (len - next(len / 2)) / 4096 * 4096;
                    b.set_len(to).unwrap();
                    model.truncate(to as usize);
                    frontier = frontier.min(to / 4096);
                }
                // Write a page or a few: mostly at the frontier, sometimes
                // anywhere (far past it too).
                _ if pages > 0 => {
                    let page = match next(6) {
                        0 => next(pages),
                        _ => (frontier + next(3)).min(pages - 1),
                    };
                    let n = (1 + next(3)).min(pages - page);
                    let fill = 1 + (step % 255) as u8;
                    let at = (page * 4096) as usize;
                    b.write(at as u64, &vec![fill; n as usize * 4096]).unwrap();
                    model[at..at + n as usize * 4096].fill(fill);
                    frontier = frontier.max(page + n);
                }
                _ => {}
            }
        }
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), model.len());
        assert!(on_disk == model, "the file differs from what was written");
    }

    /// After the file grows, the first write near the end of redb's data
    /// also writes the space [`AHEAD`] of it: its blocks are allocated now,
    /// not by the fsync of a later commit.
    #[test]
    fn a_write_at_the_end_allocates_the_space_ahead_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let (b, path) = backend(&dir);
        let blocks = |p: &std::path::Path| std::fs::metadata(p).unwrap().blocks() * 512;
        b.set_len(64 << 20).unwrap();
        assert!(blocks(&path) < AHEAD, "grown: a hole");
        b.write(0, &[7; 4096]).unwrap();
        assert!(blocks(&path) >= AHEAD + 4096, "{}", blocks(&path));
        // Written ahead: the next page needs no allocation of its own.
        let before = blocks(&path);
        b.write(4096, &[8; 4096]).unwrap();
        assert_eq!(blocks(&path), before);
        // Far past the zeroed part: written as it is, nothing zeroed, and
        // no more zeroing until the file grows.
        b.write(60 << 20, &[9; 4096]).unwrap();
        assert!(blocks(&path) <= before + 8192, "{}", blocks(&path));
        b.write(AHEAD + 8192, &[10; 4096]).unwrap();
        assert!(blocks(&path) <= before + 16384, "{}", blocks(&path));
        // Grown again: zeroed ahead of the first write at the old end.
        b.set_len(128 << 20).unwrap();
        let before = blocks(&path);
        b.write(64 << 20, &[11; 4096]).unwrap();
        assert!(blocks(&path) >= before + AHEAD, "{}", blocks(&path));
        let mut page = [0; 4096];
        for (at, fill) in [(0, 7), (4096, 8), (60 << 20, 9), (64 << 20, 11)] {
            b.read(at, &mut page).unwrap();
            assert_eq!(page, [fill; 4096], "at {at}");
        }
    }
}
