//! Durable storage behind one backend-neutral interface.
//!
//! The interfaces, by what they serve:
//!
//! - [`Store`], what one node needs: recover what the core needs at start,
//!   look up a few records, commit one batch atomically and durably, erase
//!   a contact, prune idempotency keys;
//! - [`Transfer`], what moving the data to another store needs: everything
//!   read out in pages, one event by its sequence, an empty store adopting
//!   another's erasure key, tombstones and link keys;
//! - [`SharedStore`], what several nodes on one store need: the commit on
//!   the latest view under the store's commit lock, the change feed, the
//!   link keys they share.
//!
//! Errors ([`StoreError`]) name no backend. Each backend lives in its own
//! module and passes the conformance suites (`conformance.rs` for `Store`
//! and `Transfer`, `shared_conformance.rs` for `SharedStore`), so a new
//! backend is done when they pass:
//!
//! - [`RedbStore`]: the embedded default, one file in the data dir;
//! - [`PgStore`]: PostgreSQL, the shared store of record for several nodes;
//! - [`MemoryStore`]: everything in process memory, for tests and tools.
//!
//! Only the writer calls the mutating methods; reads may run on any thread,
//! but they block, so async callers run them on the blocking pool.

#[cfg(test)]
mod conformance;
mod memory;
pub mod postgres;
mod redb;
#[cfg(test)]
mod shared_conformance;
pub mod transfer;

pub use self::memory::MemoryStore;
pub use self::postgres::PgStore;
pub use self::redb::{DEFAULT_CACHE_BYTES, RedbStore};

use crate::audit::{Held, Link};
pub use crate::domain::IdempotencyRecord;
use crate::domain::{
    CatalogSpec, Decision, EventRecord, PendingRecord, Source, StateRecord, UnixNanos, Wording,
};

/// Contacts with every state each holds, by contact id.
pub type ContactStates = Vec<(String, Vec<StateRecord>)>;

/// One record [`Store::load_states`] feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// A state: its decision, the consent's version when it was recorded,
    /// and where it came from.
    State {
        /// What rule 2 compares.
        decision: Decision,
        /// The version it was recorded under.
        version: u32,
        /// How it reached the server.
        source: Source,
    },
    /// Grants of the (contact, consent) waiting for the person; the store
    /// keeps this record from the events it commits
    /// ([`PendingRecord::after`]).
    Pending(PendingRecord),
}

impl Loaded {
    /// The record of a state.
    pub fn of(state: &StateRecord) -> Loaded {
        Loaded::State {
            decision: state.decision(),
            version: state.version,
            source: state.source,
        }
    }
}

/// Why a store operation failed. Whatever the backend, the core sees one of
/// these; the details stay in the message for the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused a read, write or sync.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The backend reported an error of its own.
    #[error("storage backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The data was written by an incompatible layout.
    #[error("data has schema version {found}, this build reads {supported}")]
    Schema {
        /// The version found on file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The store cannot be reached now (a database connection lost,
    /// refused or timed out). Not fail-stop: the writer refuses writes until
    /// it answers again.
    #[error("store unavailable: {cause}")]
    Unavailable {
        /// A commit was sent and no answer came: it may have landed.
        in_doubt: bool,
        /// What the driver said.
        cause: String,
    },
    /// A record of the shared change feed does not decode: the node
    /// cannot go past it (its checks and writes stop until it can).
    #[error("the record at sequence {sequence} cannot be read: {what}")]
    Unreadable {
        /// Where it stands in the feed.
        sequence: u64,
        /// What is wrong with it.
        what: String,
    },
    /// The store was closed ([`Store::close`]).
    #[error("the store is closed")]
    Closed,
    /// A record does not decode.
    #[error("corrupt record in {table}: {what}")]
    Corrupt {
        /// Where the record lives.
        table: &'static str,
        /// What is wrong with it.
        what: String,
    },
}

impl StoreError {
    pub(crate) fn corrupt(table: &'static str, what: impl Into<String>) -> Self {
        StoreError::Corrupt {
            table,
            what: what.into(),
        }
    }
}

