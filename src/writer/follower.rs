//! The change feed of a shared store (PostgreSQL with several nodes): a
//! thread that waits for the store's notices (or half a second), reads what
//! was committed after the last sequence it passed on, and hands it to the
//! writer thread, which applies it to the index (rule 2 decides, so the
//! order of concurrent writers on different nodes does not matter) and
//! advances the applied sequence that freshness tokens wait on.
//!
//! Erasures arrive as keyed hashes; the contact id comes from the store's
//! notice. A notice missed (the listening connection dropped) costs a scan
//! of the index for the hash, never a contact left answering.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Command;
use crate::domain::EventRecord;
use crate::store::{Store, Tombstone};

/// Events per read of the feed.
const PAGE: usize = 10_000;
/// The longest wait between reads when no notice comes.
const IDLE: Duration = Duration::from_millis(500);
/// After a notice, how long to let more commits land before reading: one
/// read then carries many commits (under write load every commit notifies,
/// and a read per commit would cost more than the commits).
const GATHER: Duration = Duration::from_millis(5);

/// How far behind the store this node's feed is, for health and metrics.
#[derive(Debug, Default)]
pub(crate) struct Lag {
    /// Committed changes not read yet, as of the last read.
    events: AtomicU64,
    /// Since when (milliseconds on the process's clock) the feed has been
    /// behind without interruption; 0 when it is not.
    behind_since_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
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

/// One page of the feed, for the writer to apply.
pub(crate) struct Followed {
    /// Events, in sequence order (this node's own too: applying one again
    /// changes nothing).
    pub(crate) events: Vec<EventRecord>,
    /// Erasures, with the contact when a notice named it.
    pub(crate) erasures: Vec<(Tombstone, Option<String>)>,
    /// Every change up to this sequence is in this page or before it.
    pub(crate) through: u64,
}

/// Hands a command to the writer; false once it takes no more (closed, or
/// every handle gone: the feed holds only a weak one).
fn send(writer: &mpsc::WeakSender<Command>, command: Command) -> bool {
    writer
        .upgrade()
        .is_some_and(|tx| tx.blocking_send(command).is_ok())
}

/// Runs the feed from `after` until the writer stops taking commands.
pub(super) fn run(
    store: Arc<dyn Store>,
    writer: mpsc::WeakSender<Command>,
    mut after: u64,
    mut catalog_version: u64,
    lag: Arc<Lag>,
) {
    let mut heard: HashMap<u64, String> = HashMap::new();
    let mut caught_up = true;
    let mut last_complaint: Option<Instant> = None;
    while writer.upgrade().is_some_and(|tx| !tx.is_closed()) {
        let notices = store.wait_for_changes(if caught_up { IDLE } else { Duration::ZERO });
        heard.extend(notices.erasures);
        if caught_up {
            std::thread::sleep(GATHER);
            heard.extend(store.wait_for_changes(Duration::ZERO).erasures);
        }
        let changes = match store.changes_after(after, PAGE) {
            Ok(c) => c,
            Err(e) => {
                if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, applied = after, "the change feed cannot read the store; retrying");
                    last_complaint = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if changes.catalog_version != catalog_version {
            match store.catalog() {
                Ok((Some(spec), latest)) => {
                    let version = changes.catalog_version;
                    if !send(&writer, Command::FollowCatalog(spec, latest, version)) {
                        return;
                    }
                    catalog_version = changes.catalog_version;
                }
                Ok((None, _)) => catalog_version = changes.catalog_version,
                Err(e) => {
                    tracing::warn!(error = %e, "the change feed cannot read the catalog; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        caught_up = changes.events.len() < PAGE;
        lag.record(changes.head.saturating_sub(changes.through));
        if changes.through > after || !changes.erasures.is_empty() {
            let erasures = changes
                .erasures
                .into_iter()
                .map(|(sequence, t)| (t, heard.remove(&sequence)))
                .collect();
            let page = Followed {
                events: changes.events,
                erasures,
                through: changes.through,
            };
            if !send(&writer, Command::Follow(page)) {
                return;
            }
            after = changes.through;
        }
        heard.retain(|&sequence, _| sequence > after);
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
