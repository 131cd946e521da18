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