/// What the core recovers from the store at start, besides the states.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The catalog last applied, if any.
    pub catalog: Option<CatalogSpec>,
    /// The sequence the next event gets.
    pub next_sequence: u64,
    /// How many contacts hold state (sizes the index before loading).
    pub contacts: u64,
    /// Secret of the keyed hash that names erased contacts.
    pub erasure_key: [u8; 32],
    /// Every erasure: (keyed hash of the contact, erased_at).
    pub erasures: Vec<([u8; 32], UnixNanos)>,
    /// The latest wording of every consent id ever declared.
    pub wordings: Vec<Wording>,
    /// The latest time on file (an event recorded, an erasure, a wording in
    /// force), so that the writer's clock never runs behind it.
    pub last_recorded_at: UnixNanos,
    /// How many times the catalog was replaced (a shared store's nodes
    /// compare it to pick up each other's catalogs).
    pub catalog_version: u64,
}

/// Where a node stands with a shared store: every change up to
/// `sequence` applied, and the catalog of `catalog_version` in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Every change up to this sequence is applied.
    pub sequence: u64,
    /// The catalog version in force (a shared store counts catalog applies).
    pub catalog_version: u64,
}

impl Cursor {
    /// A cursor past everything: a commit under it catches up on nothing
    /// (a tool writing to an empty store, a store of one node).
    pub const END: Cursor = Cursor {
        sequence: u64::MAX,
        catalog_version: u64::MAX,
    };
}

/// A catalog another node applied: the spec with the versions it was
/// given, the latest wording of every consent, and its catalog version.
#[derive(Debug, Clone)]
pub struct CatalogChange {
    /// The catalog as applied, versions included.
    pub spec: CatalogSpec,
    /// The latest wording of every consent id ever declared.
    pub latest: Vec<Wording>,
    /// The store's catalog version after that apply.
    pub version: u64,
}

/// What a shared store committed after a [`Cursor`]: one page of the
/// change feed, or everything a commit catches up on under the lock.
#[derive(Debug, Default)]
pub struct Changes {
    /// Events, in sequence order.
    pub events: Vec<EventRecord>,
    /// Erasures, with their sequences, in sequence order.
    pub erasures: Vec<(u64, Tombstone)>,
    /// Every change up to this sequence is in this page or before it.
    pub through: u64,
    /// The last sequence committed as of this page (beyond `through` when
    /// the page is full: the reader is behind).
    pub head: u64,
    /// The catalog, when its version moved past the cursor's.
    pub catalog: Option<CatalogChange>,
}

/// One page of the change feed as Watch reads it (DESIGN.md §10), on any
/// store: events and the erasures numbered among them, in sequence order.
#[derive(Debug, Default, Clone)]
pub struct FeedPage {
    /// Events, in sequence order.
    pub events: Vec<EventRecord>,
    /// Erasures numbered among them: (sequence, keyed hash of the contact).
    pub erasures: Vec<(u64, [u8; 32])>,
    /// Catalogs applied among them: (sequence, catalog version).
    pub catalogs: Vec<(u64, u64)>,
    /// Every record up to this sequence is in this page or before it.
    pub through: u64,
}

impl FeedPage {
    /// A page of what a shared store's feed gave.
    pub fn of(changes: Changes) -> FeedPage {
        FeedPage {
            events: changes.events,
            erasures: changes
                .erasures
                .into_iter()
                .map(|(s, t)| (s, t.hash))
                .collect(),
            catalogs: Vec::new(),
            through: changes.through,
        }
    }
}

/// What a writer commits under a shared store's commit lock, ruled on the
/// view the catch-up gave it.
#[derive(Debug)]
pub enum Write {
    /// Nothing: the lock is released, nothing written.
    Nothing,
    /// A batch of events, keys, a catalog, wordings.
    Batch(WriteBatch),
    /// An erasure: the contact's rows go, the tombstone stays, and the
    /// erasure takes the next sequence so that every node meets it in order.
    Erase {
        /// The contact to forget.
        contact: String,
        /// What stays of it.
        tombstone: Tombstone,
    },
}

/// What stays of an erased contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// HMAC-SHA256 of the contact id under [`Recovered::erasure_key`].
    pub hash: [u8; 32],
    /// When the contact was erased.
    pub erased_at: UnixNanos,
    /// The operator's reason.
    pub reason: String,
    /// Where the erasure stands in the change feed (0: none, an erasure
    /// recorded before erasures were numbered on every store).
    pub sequence: u64,
}

