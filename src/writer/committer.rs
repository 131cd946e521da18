//! The writer thread: takes what is queued, rules each change with
//! [`crate::domain::rule`] against a [`GroupBatch`], commits the batch in one
//! store transaction, then updates the index and answers.
//!
//! Fail-stop (DESIGN.md rule 6): the first store error of any kind — a
//! commit, a read while ruling, an erasure, pruning, a purge — stops all
//! writing at once. The batch in flight is answered "outcome unknown"
//! (the store may have kept it), everything after it "stopped, nothing
//! recorded", the index is left as it was, and the failure is reported so
//! that the server turns NOT_SERVING and exits. A store that failed is
//! never retried into a state nobody can vouch for; the restart rebuilds
//! the index from what is on disk.
//!
//! A store that is only unreachable ([`StoreError::Unavailable`]: a
//! database connection lost, refused or timed out) is not a failure of the
//! data: writing pauses instead. Every write is answered UNAVAILABLE at
//! once, "outcome unknown" for a commit in doubt; the availability watch
//! turns false (health NOT_SERVING for Consents and Catalog); the store is
//! probed with backoff (1 s doubling to 8 s). When it answers, the sequence
//! counter is read back and the contacts of every commit in doubt are
//! reloaded into the index from the store, so that CanSend agrees with
//! whatever did land, before writes are taken again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};

use super::batch::{ContactKey, GroupBatch};
use super::{Command, Reply, WriterStart};
use crate::clock::{Clock, nanos};
use crate::domain::{
    Action, Catalog, CatalogSpec, Change, ChangeOutcome, ConsentIdx, ContactId, Erasures,
    EventRecord, HeldState, Known, MAX_PENDING_PER_CONTACT, PendingRecord, Ruling, UnixNanos, rule,
};
use crate::error::Error;
use crate::index::Index;
use crate::metrics::{Metrics, Shed};
use crate::store::{Store, StoreError, Tombstone, WriteBatch};

/// Most commands folded into one transaction.
const MAX_GROUP: usize = 4096;
/// How often expired idempotency keys are pruned, and the fewest keys a
/// pass may remove. A pass removes up to twice the keys recorded since the
/// last one, so pruning keeps pace with any insert rate.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
const PRUNE_BATCH: usize = 10_000;

/// The first and longest pause between probes of an unreachable store.
const PROBE_FIRST: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(8);

/// The store could not be reached: writes pause until it answers.
struct Down {
    cause: String,
    next_probe: Instant,
    backoff: Duration,
    /// Contacts whose commit is in doubt: reloaded from the store when it
    /// answers again.
    in_doubt: std::collections::HashSet<ContactId>,
}

/// What ruling one change led to.
enum Ruled {
    /// Added to the batch: answered once the batch commits.
    Recorded,
    /// Nothing to record: answered now.
    Answered(ChangeOutcome),
}

/// Everything the writer thread owns.
pub(super) struct Committer {
    store: Arc<dyn Store>,
    index: Arc<Index>,
    catalog: Arc<ArcSwap<Catalog>>,
    next_sequence: u64,
    /// How far the index has caught up (see [`WriterStart::applied`]).
    applied: Arc<super::Applied>,
    /// The catalog version in force here (a shared store counts them).
    catalog_version: u64,
    /// Whether other nodes write to the store too (then the feed, not this
    /// writer, advances `applied`).
    shared: bool,
    /// The latest receipt time handed out.
    last_recorded: UnixNanos,
    /// Contacts holding state, per interned consent (deletion guard).
    usage: Vec<u64>,
    metrics: Arc<Metrics>,
    erasures: Erasures,
    /// Idempotency retention, in nanoseconds.
    retention: i64,
    last_prune: Option<Instant>,
    /// Idempotency keys recorded since the last pruning pass.
    keys_since_prune: usize,
    purge_after: Duration,
    /// When the oldest erasure not yet purged from the store's files was made.
    purge_pending_since: Option<Instant>,
    clock: Arc<dyn Clock>,
    /// Set once the store failed: every later write is refused.
    failed: Option<String>,
    /// Where the failure is reported (the server watches it).
    failure: watch::Sender<Option<String>>,
    /// Set while the store cannot be reached.
    down: Option<Down>,
    /// Whether the store takes writes now (the server's health watches it).
    available: watch::Sender<bool>,
    /// How long a confirmation link works, in nanoseconds.
    confirmation_ttl: i64,
    /// At most one new confirmation link per (contact, consent) this often.
    confirmation_resend: i64,
}

impl Committer {
    pub(super) fn new(
        store: Arc<dyn Store>,
        index: Arc<Index>,
        catalog: Arc<ArcSwap<Catalog>>,
        start: WriterStart,
        metrics: Arc<Metrics>,
        failure: watch::Sender<Option<String>>,
        available: watch::Sender<bool>,
    ) -> Self {
        Self {
            shared: store.shared(),
            store,
            index,
            catalog,
            next_sequence: start.next_sequence,
            applied: start.applied,
            catalog_version: start.catalog_version,
            last_recorded: start.last_recorded_at,
            usage: start.usage,
            metrics,
            erasures: start.erasures,
            retention: nanos(start.idempotency_retention),
            last_prune: None,
            keys_since_prune: 0,
            purge_after: start.purge_after,
            purge_pending_since: None,
            failed: None,
            failure,
            clock: start.clock,
            down: None,
            available,
            confirmation_ttl: nanos(start.confirmation_ttl),
            confirmation_resend: nanos(start.confirmation_resend),
        }
    }

