//! The single writer: every mutation and every catalog change goes through
//! one thread, which groups whatever is queued into one durable redb
//! transaction (group commit).
//!
//! Invariants:
//! - a reply is sent only after the batch holding the change has committed;
//! - the index is updated only after that commit, so a failed commit leaves
//!   it untouched and readers never see a decision that could be lost;
//! - `recorded_at` and `sequence` strictly increase in recording order;
//! - a catalog apply is serialized with the mutations around it, so a
//!   consent cannot gain state while it is being deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use hmac::Mac;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{
    Action, Catalog, CatalogSpec, Change, ConsentIdx, ContactId, Decision, EventRecord, FieldError,
    HeldState, StateRecord, UnixNanos,
};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::store::{IdempotencyRecord, Store, StoreError, Tombstone, WriteBatch};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Most commands folded into one transaction.
const MAX_GROUP: usize = 4096;
/// How often, and how many, expired idempotency keys are pruned.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
const PRUNE_BATCH: usize = 10_000;
/// Queue depth before callers wait (back-pressure).
const QUEUE: usize = 16 * 1024;

/// Why a write was refused or failed. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("consent {0:?} is not in the catalog")]
    UnknownConsent(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The group commit holding the change failed (the error is shared by
    /// every change of the batch, hence a message rather than the error).
    #[error("commit failed: {0}")]
    CommitFailed(String),
    #[error("the writer has stopped")]
    Closed,
}

/// The answer to a Grant or Withdraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOutcome {
    /// False when a newer event already decides or the key was seen before.
    pub applied: bool,
    /// The state of (contact, consent) after the change; `None` when the
    /// contact holds none (a change refused because of an erasure).
    pub state: Option<StateRecord>,
    pub sequence: u64,
}

enum Command {
    Change(Change, oneshot::Sender<Result<ChangeOutcome, WriteError>>),
    Catalog(
        CatalogSpec,
        oneshot::Sender<Result<Arc<Catalog>, WriteError>>,
    ),
    Erase(
        ContactId,
        String,
        oneshot::Sender<Result<UnixNanos, WriteError>>,
    ),
}

/// What the writer takes over from the store at start.
pub struct WriterState {
    pub next_sequence: u64,
    /// The latest receipt time already on file.
    pub last_recorded_at: UnixNanos,
    /// Contacts holding state, per interned consent, as loaded.
    pub usage: Vec<u64>,
    /// How long idempotency keys are remembered (at least 24 hours).
    pub idempotency_retention: std::time::Duration,
    pub erasure_key: [u8; 32],
    pub erasures: Vec<([u8; 32], UnixNanos)>,
}

/// A cheap, cloneable handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
}

impl Writer {
    /// Starts the writer thread. It stops once every handle is dropped,
    /// after finishing what is queued.
    pub fn start(
        store: Arc<dyn Store>,
        index: Arc<Index>,
        catalog: Arc<ArcSwap<Catalog>>,
        state: WriterState,
        metrics: Arc<Metrics>,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut inner = Inner {
            store,
            index,
            catalog,
            next_sequence: state.next_sequence,
            last_recorded: state.last_recorded_at,
            usage: state.usage,
            metrics,
            erasure_mac: HmacSha256::new_from_slice(&state.erasure_key)
                .expect("HMAC takes any key length"),
            erased: state.erasures.into_iter().collect(),
            retention: state.idempotency_retention.as_nanos().min(i64::MAX as u128) as i64,
            last_prune: None,
        };
        let handle = std::thread::Builder::new()
            .name("consentd-writer".into())
            .spawn(move || inner.run(rx))
            .expect("spawning the writer thread at start-up");
        (Writer { tx }, handle)
    }

    /// Records a Grant or Withdraw; returns once it is durable and visible.
    pub async fn change(&self, change: Change) -> Result<ChangeOutcome, WriteError> {
        self.submit(change)
            .await?
            .await
            .map_err(|_| WriteError::Closed)?
    }

