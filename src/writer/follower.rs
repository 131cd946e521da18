//! The change feed of a shared store (several nodes): a thread that waits
//! for the store's notice of a commit (or half a second), reads what was
//! committed after this node's cursor, and hands it to the writer thread,
//! which applies it to the index (skipping what its own commits already
//! applied) and advances the applied sequence that freshness tokens wait on.
//!
//! A record the feed cannot read is not skipped: the feed stays where it
//! is, says so (the error names the sequence) and the node's checks turn
//! NOT_SERVING until it can read again, never silently stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Applied, Command};
use crate::store::{Cursor, SharedStore};

/// Events per read of the feed.
const PAGE: usize = 10_000;
/// The longest wait between reads when no notice comes.
const IDLE: Duration = Duration::from_millis(500);
/// After a notice, how long to let more commits land before reading: one
/// read then carries many commits (under write load every commit notifies,
/// and a read per commit would cost more than the commits).
const GATHER: Duration = Duration::from_millis(5);
/// The wait before reading again after a read failed.
const RETRY: Duration = Duration::from_millis(100);

/// How far behind the store this node's feed is, for health and metrics.
#[derive(Debug, Default)]
pub(crate) struct Lag {
    /// Committed changes not read yet, as of the last read.
    events: AtomicU64,
    /// Since when (milliseconds on the process's clock) the feed has been
    /// behind without interruption; 0 when it is not.
    behind_since_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
    /// Why the feed cannot go on: a record it cannot read (its sequence,
    /// and what is wrong).
    broken: std::sync::Mutex<Option<(u64, String)>>,
}

impl Lag {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }

    fn record(&self, unread: u64) {
        self.events.store(unread, Ordering::Relaxed);
        if unread == 0 {
            self.behind_since_ms.store(0, Ordering::Relaxed);
        } else {
            let now = self.now_ms();
            let _ =
                self.behind_since_ms
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Records why the feed (or a commit's catch-up) cannot go on.
    pub(crate) fn broke(&self, sequence: u64, why: String) {
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some((sequence, why));
    }

    fn mended(&self) {
        let mut broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
        if broken.take().is_some() {
            tracing::info!("the change feed reads again");
        }
    }

    /// The record the feed cannot go past, and why, while it cannot.
    pub(crate) fn broken(&self) -> Option<(u64, String)> {
        self.broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes committed but not read yet, and for how long the feed has
    /// been behind.
    pub(crate) fn get(&self) -> (u64, Duration) {
        let since = self.behind_since_ms.load(Ordering::Relaxed);
        let behind = if since == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(self.now_ms().saturating_sub(since))
        };
        (self.events.load(Ordering::Relaxed), behind)
    }
}

/// Hands a command to the writer; false once it takes no more (closed, or
/// every handle gone: the feed holds only a weak one).
fn send(writer: &mpsc::WeakSender<Command>, command: Command) -> bool {
    writer
        .upgrade()
        .is_some_and(|tx| tx.blocking_send(command).is_ok())
}

/// Runs the feed until the writer stops taking commands. Each read starts
/// at the writer's applied sequence, so what a commit's catch-up applied
/// is not read again.
pub(super) fn run(
    store: Arc<dyn SharedStore>,
    writer: mpsc::WeakSender<Command>,
    applied: Arc<Applied>,
    mut catalog_version: u64,
    lag: Arc<Lag>,
) {
    let mut caught_up = true;
    let mut last_complaint: Option<Instant> = None;
    while writer.upgrade().is_some_and(|tx| !tx.is_closed()) {
        store.wait_for_changes(if caught_up { IDLE } else { Duration::ZERO });
        if caught_up {
            std::thread::sleep(GATHER);
            store.wait_for_changes(Duration::ZERO);
        }
        let cursor = Cursor {
            sequence: applied.get(),
            catalog_version,
        };
        let changes = match store.changes_after(cursor, PAGE) {
            Ok(c) => c,
            Err(e) => {
                if let crate::store::StoreError::Unreadable { sequence, .. } = &e {
                    lag.broke(*sequence, e.to_string());
                }
                if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::error!(error = %e, applied = cursor.sequence, "the change feed cannot read the store; retrying");
                    last_complaint = Some(Instant::now());
                }
                // Soon again: a database back from a restart is read
                // within a fraction of a second.
                std::thread::sleep(RETRY);
                continue;
            }
        };
        lag.mended();
        if let Some(c) = &changes.catalog {
            catalog_version = c.version;
        }
        caught_up = changes.events.len() < PAGE;
        lag.record(changes.head.saturating_sub(changes.through));
        if (changes.through > cursor.sequence || changes.catalog.is_some())
            && !send(&writer, Command::Follow(changes))
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_when_the_feed_fell_behind_until_it_caught_up() {
        let lag = Lag::default();
        assert_eq!(lag.get(), (0, Duration::ZERO));
        lag.record(500);
        std::thread::sleep(Duration::from_millis(30));
        lag.record(200); // still behind: the clock keeps running
        let (unread, behind) = lag.get();
        assert_eq!(unread, 200);
        assert!(behind >= Duration::from_millis(25), "{behind:?}");
        lag.record(0);
        assert_eq!(lag.get(), (0, Duration::ZERO));
    }
}