    /// Runs until closed (or until every handle is gone), then answers the
    /// close once everything queued is done.
    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut queue = Vec::with_capacity(MAX_GROUP);
        let mut closers: Vec<oneshot::Sender<()>> = Vec::new();
        let mut follows = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            queue.push(first);
            while queue.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => queue.push(c),
                    Err(_) => break,
                }
            }
            self.probe_if_due();
            let mut changes = Vec::with_capacity(queue.len());
            for cmd in queue.drain(..) {
                if let Some(cause) = &self.failed {
                    refuse(cmd, cause, &mut closers, &mut rx);
                    continue;
                }
                // While the store is unreachable writes are refused; the
                // rest (a close, the feed's pages) goes on.
                let cmd = match &self.down {
                    Some(down) => {
                        let unavailable = Error::Unavailable(down.cause.clone());
                        match refuse_unavailable(cmd, unavailable) {
                            Some(cmd) => cmd,
                            None => continue,
                        }
                    }
                    None => cmd,
                };
                match cmd {
                    Command::Change(c, deadline, reply) => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            // The caller has given up: applying it now would
                            // record what it was told failed.
                            self.metrics.shed(Shed::Deadline);
                            let _ = reply.send(Err(Error::DeadlineExceeded));
                        } else {
                            changes.push((c, reply));
                        }
                    }
                    Command::Catalog(spec, reply) => {
                        // Everything queued before the apply commits first.
                        self.commit_changes(std::mem::take(&mut changes));
                        let _ = reply.send(self.apply_catalog(spec));
                    }
                    Command::Erase(contact, reason, reply) => {
                        self.commit_changes(std::mem::take(&mut changes));
                        let _ = reply.send(self.erase(contact, reason));
                    }
                    Command::Close(done) => {
                        // What is already queued still runs; nothing new gets in.
                        rx.close();
                        closers.push(done);
                    }
                    Command::Tick => {}
                    // Applied after this group commits: rule 2 makes the
                    // order irrelevant, and a page must not split a group
                    // (every commit wakes the feed: splitting would feed on
                    // itself into one-change commits).
                    Command::Follow(page) => follows.push(page),
                    Command::FollowCatalog(spec, latest, version) => {
                        self.commit_changes(std::mem::take(&mut changes));
                        self.follow_catalog(spec, latest, version);
                    }
                }
            }
            self.commit_changes(changes);
            for page in follows.drain(..) {
                self.follow(page);
            }
            if self.failed.is_none() && self.down.is_none() {
                self.prune_if_due();
                self.purge_if_due();
            }
        }
        // Nothing erased may stay in the files because the server stopped.
        if self.purge_pending_since.is_some() && self.failed.is_none() && self.down.is_none() {
            self.purge();
        }
        tracing::info!("writer stopped: queue drained");
        for done in closers {
            let _ = done.send(());
        }
    }

    /// Stops all writing after a store error (see the module docs).
    fn fail_stop(&mut self, error: &StoreError, during: &str) {
        if let StoreError::Unavailable { cause, .. } = error {
            self.went_down(format!("{during}: {cause}"));
            return;
        }
        if self.failed.is_some() {
            return;
        }
        tracing::error!(error = %error, during, "store failed: writes stop now, the server goes down (fail-stop)");
        self.metrics.store_failed();
        let cause = format!("{during}: {error}");
        self.failed = Some(cause.clone());
        let _ = self.failure.send(Some(cause));
    }

    /// The store could not be reached: pause writing (see the module docs).
    fn went_down(&mut self, cause: String) {
        if self.down.is_none() {
            tracing::error!(cause = %cause, "the store cannot be reached: writes are refused until it answers; CanSend answers from memory");
            self.metrics.store_unavailable();
            let _ = self.available.send(false);
        }
        let down = self.down.get_or_insert_with(|| Down {
            cause: String::new(),
            next_probe: Instant::now() + PROBE_FIRST,
            backoff: PROBE_FIRST,
            in_doubt: Default::default(),
        });
        down.cause = cause;
    }

    /// While the store is unreachable: probes it when due; once it answers,
    /// reads back the sequence, reloads the contacts in doubt, and takes
    /// writes again.
    fn probe_if_due(&mut self) {
        let Some(down) = &mut self.down else { return };
        if Instant::now() < down.next_probe {
            return;
        }
        down.backoff = (down.backoff * 2).min(PROBE_MAX);
        down.next_probe = Instant::now() + down.backoff;
        let next_sequence = match self.store.next_sequence() {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "the store is still unreachable");
                return;
            }
        };
        let catalog = self.catalog.load_full();
        let in_doubt: Vec<ContactId> = down.in_doubt.iter().cloned().collect();
        for contact in &in_doubt {
            let states = match self.store.contact_states(contact.as_str()) {
                Ok(states) => states,
                Err(e) => {
                    tracing::debug!(error = %e, "the store is still unreachable");
                    return;
                }
            };
            let pending = match self.store.contact_pending(contact.as_str()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "the store is still unreachable");
                    return;
                }
            };
            self.release(contact.as_str());
            self.index.forget_pending(contact.as_str());
            for s in states {
                if let Some(idx) = catalog.consent_idx(s.consent.as_str()) {
                    self.hold(
                        contact.as_str(),
                        HeldState::of(idx, s.decision(), s.version, s.source),
                    );
                }
            }
            for (consent, p) in pending {
                if let Some(idx) = catalog.consent_idx(&consent) {
                    self.index.set_pending(contact.as_str(), idx, Some(p));
                }
            }
        }
        self.next_sequence = self.next_sequence.max(next_sequence);
        tracing::info!(
            contacts_reloaded = in_doubt.len(),
            next_sequence = self.next_sequence,
            "the store answers again: writes are taken"
        );
        self.down = None;
        let _ = self.available.send(true);
    }

    /// The receipt time the next recorded change gets: wall-clock time,
    /// but strictly after everything recorded before.
    fn receipt_time(&self) -> UnixNanos {
        self.clock.now().max(self.last_recorded + 1)
    }

    /// Rules every change, commits those that record something in one
    /// transaction, then updates the index and answers. A failed commit
    /// changes nothing: not the index, not the sequence counter.
    pub(super) fn commit_changes(&mut self, changes: Vec<(Change, Reply<ChangeOutcome>)>) {
        if changes.is_empty() {
            return;
        }
        let started = Instant::now();
        let catalog = self.catalog.load_full();
        let first_sequence = self.next_sequence;
        let mut batch = GroupBatch::default();
        for (change, reply) in changes {
            if let Some(cause) = &self.failed {
                let _ = reply.send(Err(Error::Stopped(cause.clone())));
                continue;
            }
            match self.rule_into(&catalog, change, &mut batch) {
                Ok(Ruled::Recorded) => batch.answer_after_commit(reply),
                // An answer that names this batch (a key first used earlier
                // in it, a state it set) waits for the commit: until then
                // it is not durable, and its sequence not final.
                Ok(Ruled::Answered(outcome))
                    if names_batch(&outcome, first_sequence) && !batch.is_empty() =>
                {
                    batch.answer_with_commit(outcome);
                    batch.answer_after_commit(reply);
                }
                Ok(Ruled::Answered(outcome)) => {
                    let _ = reply.send(Ok(outcome));
                }
                Err(Error::Storage(StoreError::Unavailable { cause, .. })) => {
                    self.went_down(format!("reading while ruling a change: {cause}"));
                    let _ = reply.send(Err(Error::Unavailable(cause)));
                }
                Err(Error::Storage(e)) => {
                    self.fail_stop(&e, "reading while ruling a change");
                    let _ = reply.send(Err(Error::Stopped(e.to_string())));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if let Some(cause) = &self.failed {
            // Nothing of this batch went to the store.
            batch.refuse(cause);
            return;
        }
        if let Some(down) = &self.down {
            let cause = down.cause.clone();
            batch.refuse_unavailable(&cause);
            return;
        }
        if batch.is_empty() {
            return;
        }
        batch.write.next_sequence = self.next_sequence;
        let n = batch.len();
        self.keys_since_prune += batch.write.idempotency.len();
        match self.store.commit(&batch.write) {
            Ok(committed) => {
                let assigned = committed.first_sequence;
                // Counted before anyone is answered: a caller that reads the
                // metrics after its answer sees its commit.
                self.metrics.commit(n, started.elapsed());
                // The store numbers in commit order: a store shared with
                // other writers may have moved this batch up, whole.
                let shift = assigned.saturating_sub(first_sequence);
                self.next_sequence += shift;
                let events = batch.write.events.len() as u64;
                if !committed.refused.is_empty() {
                    tracing::info!(
                        refused = committed.refused.len(),
                        "changes refused at commit: an erasure on another node came first"
                    );
                }
                batch.acknowledge(
                    &self.index,
                    &mut self.usage,
                    first_sequence,
                    shift,
                    &committed.refused,
                    &committed.replayed,
                );
                if !self.shared && events > 0 {
                    self.applied.advance(assigned + events - 1);
                }
            }
            Err(StoreError::Unavailable { in_doubt, cause }) => {
                tracing::error!(cause = %cause, changes = n, in_doubt, "commit failed: the store cannot be reached");
                self.metrics.commit_failed();
                self.next_sequence = first_sequence;
                self.went_down(format!("committing a batch: {cause}"));
                if in_doubt {
                    if let Some(down) = &mut self.down {
                        down.in_doubt.extend(batch.contacts());
                    }
                    batch.fail(&cause);
                } else {
                    batch.refuse_unavailable(&cause);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, changes = n, "commit failed; this batch is answered \"outcome unknown\"");
                self.metrics.commit_failed();
                self.next_sequence = first_sequence;
                // Reported before anyone is answered.
                self.fail_stop(&e, "committing a batch");
                batch.fail(&e);
            }
        }
    }

    /// Rules one change: answers it at once (a replay, a change from before
    /// an erasure), or records it in the batch to be answered after commit.
    fn rule_into(
        &mut self,
        catalog: &Catalog,
        change: Change,
        batch: &mut GroupBatch,
    ) -> Result<Ruled, Error> {
        let idx = catalog
            .consent_idx(change.consent.as_str())
            .ok_or_else(|| Error::UnknownConsent(change.consent.to_string()))?;
        let def = catalog
            .consent(idx)
            .expect("consent_idx only names compiled consents");
        let contact = ContactKey::from(change.contact.as_str());
        let fingerprint = change
            .idempotency_key
            .as_ref()
            .map(|_| change.fingerprint());
        let erased_at = self.erasures.erased_at(&contact);
        let known = Known {
            erased_at,
            key: match &change.idempotency_key {
                Some(k) => batch.key(k, &*self.store)?,
                None => None,
            },
            retired: def.spec.retired,
            current: batch.decision(&contact, idx, &self.index),
            holds_state: erased_at.is_some()
                && (self.index.holds(&contact) || batch.holds(&contact)),
            double_opt_in: def.spec.double_opt_in,
            person_withdrew_at: if change.action == Action::Grant && change.source.is_a_system() {
                self.person_withdrew_at(catalog, batch, &contact, idx)
            } else {
                None
            },
        };
        let recorded_at = self.receipt_time();
        let ruling = rule(&change, fingerprint, &known, recorded_at);
        let standing = || batch.state(&contact, idx, change.consent.as_str(), &*self.store);
        let answer = |sequence| -> Result<Ruled, Error> {
            Ok(Ruled::Answered(ChangeOutcome {
                applied: false,
                state: standing()?,
                sequence,
                pending: None,
            }))
        };
        let applied = match ruling {
            Ruling::KeyReused => {
                return Err(Error::KeyReused(change.idempotency_key.unwrap_or_default()));
            }
            Ruling::Retired => return Err(Error::RetiredConsent(def.id.to_string())),
            Ruling::Erased => return answer(0),
            Ruling::Replay { sequence } => {
                // A retried pending grant gets its confirmation link again:
                // the caller that timed out still has a mail to send.
                let pending = batch.replayed_pending(sequence, &*self.store)?;
                return Ok(Ruled::Answered(ChangeOutcome {
                    applied: false,
                    state: standing()?,
                    sequence,
                    pending,
                }));
            }
            Ruling::Superseded | Ruling::Pending => false,
            Ruling::Apply => true,
        };
        let pending = ruling == Ruling::Pending;
        // The guardrails need the batch's and the index's pending records.
        let mut confirmation_link = false;
        if pending {
            let waiting =
                batch.waiting_for(&contact, &self.index, recorded_at, self.confirmation_ttl);
            if waiting >= MAX_PENDING_PER_CONTACT {
                return Err(Error::TooManyPending(change.contact.to_string()));
            }
            confirmation_link = !change.bulk
                && batch
                    .pending_record(&contact, idx, &self.index)
                    .is_none_or(|p| {
                        recorded_at >= p.link_at.saturating_add(self.confirmation_resend)
                    });
        }
        let superseded_by = if applied { None } else { standing()? };
        self.last_recorded = recorded_at;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let event = EventRecord {
            occurred_at: change.effective_occurred_at(recorded_at),
            contact: change.contact,
            consent: change.consent,
            action: change.action,
            recorded_at,
            source: change.source,
            evidence: change.evidence,
            version: def.spec.version,
            sequence,
            idempotency_key: change.idempotency_key,
            applied,
            actor: change.actor,
            pending,
            confirmed: change.confirmed,
            confirmation_link,
        };
        if self.shared {
            batch
                .write
                .event_hashes
                .push(self.erasures.hash(event.contact.as_str()));
        }
        batch.moves_pending(&event, idx, &self.index);
        if applied {
            batch.apply(event, idx, fingerprint, known.current.is_some());
        } else {
            batch.supersede(event, idx, fingerprint, superseded_by);
        }
        Ok(Ruled::Recorded)
    }

    /// The earliest withdrawal the person made themselves of `consent`, an
    /// ancestor or a descendant of it, that is still the state: a grant
    /// after it would undo it somewhere.
    fn person_withdrew_at(
        &self,
        catalog: &Catalog,
        batch: &GroupBatch,
        contact: &ContactKey,
        consent: ConsentIdx,
    ) -> Option<UnixNanos> {
        let related = catalog.related(consent);
        let by_person =
            |h: &HeldState| (h.action == Action::Withdraw && h.by_person).then_some(h.occurred_at);
        if batch.holds(contact) {
            // This batch may have replaced some of the index's states.
            return std::iter::once(consent)
                .chain(related.iter().copied())
                .filter_map(|c| batch.held(contact, c, &self.index))
                .filter_map(|h| by_person(&h))
                .min();
        }
        // One lookup: the contact's few states, checked against the tree.
        self.index.earliest_state(contact, |h| {
            if h.consent == consent || related.binary_search(&h.consent).is_ok() {
                by_person(h)
            } else {
                None
            }
        })
    }

    /// Forgets idempotency keys past retention, between group commits, at
    /// most once a second: up to twice as many as were recorded since.
    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        match self.store.prune_idempotency(
            self.clock.now().saturating_sub(self.retention),
            PRUNE_BATCH.max(2 * std::mem::take(&mut self.keys_since_prune)),
        ) {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "idempotency keys past retention forgotten"),
            Err(e) => self.fail_stop(&e, "pruning idempotency keys"),
        }
    }

    /// Purges what erasures deleted from the store's files once the oldest
    /// erasure waiting for it is `purge_after` old. Writes wait meanwhile
    /// (they queue); CanSend, answered from memory, does not.
    fn purge_if_due(&mut self) {
        if self
            .purge_pending_since
            .is_some_and(|t| t.elapsed() >= self.purge_after)
        {
            self.purge();
        }
    }

    fn purge(&mut self) {
        let started = Instant::now();
        match self.store.purge_erased() {
            Ok(_) => {
                self.purge_pending_since = None;
                self.metrics.purged(started.elapsed());
                tracing::info!(
                    seconds = started.elapsed().as_secs_f64(),
                    "erased contacts purged from the data files"
                );
            }
            Err(e) => self.fail_stop(&e, "purging erased contacts"),
        }
    }

    fn erase(&mut self, contact: ContactId, reason: String) -> Result<UnixNanos, Error> {
        let erased_at = self.receipt_time();
        let tombstone = Tombstone {
            hash: self.erasures.hash(contact.as_str()),
            erased_at,
            reason,
        };
        match self.store.erase(contact.as_str(), &tombstone) {
            Ok(_) => {}
            Err(StoreError::Unavailable {
                in_doubt: false,
                cause,
            }) => {
                self.went_down(format!("erasing a contact: {cause}"));
                return Err(Error::Unavailable(cause));
            }
            // In doubt: forget the contact in memory as if the erasure
            // landed (CanSend answers "no consent", never a message to
            // someone who may have asked to be forgotten); the operator
            // retries, which makes it certain.
            Err(StoreError::Unavailable { cause, .. }) => {
                self.went_down(format!("erasing a contact: {cause}"));
                self.forget(&contact, tombstone.hash, erased_at);
                return Err(Error::OutcomeUnknown(cause));
            }
            Err(e) => {
                self.fail_stop(&e, "erasing a contact");
                return Err(Error::OutcomeUnknown(e.to_string()));
            }
        }
        self.forget(&contact, tombstone.hash, erased_at);
        self.purge_pending_since.get_or_insert_with(Instant::now);
        Ok(erased_at)
    }

    /// Drops an erased contact from memory: its states, and any reload
    /// pending for it.
    /// States decided after the erasure stay (rule 5: a fresh decision
    /// after it is the contact's again); the feed may bring an erasure after
    /// this node has already recorded such a one.
    fn forget(&mut self, contact: &ContactId, hash: [u8; 32], erased_at: UnixNanos) {
        self.last_recorded = self.last_recorded.max(erased_at);
        for s in self.release(contact.as_str()) {
            if s.occurred_at > erased_at {
                self.hold(contact.as_str(), s);
            }
        }
        self.index.forget_pending(contact.as_str());
        if let Some(down) = &mut self.down {
            down.in_doubt.remove(contact);
        }
        self.erasures.record(hash, erased_at);
    }

    /// Puts a state in the index; a contact that did not hold the consent
    /// before now counts for the deletion guard.
    fn hold(&mut self, contact: &str, state: HeldState) {
        if self.index.put(contact, state).is_none() {
            let i = state.consent as usize;
            if self.usage.len() <= i {
                self.usage.resize(i + 1, 0);
            }
            self.usage[i] += 1;
        }
    }

    /// Takes a contact's states out of the index and the deletion guard's
    /// counts; returns them.
    fn release(&mut self, contact: &str) -> Vec<HeldState> {
        let states = self.index.remove(contact).unwrap_or_default();
        for s in &states {
            if let Some(n) = self.usage.get_mut(s.consent as usize) {
                *n = n.saturating_sub(1);
            }
        }
        states
    }

    /// Applies a page of the shared store's feed: each applied event's
    /// decision where rule 2 lets it win (so the order in which nodes
    /// committed does not matter), each erasure; then marks the page's
    /// sequences applied.
    fn follow(&mut self, page: super::follower::Followed) {
        let catalog = self.catalog.load_full();
        let now = self.clock.now();
        for e in page.events {
            self.last_recorded = self.last_recorded.max(e.recorded_at);
            self.metrics
                .feed_delay_seconds
                .observe(Duration::from_nanos(
                    now.saturating_sub(e.recorded_at).max(0) as u64,
                ));
            // Rule 5: what occurred before an erasure of the contact (this
            // page may come after this node applied the erasure) is gone.
            if self
                .erasures
                .erased_at(e.contact.as_str())
                .is_some_and(|at| e.occurred_at <= at)
            {
                continue;
            }
            let Some(idx) = catalog.consent_idx(e.consent.as_str()) else {
                tracing::warn!(consent = %e.consent, sequence = e.sequence, "the feed names a consent this node's catalog lacks");
                continue;
            };
            let contact = e.contact.as_str();
            if e.pending || self.index.has_pending() {
                let prev = self
                    .index
                    .pending(contact)
                    .into_iter()
                    .find(|(c, _)| *c == idx)
                    .map(|(_, p)| p);
                let next = PendingRecord::follow(prev, &e);
                if next != prev {
                    self.index.set_pending(contact, idx, next);
                }
            }
            if !e.applied {
                continue;
            }
            let state = HeldState::of(idx, e.decision(), e.version, e.source);
            let wins = self
                .index
                .get(e.contact.as_str(), idx)
                .is_none_or(|current| state.decision().supersedes(current.decision()));
            if wins {
                self.hold(e.contact.as_str(), state);
            }
        }
        for (tombstone, contact) in page.erasures {
            // A notice missed: find the contact by its keyed hash.
            let contact = contact.or_else(|| {
                self.index
                    .find_contact(|c| self.erasures.hash(c) == tombstone.hash)
            });
            match contact.map(|c| ContactId::parse("contact", &c)) {
                Some(Ok(contact)) => self.forget(&contact, tombstone.hash, tombstone.erased_at),
                _ => {
                    self.erasures.record(tombstone.hash, tombstone.erased_at);
                    self.last_recorded = self.last_recorded.max(tombstone.erased_at);
                }
            }
        }
        self.applied.advance(page.through);
    }

    /// Takes over the catalog another node applied, unless this node's is
    /// as new (its own apply, seen again).
    fn follow_catalog(
        &mut self,
        spec: CatalogSpec,
        latest: Vec<crate::domain::Wording>,
        version: u64,
    ) {
        if version <= self.catalog_version {
            return;
        }
        self.catalog_version = version;
        let current = self.catalog.load_full();
        match current.follow(spec, latest) {
            Ok(next) => {
                tracing::info!(
                    consents = next.spec().consents.len(),
                    "catalog applied by another node taken over"
                );
                self.catalog.store(Arc::new(next));
            }
            Err(e) => {
                tracing::error!(error = %e, "the catalog another node applied does not compile here");
            }
        }
    }

    fn apply_catalog(&mut self, spec: CatalogSpec) -> Result<Arc<Catalog>, Error> {
        let current = self.catalog.load_full();
        let in_force_from = self.receipt_time();
        let compiled = current.compile(spec, in_force_from)?;
        let in_use: Vec<String> = compiled
            .removed
            .iter()
            .filter(|&&i| self.usage.get(i as usize).copied().unwrap_or(0) > 0)
            .map(|&i| current.consent_id(i).to_owned())
            .collect();
        if !in_use.is_empty() {
            return Err(Error::ConsentInUse(in_use));
        }
        let next = compiled.catalog;
        let batch = WriteBatch {
            catalog: Some(next.spec().clone()),
            wordings: compiled.wordings,
            next_sequence: self.next_sequence,
            ..Default::default()
        };
        match self.store.commit(&batch) {
            Ok(committed) => self.catalog_version = committed.catalog_version,
            Err(StoreError::Unavailable {
                in_doubt: false,
                cause,
            }) => {
                self.went_down(format!("applying a catalog: {cause}"));
                return Err(Error::Unavailable(cause));
            }
            Err(e) => {
                self.fail_stop(&e, "applying a catalog");
                return Err(Error::OutcomeUnknown(e.to_string()));
            }
        }
        self.last_recorded = in_force_from;
        let next = Arc::new(next);
        self.catalog.store(next.clone());
        tracing::info!(
            consents = next.spec().consents.len(),
            channels = next.spec().channels.len(),
            brands = next.spec().brands.len(),
            new_wordings = batch.wordings.len(),
            "catalog applied"
        );
        Ok(next)
    }
}