    /// Queues a change without waiting for it: the receiver answers once it
    /// is durable. Waits only while the writer's queue is full.
    pub async fn submit(
        &self,
        change: Change,
    ) -> Result<oneshot::Receiver<Result<ChangeOutcome, WriteError>>, WriteError> {
        self.send(|tx| Command::Change(change, tx)).await
    }

    /// Erases a contact; returns the erasure time once durable.
    pub async fn erase(&self, contact: ContactId, reason: String) -> Result<UnixNanos, WriteError> {
        let rx = self.send(|tx| Command::Erase(contact, reason, tx)).await?;
        rx.await.map_err(|_| WriteError::Closed)?
    }

    /// Validates and installs a new catalog, durably, or changes nothing.
    pub async fn apply_catalog(&self, spec: CatalogSpec) -> Result<Arc<Catalog>, WriteError> {
        let rx = self.send(|tx| Command::Catalog(spec, tx)).await?;
        rx.await.map_err(|_| WriteError::Closed)?
    }

    /// Queues a command carrying a reply channel; returns that channel.
    async fn send<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, WriteError>>) -> Command,
    ) -> Result<oneshot::Receiver<Result<T, WriteError>>, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(command(tx))
            .await
            .map_err(|_| WriteError::Closed)?;
        Ok(rx)
    }
}

struct Inner {
    store: Arc<dyn Store>,
    index: Arc<Index>,
    catalog: Arc<ArcSwap<Catalog>>,
    next_sequence: u64,
    last_recorded: UnixNanos,
    /// Contacts holding state, per interned consent (deletion guard).
    usage: Vec<u64>,
    metrics: Arc<Metrics>,
    /// Keyed hash naming erased contacts, and when each was erased.
    erasure_mac: HmacSha256,
    erased: HashMap<[u8; 32], UnixNanos>,
    retention: i64,
    last_prune: Option<Instant>,
}

/// A change decided but not yet committed.
struct Pending {
    reply: oneshot::Sender<Result<ChangeOutcome, WriteError>>,
    outcome: ChangeOutcome,
    /// Set when the change becomes the state: the index update after commit.
    index_update: Option<(ContactKey, HeldState)>,
}

type ContactKey = compact_str::CompactString;

