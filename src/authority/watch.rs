//! Watch (DESIGN.md §10): every record this node has applied after a
//! sequence, in sequence order, read from the store's feed a page at a time
//! ([`crate::store::Store::feed`]), with a checkpoint whenever the stream has
//! caught up and at least every 5 s.
//!
//! A stream holds at most [`WATCH_BUFFER`] records for its consumer. The
//! feed is pulled from the store, so while the buffer is full the feeding
//! task simply waits: a consumer that reads, however slowly, is never cut
//! off and never makes the server hold more. One that takes nothing for
//! [`STALL`] while its buffer is full is ended with [`WatchEnd::Behind`] (it
//! resumes from the last sequence it got), freeing its buffer. The feeding
//! task stops within a wait of the consumer going away.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Authority;
use crate::domain::{Catalog, ConsentIdx, EventRecord, FieldError, UnixNanos};

/// Records a stream holds for a consumer that does not read them yet.
pub const WATCH_BUFFER: usize = 1024;

/// How long a full buffer waits for its consumer to take a record before
/// the stream is ended.
pub const STALL: Duration = Duration::from_secs(5);

/// Records read from the store per page.
const PAGE: usize = 256;

/// The longest a stream goes without a checkpoint.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// One record of a Watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// An event (a decision, on a contact or an address; or a mark), with
    /// the keyed hash of its contact (what an erasure of it is named by;
    /// none for an event recorded on an address).
    Event(EventRecord, Option<[u8; 32]>),
    /// A contact erased: its keyed hash only.
    Erasure {
        /// Its place in the feed.
        sequence: u64,
        /// HMAC-SHA256 of the contact id under the store's erasure key.
        hash: [u8; 32],
    },
    /// A catalog applied: from this sequence on, its version is in force.
    Catalog {
        /// Its place in the feed.
        sequence: u64,
        /// The catalog's version (the count of catalogs applied).
        version: u64,
    },
    /// Nothing at or below `sequence` is still to come.
    Checkpoint {
        /// How far the stream has come.
        sequence: u64,
        /// When it was sent.
        at: UnixNanos,
    },
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    /// The consumer took nothing for [`STALL`] with its buffer full.
    #[error(
        "the consumer took no record for 5 s with {WATCH_BUFFER} waiting; resume from the last sequence received"
    )]
    Behind,
    /// The store could not be read.
    #[error("the change feed cannot be read now: {0}")]
    Unavailable(String),
}

/// What a stream's consumer receives.
pub type WatchItem = Result<Watched, WatchEnd>;

/// The decisions a stream passes: of consents under these purpose roots
/// (none: every decision).
#[derive(Debug, Clone, Default)]
pub(super) struct Purposes(BTreeSet<String>);

impl Purposes {
    /// Whether an event passes: marks and every event pass without a
    /// filter; a decision passes when its consent's purpose is named.
    fn pass(&self, catalog: &Catalog, e: &EventRecord) -> bool {
        self.passes(catalog, e.consent.as_str())
    }

    /// Whether a record of `consent` passes (a mark always does).
    pub(super) fn passes(&self, catalog: &Catalog, consent: &str) -> bool {
        if self.0.is_empty() || crate::domain::Mark::of(consent).is_some() {
            return true;
        }
        catalog
            .consent_idx(consent)
            .and_then(|idx| catalog.consent(idx))
            .map(|c| catalog.consent_id(c.purpose as ConsentIdx))
            .is_some_and(|root| self.0.contains(root))
    }
}

impl Authority {
    /// The purpose filter of a Watch or a snapshot: each entry must be a
    /// root consent of the catalog (the error names `purposes[i]`).
    pub(super) fn purposes(&self, purposes: &[String]) -> Result<Purposes, FieldError> {
        let catalog = self.catalog.load();
        let mut roots = BTreeSet::new();
        for (i, p) in purposes.iter().enumerate() {
            let root = catalog
                .consent_idx(p)
                .and_then(|idx| catalog.consent(idx))
                .filter(|c| c.depth == 0);
            if root.is_none() {
                return Err(FieldError::new(
                    format!("purposes[{i}]"),
                    format!(
                        "{} is not a purpose (a root consent) of the catalog",
                        crate::domain::ids::quote(p)
                    ),
                ));
            }
            roots.insert(p.clone());
        }
        Ok(Purposes(roots))
    }