/// Whether an answer refers to the batch numbered from `first` on.
fn names_batch(outcome: &ChangeOutcome, first: u64) -> bool {
    outcome.sequence >= first || outcome.state.as_ref().is_some_and(|s| s.sequence >= first)
}

/// Answers a write while the store is unreachable; hands back what is not
/// a write (a close, a tick).
fn refuse_unavailable(cmd: Command, unavailable: Error) -> Option<Command> {
    match cmd {
        Command::Change(_, _, reply) => {
            let _ = reply.send(Err(unavailable));
        }
        Command::Catalog(_, reply) => {
            let _ = reply.send(Err(unavailable));
        }
        Command::Erase(_, _, reply) => {
            let _ = reply.send(Err(unavailable));
        }
        other => return Some(other),
    }
    None
}

/// Answers a command after a store failure: nothing is recorded any more.
fn refuse(
    cmd: Command,
    cause: &str,
    closers: &mut Vec<oneshot::Sender<()>>,
    rx: &mut mpsc::Receiver<Command>,
) {
    let stopped = || Error::Stopped(cause.to_owned());
    match cmd {
        Command::Change(_, _, reply) => {
            let _ = reply.send(Err(stopped()));
        }
        Command::Catalog(_, reply) => {
            let _ = reply.send(Err(stopped()));
        }
        Command::Erase(_, _, reply) => {
            let _ = reply.send(Err(stopped()));
        }
        Command::Close(done) => {
            rx.close();
            closers.push(done);
        }
        // After a failure nothing is applied any more; the process exits.
        Command::Tick | Command::Follow(_) | Command::FollowCatalog(..) => {}
    }
}