/// One atomic, durable unit of writes, built by the single writer.
///
/// Events are applied in order; an event with `applied` set becomes the
/// state of its (contact, consent); each event also moves the pending
/// record of its (contact, consent) as [`PendingRecord::after`] says.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// New events, in sequence order.
    pub events: Vec<EventRecord>,
    /// Idempotency keys first used by these events.
    pub idempotency: Vec<(String, IdempotencyRecord)>,
    /// A new catalog to keep, replacing the stored one.
    pub catalog: Option<CatalogSpec>,
    /// When that catalog comes into force: every catalog is kept with it,
    /// for as-of reads ([`Store::catalog_at`]).
    pub catalog_at: UnixNanos,
    /// The sequence the catalog takes in the change feed, like an event
    /// (Watch streams it in its place); 0: none (a move between stores).
    pub catalog_sequence: u64,
    /// Wordings that come into force, kept for good.
    pub wordings: Vec<Wording>,
    /// The sequence the next event after this batch gets.
    pub next_sequence: u64,
}

/// Where a committed batch landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The sequence the batch's first event was given (see [`Store::commit`]).
    pub first_sequence: u64,
    /// The catalog version after the commit (a shared store counts catalog
    /// changes; 0 for a store of one node).
    pub catalog_version: u64,
    /// Where the commit spent its time, where the store measures it (for
    /// `/metrics`); `None` when it wrote nothing or does not measure.
    pub phases: Option<CommitPhases>,
}

impl WriteBatch {
    /// The sequence of the batch's first event as the writer numbered it
    /// (its `next_sequence` when it has none).
    pub fn first_sequence(&self) -> u64 {
        self.events
            .first()
            .map_or(self.next_sequence, |e| e.sequence)
    }

    /// Landed as numbered, in a store of one node.
    pub fn as_numbered(&self) -> Committed {
        Committed {
            first_sequence: self.first_sequence(),
            catalog_version: 0,
            phases: None,
        }
    }
}