    /// Starts a Watch after `from` (the last sequence the consumer holds),
    /// passing only decisions of `purposes` (root consent ids; empty: all).
    /// `from` above what this node has applied, or a purpose that is not a
    /// root of the catalog, is an error naming the field.
    pub fn watch(
        &self,
        from: u64,
        purposes: &[String],
    ) -> Result<mpsc::Receiver<WatchItem>, FieldError> {
        let head = self.applied_sequence();
        if from > head {
            return Err(FieldError::new(
                "from_sequence",
                format!("is {from}, above what this node has applied ({head})"),
            ));
        }
        let roots = self.purposes(purposes)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER + 1);
        let authority = self.clone();
        tokio::spawn(async move { authority.feed_watch(from, roots, tx).await });
        Ok(rx)
    }

    /// The task behind one stream.
    async fn feed_watch(&self, mut cursor: u64, purposes: Purposes, tx: mpsc::Sender<WatchItem>) {
        let mut last_checkpoint = Instant::now();
        loop {
            if tx.is_closed() {
                return;
            }
            let applied = self.applied_sequence();
            if cursor < applied {
                let page = match self.read(move |store| store.feed(cursor, PAGE)).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.try_send(Err(WatchEnd::Unavailable(e.to_string())));
                        return;
                    }
                };
                // Only what this node has applied: its reads agree.
                let through = page.through.min(applied).max(cursor);
                let catalog = self.catalog.load();
                // The page's records in sequence order: events (those the
                // purposes pass), and the erasures and catalogs among them.
                let mut records: Vec<(u64, Watched)> = page
                    .erasures
                    .into_iter()
                    .map(|(sequence, hash)| (sequence, Watched::Erasure { sequence, hash }))
                    .chain(page.catalogs.into_iter().map(|(sequence, version)| {
                        (sequence, Watched::Catalog { sequence, version })
                    }))
                    .collect();
                records.extend(
                    page.events
                        .into_iter()
                        .filter(|e| purposes.pass(&catalog, e))
                        .map(|e| {
                            let hash = (!e.contact.is_address())
                                .then(|| self.hasher.hash(e.contact.as_str()));
                            (e.sequence, Watched::Event(e, hash))
                        }),
                );
                records.sort_unstable_by_key(|(sequence, _)| *sequence);
                for (_, record) in records.into_iter().filter(|(s, _)| *s <= through) {
                    if !send(&tx, record).await {
                        return;
                    }
                }
                let progressed = through > cursor;
                cursor = through;
                if !progressed {
                    // The store has not shown what was applied yet (a
                    // replica's view, a moment's lag): look again shortly.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if cursor < self.applied_sequence() && last_checkpoint.elapsed() < CHECKPOINT_EVERY
                {
                    continue;
                }
            }
            let checkpoint = Watched::Checkpoint {
                sequence: cursor,
                at: self.clock.now(),
            };
            if !send(&tx, checkpoint).await {
                return;
            }
            last_checkpoint = Instant::now();
            if cursor >= self.applied_sequence() {
                // Caught up: wait for the next commit, at most until the
                // next checkpoint is due.
                let _ = self.applied.reach(cursor + 1, CHECKPOINT_EVERY).await;
            }
        }
    }
}

/// Hands a record to the consumer, waiting while its buffer is full; ends
/// the stream (false) when the consumer has gone, or has taken nothing for
/// [`STALL`] (then the one slot kept for it carries [`WatchEnd::Behind`]).
async fn send(tx: &mpsc::Sender<WatchItem>, record: Watched) -> bool {
    if tx.capacity() > 1 {
        return tx.try_send(Ok(record)).is_ok();
    }
    // Two free slots: one for the record, one still kept for the end.
    match tokio::time::timeout(STALL, tx.reserve_many(2)).await {
        Ok(Ok(mut permits)) => match permits.next() {
            Some(permit) => {
                permit.send(Ok(record));
                true
            }
            None => false,
        },
        Ok(Err(_)) => false,
        Err(_) => {
            let _ = tx.try_send(Err(WatchEnd::Behind));
            false
        }
    }
}