#[cfg(test)]
mod tests {
    //! Group commit over the in-memory store, driven without the thread so
    //! that what lands in one batch is exact.

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{
        Action, ConsentId, ConsentSpec, Decision, Evidence, IdempotencyRecord, Source, StateRecord,
        Wording,
    };
    use crate::store::{MemoryStore, Recovered, StoreError};

    const S: i64 = 1_000_000_000;

    /// The memory store, with commits that fail while `fail` is set, and
    /// a connection that `reach` can cut (see the `REACH_*` modes).
    struct Flaky {
        inner: MemoryStore,
        fail: AtomicBool,
        reach: std::sync::atomic::AtomicU8,
        others: std::sync::atomic::AtomicU64,
    }

    /// Reachable.
    const REACH_UP: u8 = 0;
    /// Unreachable: nothing lands.
    const REACH_DOWN: u8 = 1;
    /// A commit lands, then the connection drops before its answer.
    const REACH_LOST_ANSWER: u8 = 2;

    impl Flaky {
        fn unreachable(&self) -> Result<(), StoreError> {
            match self.reach.load(Ordering::Relaxed) {
                REACH_DOWN => Err(StoreError::Unavailable {
                    in_doubt: false,
                    cause: "connection refused".into(),
                }),
                _ => Ok(()),
            }
        }
    }