impl Inner {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut queue = Vec::with_capacity(MAX_GROUP);
        while let Some(first) = rx.blocking_recv() {
            queue.push(first);
            while queue.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => queue.push(c),
                    Err(_) => break,
                }
            }
            let mut changes = Vec::with_capacity(queue.len());
            for cmd in queue.drain(..) {
                match cmd {
                    Command::Change(c, reply) => changes.push((c, reply)),
                    Command::Catalog(spec, reply) => {
                        // Everything queued before the apply commits first.
                        self.commit_changes(std::mem::take(&mut changes));
                        let _ = reply.send(self.apply_catalog(spec));
                    }
                    Command::Erase(contact, reason, reply) => {
                        self.commit_changes(std::mem::take(&mut changes));
                        let _ = reply.send(self.erase(contact, reason));
                    }
                }
            }
            self.commit_changes(changes);
            self.prune_if_due();
        }
        tracing::info!("writer stopped: queue drained");
    }

    /// Strictly increasing wall-clock time: the receipt time of one change.
    fn clock(&mut self) -> UnixNanos {
        self.last_recorded = now_nanos().max(self.last_recorded + 1);
        self.last_recorded
    }

    fn commit_changes(
        &mut self,
        changes: Vec<(Change, oneshot::Sender<Result<ChangeOutcome, WriteError>>)>,
    ) {
        if changes.is_empty() {
            return;
        }
        let started = Instant::now();
        let catalog = self.catalog.load_full();
        let mut batch = WriteBatch::default();
        let mut pending: Vec<Pending> = Vec::with_capacity(changes.len());
        // What this batch has decided so far, ahead of the index.
        let mut states: HashMap<(ContactKey, ConsentIdx), StateRecord> = HashMap::new();
        let mut keys: HashMap<String, IdempotencyRecord> = HashMap::new();
        let mut new_usage: Vec<ConsentIdx> = Vec::new();

        for (change, reply) in changes {
            match self.decide(
                &catalog,
                change,
                &mut batch,
                &mut states,
                &mut keys,
                &mut new_usage,
            ) {
                Ok((outcome, index_update)) => pending.push(Pending {
                    reply,
                    outcome,
                    index_update,
                }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        batch.next_sequence = self.next_sequence;
        let n = pending.len();
        match self.store.commit(&batch) {
            Ok(()) => {
                for idx in new_usage {
                    let i = idx as usize;
                    if self.usage.len() <= i {
                        self.usage.resize(i + 1, 0);
                    }
                    self.usage[i] += 1;
                }
                for p in pending {
                    if let Some((contact, state)) = p.index_update {
                        self.index.put(&contact, state);
                    }
                    let _ = p.reply.send(Ok(p.outcome));
                }
                self.metrics.commit(n, started.elapsed());
            }
            Err(e) => {
                tracing::error!(error = %e, changes = n, "commit failed; nothing of this batch was acknowledged");
                self.metrics.commit_failed();
                for p in pending {
                    let _ = p.reply.send(Err(WriteError::CommitFailed(e.to_string())));
                }
            }
        }
    }

    /// Decides one change against the catalog, the batch so far, the index
    /// and the store; appends what must be written to `batch`.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        catalog: &Catalog,
        change: Change,
        batch: &mut WriteBatch,
        states: &mut HashMap<(ContactKey, ConsentIdx), StateRecord>,
        keys: &mut HashMap<String, IdempotencyRecord>,
        new_usage: &mut Vec<ConsentIdx>,
    ) -> Result<(ChangeOutcome, Option<(ContactKey, HeldState)>), WriteError> {
        let idx = catalog
            .consent_idx(change.consent.as_str())
            .ok_or_else(|| WriteError::UnknownConsent(change.consent.to_string()))?;
        let def = catalog
            .consent(idx)
            .expect("by_id only names compiled consents");
        let contact = ContactKey::from(change.contact.as_str());
        let slot = (contact.clone(), idx);

        let current_full = |states: &HashMap<_, StateRecord>,
                            store: &dyn Store|
         -> Result<Option<StateRecord>, WriteError> {
            if let Some(s) = states.get(&slot) {
                return Ok(Some(s.clone()));
            }
            Ok(store.state(change.contact.as_str(), change.consent.as_str())?)
        };

        // Rule 5: nothing from before an erasure brings the contact back.
        if !self.erased.is_empty() {
            let reference = change
                .issued_at
                .or(change.occurred_at)
                .unwrap_or(UnixNanos::MAX);
            if let Some(&erased_at) = self.erased.get(&self.contact_hash(change.contact.as_str()))
                && reference <= erased_at
            {
                return Ok((
                    ChangeOutcome {
                        applied: false,
                        state: current_full(states, &*self.store)?,
                        sequence: 0,
                    },
                    None,
                ));
            }
        }

        let fingerprint = change
            .idempotency_key
            .as_ref()
            .map(|_| fingerprint(&change));
        if let (Some(key), Some(fp)) = (&change.idempotency_key, fingerprint) {
            let seen = match keys.get(key) {
                Some(r) => Some(*r),
                None => self.store.idempotency(key)?,
            };
            if let Some(seen) = seen {
                if seen.fingerprint != fp {
                    return Err(WriteError::FailedPrecondition(format!(
                        "idempotency_key {key:?} was already used for a different change"
                    )));
                }
                let state = current_full(states, &*self.store)?;
                return Ok((
                    ChangeOutcome {
                        applied: false,
                        state,
                        sequence: seen.sequence,
                    },
                    None,
                ));
            }
        }

        if change.action == Action::Grant && def.spec.retired {
            return Err(WriteError::FailedPrecondition(format!(
                "consent {:?} is retired and accepts no new grants",
                def.id.as_str()
            )));
        }

        let recorded_at = self.clock();
        let occurred_at = change.effective_occurred_at(recorded_at);
        let new = Decision {
            occurred_at,
            action: change.action,
        };
        let current: Option<Decision> = match states.get(&slot) {
            Some(s) => Some(s.decision()),
            None => self.index.get(&contact, idx).map(HeldState::decision),
        };
        let applied = current.is_none_or(|c| new.supersedes(c));
        let sequence = self.next_sequence;
        self.next_sequence += 1;

        let record = StateRecord {
            consent: change.consent.clone(),
            action: change.action,
            occurred_at,
            recorded_at,
            source: change.source,
            version: def.spec.version,
            sequence,
        };
        let (state, index_update) = if applied {
            if current.is_none() {
                new_usage.push(idx);
            }
            states.insert(slot, record.clone());
            let held = HeldState {
                occurred_at,
                consent: idx,
                action: change.action,
            };
            (Some(record), Some((contact, held)))
        } else {
            (current_full(states, &*self.store)?, None)
        };
        if let (Some(key), Some(fp)) = (&change.idempotency_key, fingerprint) {
            let r = IdempotencyRecord {
                sequence,
                recorded_at,
                fingerprint: fp,
            };
            keys.insert(key.clone(), r);
            batch.idempotency.push((key.clone(), r));
        }
        batch.events.push(EventRecord {
            contact: change.contact,
            consent: change.consent,
            action: change.action,
            occurred_at,
            recorded_at,
            source: change.source,
            evidence: change.evidence,
            version: def.spec.version,
            sequence,
            idempotency_key: change.idempotency_key,
            applied,
        });
        Ok((
            ChangeOutcome {
                applied,
                state,
                sequence,
            },
            index_update,
        ))
    }

    /// Forgets idempotency keys past retention, a bounded slice at a time
    /// and at most once a minute, between group commits.
    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        match self
            .store
            .prune_idempotency(now_nanos().saturating_sub(self.retention), PRUNE_BATCH)
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "idempotency keys past retention forgotten"),
            Err(e) => tracing::warn!(error = %e, "pruning idempotency keys failed; will retry"),
        }
    }

    fn contact_hash(&self, contact: &str) -> [u8; 32] {
        let mut mac = self.erasure_mac.clone();
        mac.update(contact.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn erase(&mut self, contact: ContactId, reason: String) -> Result<UnixNanos, WriteError> {
        let erased_at = self.clock();
        let tombstone = Tombstone {
            hash: self.contact_hash(contact.as_str()),
            erased_at,
            reason,
        };
        self.store.erase(contact.as_str(), &tombstone)?;
        for s in self.index.remove(contact.as_str()).unwrap_or_default() {
            if let Some(n) = self.usage.get_mut(s.consent as usize) {
                *n = n.saturating_sub(1);
            }
        }
        self.erased.insert(tombstone.hash, erased_at);
        tracing::info!(erased_at, "contact erased");
        Ok(erased_at)
    }

    fn apply_catalog(&mut self, spec: CatalogSpec) -> Result<Arc<Catalog>, WriteError> {
        let current = self.catalog.load_full();
        let (next, removed) = current.compile(spec)?;
        let in_use: Vec<&str> = removed
            .iter()
            .filter(|&&i| self.usage.get(i as usize).copied().unwrap_or(0) > 0)
            .map(|&i| current.consent_id(i))
            .collect();
        if !in_use.is_empty() {
            return Err(WriteError::FailedPrecondition(format!(
                "consents {in_use:?} are held by contacts and cannot be deleted: retire them instead"
            )));
        }
        let batch = WriteBatch {
            catalog: Some(next.spec().clone()),
            next_sequence: self.next_sequence,
            ..Default::default()
        };
        self.store.commit(&batch)?;
        let next = Arc::new(next);
        self.catalog.store(next.clone());
        tracing::info!(
            consents = next.spec().consents.len(),
            channels = next.spec().channels.len(),
            brands = next.spec().brands.len(),
            "catalog applied"
        );
        Ok(next)
    }
}

/// What an idempotency key is bound to: the change as the client sent it.
fn fingerprint(c: &Change) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(c.contact.as_str().as_bytes());
    field(c.consent.as_str().as_bytes());
    field(&[c.action as u8, c.source as u8]);
    match c.occurred_at {
        Some(t) => field(&t.to_le_bytes()),
        None => field(b""),
    }
    for (k, v) in &c.evidence {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    h.finalize().into()
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn now_nanos() -> UnixNanos {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
