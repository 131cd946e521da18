//! The redb store's log: what makes a group commit durable without a
//! durable redb commit.
//!
//! A durable redb commit writes every page the commit changed, each in a
//! place of its own (copy on write): with a group of ~20 Grants that is
//! ~14 separate writes to the disk, then the flush. Instead, a group
//! commit appends what it changes (the batch the writer ruled, with the
//! chain's links as computed, salts included) to this file as one record,
//! fdatasyncs it, and only then commits the redb transaction with
//! `Durability::None`: visible to readers at once, in memory until a later
//! durable commit. One sequential write and a flush per group instead.
//!
//! - **The state says what it holds**: each logged commit writes the
//!   record's number into `meta` (`log`) in the same transaction, so any
//!   durable redb commit (a checkpoint, an erasure, closing) records which
//!   records it covers. After one, the log starts again at offset 0.
//! - **Checkpoints**: a commit whose record would take the log past
//!   [`LIMIT`] is a durable redb commit instead (so is one made while the
//!   log is off): a restart replays at most [`LIMIT`] bytes.
//! - **Opening**: the records are read from offset 0 while each is whole
//!   (length, CRC-32 of number and payload) and numbered one past the one
//!   before; those past `meta`'s `log` are committed again, in order, and
//!   made durable; then the file is truncated. Records from before the last
//!   restart of the log (lower numbers) end the run, as do a torn record or
//!   the zeros past the end. A gap (the first record to replay is not the
//!   next number) is corruption: the store refuses to open.
//! - **Order**: the record is durable before the redb transaction commits,
//!   so a write is never acknowledged, nor seen by a reader, before it
//!   would survive a crash. A failed append aborts the transaction, and
//!   every later write of the store fails until a restart (fail-stop): the
//!   record may be whole on disk all the same, and a restart replays it
//!   (a write reported failed that lands, as after a timeout), which is
//!   only right if nothing was committed after it.
//! - **Erasure**: an erasure is a durable redb commit, after which the log
//!   is truncated: no record of the erased contact stays in it.
//!
//! Record: length of the payload (u32 LE), CRC-32 (u32 LE) of number ‖
//! payload, number (u64 LE), payload. The file grows in steps of
//! [`AHEAD`] zeroed bytes, so that most fsyncs write the record only.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Past this many bytes of records, the next commit is a durable redb
/// commit, and the log starts again.
pub(super) const LIMIT: u64 = 8 << 20;
/// The file grows by this many zeroed bytes at a time.
const AHEAD: u64 = 1 << 20;
/// Length, CRC-32, number.
const HEAD: usize = 16;

/// The log file, owned by the store's writer (behind a mutex).
#[derive(Debug)]
pub(super) struct Log {
    file: File,
    /// Where the next record goes.
    at: u64,
    /// The file's length: zeros or records already durable in redb past
    /// `at`.
    len: u64,
    /// The number the next record gets.
    next: u64,
    /// An append failed: what the file's tail holds is unknown.
    broken: bool,
    /// Tests: the next append writes its record, then fails as a failed
    /// fsync does.
    #[cfg(test)]
    pub(super) fail_next: bool,
}

/// A record as read back: its number and payload.
pub(super) type Record = (u64, Vec<u8>);

impl Log {
    /// Opens (creating if missing) the log at `path`; returns it and the
    /// run of whole, consecutively numbered records from offset 0.
    pub(super) fn open(path: &Path) -> io::Result<(Log, Vec<Record>)> {
        let file = super::file::read_write(path)?;
        super::file::owner_only(path).map_err(io::Error::other)?;
        let len = file.metadata()?.len();
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let records = run(&bytes);
        let next = records.last().map_or(1, |(n, _)| n + 1);
        let log = Log {
            file,
            at: 0,
            len,
            next,
            broken: false,
            #[cfg(test)]
            fail_next: false,
        };
        Ok((log, records))
    }

    /// The number the next record gets.
    pub(super) fn next_number(&self) -> u64 {
        self.next
    }

    /// Numbers the next record from `n` on (after a state that holds
    /// records up to `n - 1`).
    pub(super) fn number_from(&mut self, n: u64) {
        self.next = self.next.max(n);
    }

    /// Whether a payload of `len` bytes goes into the log (else the commit
    /// is a durable redb commit).
    pub(super) fn fits(&self, len: usize) -> bool {
        self.at + (HEAD + len) as u64 <= LIMIT
    }

    /// Whether an append failed (the file's tail is unknown).
    pub(super) fn broken(&self) -> bool {
        self.broken
    }