    impl Store for Flaky {
        fn recover(&self) -> Result<Recovered, StoreError> {
            self.inner.recover()
        }
        fn load_states(
            &self,
            sink: &mut dyn FnMut(&str, &str, crate::store::Loaded),
        ) -> Result<u64, StoreError> {
            self.inner.load_states(sink)
        }
        fn contact_pending(
            &self,
            contact: &str,
        ) -> Result<Vec<(String, crate::domain::PendingRecord)>, StoreError> {
            self.unreachable()?;
            self.inner.contact_pending(contact)
        }
        fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
            self.inner.idempotency(key)
        }
        fn contact_states(&self, contact: &str) -> Result<Vec<StateRecord>, StoreError> {
            self.unreachable()?;
            self.inner.contact_states(contact)
        }
        fn next_sequence(&self) -> Result<u64, StoreError> {
            self.unreachable()?;
            self.inner.next_sequence()
        }
        fn history_page(
            &self,
            contact: &str,
            after: u64,
            limit: usize,
        ) -> Result<Vec<EventRecord>, StoreError> {
            self.inner.history_page(contact, after, limit)
        }
        fn wordings(&self, consent: Option<&str>) -> Result<Vec<Wording>, StoreError> {
            self.inner.wordings(consent)
        }
        fn commit(&self, batch: &WriteBatch) -> Result<crate::store::Committed, StoreError> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(StoreError::Io(std::io::Error::other("disk full")));
            }
            self.unreachable()?;
            // Sequences other writers took meanwhile: the store numbers this
            // batch after them, as a shared store does.
            let others = self.others.swap(0, Ordering::Relaxed);
            let first = batch.first_sequence();
            let shifted = WriteBatch {
                events: batch
                    .events
                    .iter()
                    .map(|e| EventRecord {
                        sequence: e.sequence + others,
                        ..e.clone()
                    })
                    .collect(),
                idempotency: batch
                    .idempotency
                    .iter()
                    .map(|(k, r)| {
                        let mut r = *r;
                        if r.sequence >= first {
                            r.sequence += others;
                        }
                        (k.clone(), r)
                    })
                    .collect(),
                catalog: batch.catalog.clone(),
                wordings: batch.wordings.clone(),
                next_sequence: batch.next_sequence + others,
                event_hashes: batch.event_hashes.clone(),
            };
            let assigned = self.inner.commit(&shifted)?;
            if self.reach.load(Ordering::Relaxed) == REACH_LOST_ANSWER {
                return Err(StoreError::Unavailable {
                    in_doubt: true,
                    cause: "connection reset during COMMIT".into(),
                });
            }
            Ok(assigned)
        }
        fn erase(&self, contact: &str, tombstone: &Tombstone) -> Result<bool, StoreError> {
            self.inner.erase(contact, tombstone)
        }
        fn prune_idempotency(&self, before: UnixNanos, max: usize) -> Result<usize, StoreError> {
            self.inner.prune_idempotency(before, max)
        }
        fn purge_erased(&self) -> Result<bool, StoreError> {
            self.inner.purge_erased()
        }
        fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
            self.inner.events_after(after, limit)
        }
        fn idempotency_keys(
            &self,
            after: &str,
            limit: usize,
        ) -> Result<Vec<(String, IdempotencyRecord)>, StoreError> {
            self.inner.idempotency_keys(after, limit)
        }
        fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
            self.inner.tombstones()
        }
        fn adopt(
            &self,
            erasure_key: &[u8; 32],
            tombstones: &[Tombstone],
            link_keys: &[String],
        ) -> Result<(), StoreError> {
            self.inner.adopt(erasure_key, tombstones, link_keys)
        }
    }

    fn setup() -> (
        Committer,
        Arc<Flaky>,
        Arc<Index>,
        watch::Receiver<Option<String>>,
    ) {
        let (c, store, index, failed, _) = setup_with_clock();
        (c, store, index, failed)
    }

    /// A committer, its store, its index, its failure report, its clock.
    type Setup = (
        Committer,
        Arc<Flaky>,
        Arc<Index>,
        watch::Receiver<Option<String>>,
        Arc<ManualClock>,
    );

    /// As `setup`, on a clock the test moves (at 1,000,000 s).
    fn setup_with_clock() -> Setup {
        let clock = ManualClock::new(1_000_000 * S);
        let (failure, failed) = watch::channel(None);
        let (available, _) = watch::channel(true);
        let store = Arc::new(Flaky {
            inner: MemoryStore::new().unwrap(),
            fail: AtomicBool::new(false),
            reach: Default::default(),
            others: Default::default(),
        });
        let spec = CatalogSpec {
            channels: vec!["email".into()],
            brands: vec!["acme".into()],
            consents: vec![ConsentSpec {
                id: "marketing".into(),
                text: "News from all our brands".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let catalog = Catalog::empty(None).compile(spec, 0).unwrap().catalog;
        let index = Arc::new(Index::default());
        let committer = Committer::new(
            store.clone(),
            index.clone(),
            Arc::new(ArcSwap::from_pointee(catalog)),
            WriterStart {
                next_sequence: 1,
                applied: Arc::default(),
                catalog_version: 0,
                last_recorded_at: 0,
                usage: vec![0],
                idempotency_retention: Duration::from_secs(24 * 3600),
                erasures: Erasures::new(&[0; 32], []),
                purge_after: Duration::ZERO,
                clock: clock.clone(),
                confirmation_ttl: Duration::from_secs(3600),
                confirmation_resend: Duration::from_secs(60),
            },
            Arc::new(Metrics::default()),
            failure,
            available,
        );
        (committer, store, index, failed, clock)
    }

    fn change(action: Action, seconds: i64, key: Option<&str>) -> Change {
        Change {
            contact: ContactId::parse("contact_id", "anna").unwrap(),
            consent: ConsentId::parse("consent_id", "marketing").unwrap(),
            action,
            occurred_at: Some(seconds * S),
            source: Source::Form,
            evidence: Evidence::new(),
            idempotency_key: key.map(str::to_owned),
            issued_at: None,
            actor: "crm-sync".into(),
            confirmed: false,
            resend: false,
            bulk: false,
        }
    }

    /// Commits `changes` as one group and returns each answer.
    fn group(c: &mut Committer, changes: Vec<Change>) -> Vec<Result<ChangeOutcome, Error>> {
        let mut answers = Vec::new();
        let mut queued = Vec::new();
        for change in changes {
            let (tx, rx) = oneshot::channel();
            queued.push((change, tx));
            answers.push(rx);
        }
        c.commit_changes(queued);
        answers
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("answered by the end of the group"))
            .collect()
    }

    fn held(index: &Index) -> Option<Decision> {
        index.get("anna", 0).map(|h| h.decision())
    }

    #[test]
    fn two_changes_to_one_contact_in_one_batch() {
        let (mut c, store, index, _) = setup();
        let answers = group(
            &mut c,
            vec![
                change(Action::Grant, 10, None),
                change(Action::Withdraw, 20, None),
                // Older than the withdrawal ahead of it in the same batch:
                // the batch's view, not the index, must refuse it.
                change(Action::Grant, 15, None),
            ],
        );
        let answers: Vec<ChangeOutcome> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            answers
                .iter()
                .map(|a| (a.applied, a.sequence))
                .collect::<Vec<_>>(),
            vec![(true, 1), (true, 2), (false, 3)]
        );
        let standing = answers[2].state.as_ref().expect("the withdrawal stands");
        assert_eq!((standing.action, standing.sequence), (Action::Withdraw, 2));
        assert_eq!(
            held(&index),
            Some(Decision {
                occurred_at: 20 * S,
                action: Action::Withdraw
            })
        );
        assert_eq!(store.history("anna").unwrap().len(), 3);
        assert_eq!(store.contact_states("anna").unwrap()[0].sequence, 2);
        assert_eq!(store.recover().unwrap().next_sequence, 4);
    }

    #[test]
    fn a_key_repeated_within_a_batch() {
        let (mut c, store, _, _) = setup();
        let mut other = change(Action::Grant, 10, Some("k1"));
        other.evidence.insert("form".into(), "another".into());
        let answers = group(
            &mut c,
            vec![
                change(Action::Grant, 10, Some("k1")),
                change(Action::Grant, 10, Some("k1")),
                other,
            ],
        );
        let first = answers[0].as_ref().unwrap();
        let replay = answers[1].as_ref().unwrap();
        assert_eq!((first.applied, first.sequence), (true, 1));
        assert_eq!((replay.applied, replay.sequence), (false, 1));
        assert_eq!(replay.state, first.state, "the replay answers the state");
        assert!(matches!(&answers[2], Err(Error::KeyReused(k)) if k == "k1"));
        assert_eq!(store.history("anna").unwrap().len(), 1, "recorded once");
        assert_eq!(store.idempotency("k1").unwrap().unwrap().sequence, 1);
        // And in the next batch, from the store.
        let again = group(&mut c, vec![change(Action::Grant, 10, Some("k1"))]);
        assert_eq!(again[0].as_ref().unwrap().sequence, 1);
    }

    #[test]
    fn a_failed_commit_stops_all_writing() {
        let (mut c, store, index, failed) = setup();
        store.fail.store(true, Ordering::Relaxed);
        let answers = group(
            &mut c,
            vec![
                change(Action::Grant, 10, Some("k1")),
                change(Action::Withdraw, 20, None),
            ],
        );
        for a in &answers {
            assert!(
                matches!(a, Err(Error::OutcomeUnknown(m)) if m.contains("disk full")),
                "{a:?}"
            );
        }
        assert_eq!(held(&index), None, "the index never saw it");
        assert_eq!(c.usage, vec![0], "nor the deletion guard");
        assert!(store.history("anna").unwrap().is_empty());
        let cause = failed.borrow().clone().expect("the failure is reported");
        assert!(cause.contains("disk full"), "{cause}");

        // Fail-stop: even once the disk works again, nothing more is written.
        store.fail.store(false, Ordering::Relaxed);
        let answers = group(&mut c, vec![change(Action::Grant, 30, None)]);
        assert!(
            matches!(&answers[0], Err(Error::Stopped(_))),
            "{:?}",
            answers[0]
        );
        assert!(store.history("anna").unwrap().is_empty());
        assert_eq!(held(&index), None);
    }

    #[test]
    fn an_unreachable_store_pauses_writes_and_a_commit_in_doubt_is_reloaded() {
        let (mut c, store, index, failed) = setup();
        let available = c.available.subscribe();
        // The commit lands, its answer is lost.
        store.reach.store(REACH_LOST_ANSWER, Ordering::Relaxed);
        let answers = group(&mut c, vec![change(Action::Grant, 10, None)]);
        assert!(
            matches!(&answers[0], Err(Error::OutcomeUnknown(m)) if m.contains("COMMIT")),
            "{:?}",
            answers[0]
        );
        assert!(!*available.borrow(), "writes are paused");
        assert!(failed.borrow().is_none(), "not fail-stop");
        assert_eq!(held(&index), None, "not known to be durable yet");

        // While it is down, writes are refused at once and nothing lands.
        store.reach.store(REACH_DOWN, Ordering::Relaxed);
        let answers = group(&mut c, vec![change(Action::Withdraw, 20, None)]);
        assert!(
            matches!(&answers[0], Err(Error::Unavailable(_))),
            "{:?}",
            answers[0]
        );
        assert_eq!(store.history("anna").unwrap().len(), 1);
        let due = |c: &mut Committer| c.down.as_mut().expect("down").next_probe = Instant::now();
        due(&mut c);
        c.probe_if_due();
        assert!(c.down.is_some(), "a failed probe keeps writes paused");

        // It answers again: the contact in doubt is reloaded from the
        // store, so CanSend sees the grant that did land.
        store.reach.store(REACH_UP, Ordering::Relaxed);
        due(&mut c);
        c.probe_if_due();
        assert!(c.down.is_none());
        assert!(*available.borrow());
        assert_eq!(
            held(&index),
            Some(Decision {
                occurred_at: 10 * S,
                action: Action::Grant
            })
        );
        assert_eq!(c.usage, vec![1]);
        // And the next write follows the sequence the landed commit took.
        let answers = group(&mut c, vec![change(Action::Withdraw, 20, None)]);
        let outcome = answers[0].as_ref().unwrap();
        assert_eq!((outcome.applied, outcome.sequence), (true, 2));
    }

    #[test]
    fn a_batch_the_store_numbers_later_is_answered_with_the_store_s_sequences() {
        let (mut c, store, index, _) = setup();
        // Another writer took ten sequences since this one last committed.
        store.others.store(10, Ordering::Relaxed);
        let answers = group(
            &mut c,
            vec![
                change(Action::Grant, 10, Some("k1")),
                // The same key again in the same batch: a replay, answered
                // with the batch, with the store's sequence.
                change(Action::Grant, 10, Some("k1")),
                change(Action::Withdraw, 20, None),
                // Superseded by the withdrawal: its standing state too.
                change(Action::Grant, 15, None),
            ],
        );
        let got: Vec<(bool, u64, Option<u64>)> = answers
            .into_iter()
            .map(|a| {
                let a = a.unwrap();
                (a.applied, a.sequence, a.state.map(|s| s.sequence))
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (true, 11, Some(11)),
                (false, 11, Some(11)),
                (true, 12, Some(12)),
                (false, 13, Some(12)),
            ]
        );
        assert_eq!(store.idempotency("k1").unwrap().unwrap().sequence, 11);
        assert_eq!(
            held(&index),
            Some(Decision {
                occurred_at: 20 * S,
                action: Action::Withdraw
            })
        );
        // The next batch follows on from the store's numbering.
        let next = group(&mut c, vec![change(Action::Grant, 30, None)]);
        assert_eq!(next[0].as_ref().unwrap().sequence, 14);
        let sequences: Vec<u64> = store
            .history("anna")
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(sequences, vec![11, 12, 13, 14]);
    }

    #[test]
    fn receipt_times_never_go_back_when_the_clock_does() {
        let (mut c, store, _, _, clock) = setup_with_clock();
        let now = |c: &Change| {
            let mut c = c.clone();
            c.occurred_at = None;
            c
        };
        let first = group(&mut c, vec![now(&change(Action::Grant, 0, None))]);
        assert!(first[0].is_ok());
        clock.step(-3_600 * S); // NTP steps the clock back an hour
        let second = group(&mut c, vec![now(&change(Action::Withdraw, 0, None))]);
        let second = second[0].as_ref().unwrap();
        let history = store.history("anna").unwrap();
        assert!(history[1].recorded_at > history[0].recorded_at);
        assert!(second.applied, "the later withdrawal still wins");
        clock.step(7_200 * S);
        group(&mut c, vec![now(&change(Action::Grant, 0, None))]);
        let history = store.history("anna").unwrap();
        assert_eq!(history[2].recorded_at, 1_003_600 * S, "back on the clock");
    }

    #[test]
    fn keys_expire_by_the_clock() {
        let (mut c, store, _, _, clock) = setup_with_clock();
        group(&mut c, vec![change(Action::Grant, 10, Some("k1"))]);
        c.last_prune = None;
        c.prune_if_due();
        assert!(
            store.idempotency("k1").unwrap().is_some(),
            "within retention"
        );
        clock.step(25 * 3_600 * S); // past the 24 h retention
        c.last_prune = None;
        c.prune_if_due();
        assert_eq!(store.idempotency("k1").unwrap(), None);
        // The same key is now a new change.
        let again = group(&mut c, vec![change(Action::Grant, 10, Some("k1"))]);
        assert_eq!(again[0].as_ref().unwrap().sequence, 2);
    }
}