/// The storage the core relies on.
pub trait Store: Send + Sync + 'static {
    /// Recovers the catalog, the sequence counter, the erasure key and the
    /// erasures.
    fn recover(&self) -> Result<Recovered, StoreError>;
    /// Feeds every state and every pending record as (contact, consent,
    /// record), a contact's together; returns how many states.
    fn load_states(&self, sink: &mut dyn FnMut(&str, &str, Loaded)) -> Result<u64, StoreError>;
    /// What a key remembers, if it is still remembered.
    fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// The state of one (contact, consent).
    fn state(&self, contact: &str, consent: &str) -> Result<Option<StateRecord>, StoreError> {
        Ok(self
            .contact_states(contact)?
            .into_iter()
            .find(|s| s.consent.as_str() == consent))
    }
    /// The pending grants of a contact, by consent id (derived from its
    /// events: see [`PendingRecord::after`]).
    fn contact_pending(&self, contact: &str) -> Result<Vec<(String, PendingRecord)>, StoreError>;
    /// Every state of a contact (empty for an unknown contact).
    fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError>;
    /// The catalog in force at `at` and when it came into force: the last
    /// kept at or before `at`, else the earliest kept (a store keeps its
    /// catalogs since it first kept them), else the one in force now
    /// (`None`: no catalog was ever applied).
    fn catalog_at(&self, at: UnixNanos) -> Result<Option<(UnixNanos, CatalogSpec)>, StoreError>;
    /// Up to `limit` contacts whose id sorts after `after`, in id order,
    /// each with every state it holds (each contact read whole): one page
    /// of a snapshot (`Consents.ExportStates`).
    fn states_after(&self, after: &str, limit: usize) -> Result<ContactStates, StoreError>;
    /// When the contact named by `hash` (its keyed hash, see
    /// [`crate::domain::ContactHasher`]) was last erased, if ever: what a
    /// page reached from a link asks, on any node, whatever its feed has
    /// applied.
    fn erased_at(&self, hash: &[u8; 32]) -> Result<Option<UnixNanos>, StoreError>;
    /// Every event of the contact, in recording order.
    fn history(&self, contact: &str) -> Result<Vec<EventRecord>, StoreError> {
        self.history_page(contact, 0, usize::MAX)
    }
    /// Up to `limit` events of the contact with a sequence above `after`,
    /// in recording order: one page of its history, whatever its length.
    fn history_page(
        &self,
        contact: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// Every wording of `consent` (of every consent when `None`), by
    /// consent id, then version.
    fn wordings(&self, consent: Option<&str>) -> Result<Vec<Wording>, StoreError>;
    /// Writes the batch in one transaction and returns once it is durable;
    /// on error nothing of it is kept. The batch is numbered by its writer
    /// and lands as numbered; a store shared by several writers refuses a
    /// batch numbered below what it holds (a writer ruling on a stale view:
    /// see [`SharedStore::commit_on_latest`]). A batch without events
    /// returns its `next_sequence`.
    fn commit(&self, batch: &WriteBatch) -> Result<Committed, StoreError>;
    /// The sequence the next event gets, read from the store: after the
    /// store was unreachable, what a commit in doubt may have taken.
    fn next_sequence(&self) -> Result<u64, StoreError> {
        Ok(self.recover()?.next_sequence)
    }
    /// Up to `limit` events committed after `after`, and the erasures
    /// numbered among them, read in one snapshot: what Watch streams.
    fn feed(&self, after: u64, limit: usize) -> Result<FeedPage, StoreError> {
        let _ = (after, limit);
        Err(StoreError::Backend(
            "this store keeps no change feed".into(),
        ))
    }
    /// Deletes everything held for the contact (states, events, the keys its
    /// events used) and keeps only the tombstone, durably. Returns whether
    /// anything was held.
    fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError>;
    /// Makes what erasures deleted unrecoverable from the store's own files
    /// (a backend that reuses or keeps freed space rewrites them); returns
    /// whether there was anything to do. Called by the writer, seconds after
    /// an erasure, while the server keeps serving.
    fn purge_erased(&self) -> Result<bool, StoreError>;
    /// Forgets up to `max` idempotency keys recorded before `before`,
    /// durably; returns how many.
    fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError>;
    /// Where the chain stands (DESIGN.md §11): the sequence of the last
    /// record linked and the chain through it; `None` before the first.
    fn chain_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    /// Up to `limit` links with a sequence above `after`, in order, each
    /// with its record as the store holds it now: what `consentctl audit
    /// verify` recomputes.
    fn links_after(&self, after: u64, limit: usize) -> Result<Vec<(Link, Held)>, StoreError>;
    /// Keeps a signed checkpoint of the chain through `sequence` (a
    /// checkpoint kept there already stays). With `sync`, durable when it
    /// returns; without, durable with the next commit (a crash before it
    /// loses only this checkpoint, which the next one supersedes).
    fn keep_checkpoint(&self, sequence: u64, note: &str, sync: bool) -> Result<(), StoreError>;
    /// Up to `limit` checkpoints with a sequence above `after`, in order.
    fn checkpoints(&self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;
    /// Closes the store, explicitly, once nothing writes to it any more:
    /// files are closed cleanly, connections released. Every later call
    /// answers [`StoreError::Closed`] (or, for a store with nothing to
    /// close, goes on working).
    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What moving the data to another store needs (`consentctl migrate`).
pub trait Transfer: Store {
    /// Up to `limit` events with a sequence above `after`, every contact's,
    /// in sequence order: for moving the data to another store.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    /// Up to `limit` idempotency keys sorting after `after`, in key order.
    fn idempotency_keys(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, IdempotencyRecord)>, StoreError>;
    /// The event recorded under `sequence`, if it is kept.
    fn event_at(&self, sequence: u64) -> Result<Option<EventRecord>, StoreError>;
    /// Every erasure, in full, by hash.
    fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError>;
    /// For an empty store taking over another's data: adopts its erasure
    /// key (so that the tombstones' hashes still name their contacts), its
    /// tombstones and, in a store that shares them, its link keys (a store
    /// that keeps none ignores them).
    fn adopt(
        &self,
        erasure_key: &[u8; 32],
        tombstones: &[Tombstone],
        link_keys: &[String],
    ) -> Result<(), StoreError>;
}

/// A store several nodes write to (DESIGN.md §5, "one view per commit"):
/// every commit is a transaction its writer drives under the store's one
/// commit lock, on a view that holds every commit before it; the change
/// feed brings each node what the others committed; link keys are shared.
pub trait SharedStore: Store {
    /// The commit of a node that rules on the latest view: takes the commit
    /// lock; reads everything committed after `cursor` (events, erasures,
    /// the catalog when its version moved) and hands it to `rule`, which
    /// applies it and rules on it; writes what `rule` returns; commits;
    /// releases the lock. Sequences continue from the store's counter
    /// (`Changes::head` + 1), which `rule` numbers from. On an error nothing
    /// of the write is kept (`in_doubt` aside), but what `rule` was handed
    /// was committed: its view stands.
    fn commit_on_latest(
        &self,
        cursor: Cursor,
        rule: &mut dyn FnMut(Changes) -> Write,
    ) -> Result<Committed, StoreError>;
    /// One page of the change feed: what was committed after `cursor`, at
    /// most `limit` events, read in one snapshot.
    fn changes_after(&self, cursor: Cursor, limit: usize) -> Result<Changes, StoreError>;
    /// Waits until the store signals a commit, at most `timeout`.
    fn wait_for_changes(&self, timeout: std::time::Duration);
    /// The link keys the nodes share, as `ID=SECRET` lines, oldest first;
    /// `fresh` is stored first when there is none.
    fn link_keys(&self, fresh: &str) -> Result<Vec<String>, StoreError>;
}

/// Where a group commit spent its time, step by step as the writer's
/// transaction goes. On a shared store each step but `rule` is one round
/// trip to the database (its statements pipelined) plus what the database
/// did; on redb only `rule`, `write` (the B-tree inserts, in memory) and
/// `commit` (the pages written, then fsync) are taken, the rest is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitPhases {
    /// A pooled connection and BEGIN.
    pub begin: std::time::Duration,
    /// The commit lock (the meta row, `FOR UPDATE`): includes waiting for
    /// another node's commit to end.
    pub lock: std::time::Duration,
    /// The rest of the view: what the others committed after the cursor.
    pub view: std::time::Duration,
    /// The writer ruling the group on that view (no round trip).
    pub rule: std::time::Duration,
    /// The rows: events, states, keys, links.
    pub write: std::time::Duration,
    /// COMMIT: includes the WAL flush to disk (on redb: the pages written
    /// and fsync'd).
    pub commit: std::time::Duration,
}

impl CommitPhases {
    /// The steps' names and times, in the order a commit takes them.
    pub fn steps(&self) -> [(&'static str, std::time::Duration); 6] {
        [
            ("begin", self.begin),
            ("lock", self.lock),
            ("view", self.view),
            ("rule", self.rule),
            ("write", self.write),
            ("commit", self.commit),
        ]
    }
}

/// The store a node runs on, as the wiring opened it: only the wiring knows
/// whether other nodes share it (and so whether there is a feed).
#[derive(Clone)]
pub enum Backend {
    /// A store of this node alone (redb, or memory in tests).
    Local(std::sync::Arc<dyn Store>),
    /// A store several nodes write to (PostgreSQL, or memory in tests).
    Shared(std::sync::Arc<dyn SharedStore>),
}

impl Backend {
    /// The store, for what every node does alike (reads, recovery).
    pub fn store(&self) -> std::sync::Arc<dyn Store> {
        match self {
            Backend::Local(s) => s.clone(),
            Backend::Shared(s) => s.clone(),
        }
    }

    /// The shared store, when other nodes write to it too.
    pub fn shared(&self) -> Option<&std::sync::Arc<dyn SharedStore>> {
        match self {
            Backend::Local(_) => None,
            Backend::Shared(s) => Some(s),
        }
    }
}

impl From<std::sync::Arc<dyn Store>> for Backend {
    fn from(store: std::sync::Arc<dyn Store>) -> Self {
        Backend::Local(store)
    }
}

impl From<std::sync::Arc<dyn SharedStore>> for Backend {
    fn from(store: std::sync::Arc<dyn SharedStore>) -> Self {
        Backend::Shared(store)
    }
}