    /// Appends a record, fdatasync'd before it returns when `sync`;
    /// returns its number. Never called once broken: the store's accessor
    /// (`RedbStore::log`) refuses a broken log to every write.
    pub(super) fn append(&mut self, payload: &[u8], sync: bool) -> io::Result<u64> {
        debug_assert!(!self.broken, "an append to a broken log");
        let r = self.append_once(payload, sync);
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    fn append_once(&mut self, payload: &[u8], sync: bool) -> io::Result<u64> {
        let number = self.next;
        let mut record = Vec::with_capacity(HEAD + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc(number, payload).to_le_bytes());
        record.extend_from_slice(&number.to_le_bytes());
        record.extend_from_slice(payload);
        let end = self.at + record.len() as u64;
        if end > self.len {
            // Grow with zeros first: the record's fsync then seldom
            // changes the file's size or allocation.
            let grown = end.next_multiple_of(AHEAD);
            super::zeroed::write_zeros(self.len, grown, |at, zeros| {
                self.file.write_all_at(zeros, at)
            })?;
            self.len = grown;
        }
        self.file.write_all_at(&record, self.at)?;
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next) {
            return Err(io::Error::other("fsync failed (injected)"));
        }
        if sync {
            self.file.sync_data()?;
        }
        self.at = end;
        self.next = number + 1;
        Ok(number)
    }

    /// Every record so far is in a durable redb commit: the log starts
    /// again at offset 0.
    pub(super) fn checkpointed(&mut self) {
        self.at = 0;
    }

    /// Every record so far is in a durable redb commit, and none may stay
    /// in the file (an erasure): the file is truncated and synced.
    pub(super) fn scrub(&mut self) -> io::Result<()> {
        let r = self.file.set_len(0).and_then(|()| self.file.sync_all());
        match r {
            Ok(()) => {
                self.len = 0;
                self.checkpointed();
            }
            Err(_) => self.broken = true,
        }
        r
    }

    /// A record was appended but the redb commit after it failed: the
    /// record is durable and the state lacks it, so nothing more may be
    /// committed before a restart replays it.
    pub(super) fn poison(&mut self) {
        self.broken = true;
    }
}

fn crc(number: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&number.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The whole, consecutively numbered records from the start of `bytes`.
fn run(bytes: &[u8]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + HEAD) {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as usize;
        let sum = u32::from_le_bytes(head[4..8].try_into().expect("4"));
        let number = u64::from_le_bytes(head[8..].try_into().expect("8"));
        let Some(payload) = bytes.get(at + HEAD..at + HEAD + len) else {
            break;
        };
        let follows = out.last().is_none_or(|(n, _)| number == n + 1);
        if len == 0 || number == 0 || !follows || crc(number, payload) != sum {
            break;
        }
        out.push((number, payload.to_vec()));
        at += HEAD + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        (dir, p)
    }

    #[test]
    fn records_read_back_in_order_after_reopening() {
        let (_d, p) = path();
        let (mut log, none) = Log::open(&p).unwrap();
        assert!(none.is_empty());
        assert_eq!(log.append(b"one", true).unwrap(), 1);
        assert_eq!(log.append(b"two", false).unwrap(), 2);
        drop(log);
        let (log, records) = Log::open(&p).unwrap();
        assert_eq!(records, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
        assert_eq!(log.next_number(), 3);
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_run() {
        let (_d, p) = path();
        let (mut log, _) = Log::open(&p).unwrap();
        log.append(b"first", true).unwrap();
        log.append(b"second", true).unwrap();
        drop(log);
        let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        // One bit of the second payload flipped (a torn write).
        let second = (HEAD + 5 + HEAD) as u64;
        file.write_all_at(&[b's' ^ 1], second).unwrap();
        let (_, records) = Log::open(&p).unwrap();
        assert_eq!(records, vec![(1, b"first".to_vec())]);
        // Cut inside the first record's payload: nothing whole remains.
        file.set_len((HEAD + 2) as u64).unwrap();
        let (_, records) = Log::open(&p).unwrap();
        assert!(records.is_empty());
    }

    #[test]
    fn after_a_checkpoint_older_records_end_the_run() {
        let (_d, p) = path();
        let (mut log, _) = Log::open(&p).unwrap();
        for i in 0..5u8 {
            log.append(&[i + 1; 40], true).unwrap();
        }
        log.checkpointed();
        // A shorter record over the first: the old second record's bytes
        // follow it, numbered 2, not 7.
        assert_eq!(log.append(b"six", true).unwrap(), 6);
        drop(log);
        let (log, records) = Log::open(&p).unwrap();
        assert_eq!(records, vec![(6, b"six".to_vec())]);
        assert_eq!(log.next_number(), 7);
    }

    #[test]
    fn scrubbing_leaves_nothing_and_numbers_go_on() {
        let (_d, p) = path();
        let (mut log, _) = Log::open(&p).unwrap();
        log.append(b"erased contact's grant", true).unwrap();
        log.scrub().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert_eq!(log.append(b"later", true).unwrap(), 2);
        let (_, records) = Log::open(&p).unwrap();
        assert_eq!(records, vec![(2, b"later".to_vec())]);
    }

    #[test]
    fn the_file_grows_in_zeroed_steps_and_the_limit_is_kept() {
        let (_d, p) = path();
        let (mut log, _) = Log::open(&p).unwrap();
        log.append(&[7; 100], true).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), AHEAD);
        assert!(log.fits(1000));
        assert!(!log.fits(LIMIT as usize));
        assert_eq!(log.at, (HEAD + 100) as u64);
    }
}
