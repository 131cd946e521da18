//! Ruling a group of changes into one batch: each change is ruled with
//! [`crate::domain::rule`] on the writer's view (the index, the batch so
//! far, the erasures; with a shared store, caught up under its commit lock
//! first), and either answered at once (a replay, a change from before an
//! erasure) or recorded in the batch to be answered after the commit.

use super::Reply;
use super::batch::{ContactKey, GroupBatch};
use super::committer::Committer;
use crate::domain::{
    Action, Catalog, Change, ChangeOutcome, ConsentIdx, EventRecord, HeldState, Known,
    MAX_PENDING_PER_CONTACT, Mark, Ruling, UNDELIVERABLE, UnixNanos, rule,
};
use crate::error::{ChangeError, WriteError};
use crate::store::StoreError;

/// Why ruling one change stopped: the change is refused, or the store
/// failed while the writer read it (handled as a store failure).
enum Refused {
    Change(ChangeError),
    Store(StoreError),
}

impl From<ChangeError> for Refused {
    fn from(e: ChangeError) -> Self {
        Refused::Change(e)
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

/// What ruling one change led to.
enum Ruled {
    /// Added to the batch: answered once the batch commits.
    Recorded,
    /// Nothing to record: answered now.
    Answered(ChangeOutcome),
}

impl Committer {
    /// Rules every change into one batch, numbered from the writer's next
    /// sequence. `None` when nothing is to be written: every change was
    /// answered, or the store failed or went away while ruling (then the
    /// recorded ones are answered so).
    pub(super) fn rule_group(
        &mut self,
        changes: Vec<(Change, Reply<ChangeOutcome, ChangeError>)>,
    ) -> Option<GroupBatch> {
        let catalog = self.catalog.load_full();
        let first_sequence = self.next_sequence;
        let mut batch = GroupBatch::default();
        for (change, reply) in changes {
            if let Some(cause) = &self.failed {
                let _ = reply.send(Err(WriteError::Stopped(cause.clone()).into()));
                continue;
            }
            if Mark::of(change.consent.as_str()) == Some(Mark::SetAddresses) {
                self.rule_addresses(change, &mut batch, reply);
                continue;
            }
            match self.rule_into(&catalog, change, &mut batch) {
                Ok(Ruled::Recorded) => batch.answer_after_commit(reply),
                // An answer that names this batch (a key first used earlier
                // in it, a state it set) waits for the commit: until then
                // it is not durable.
                Ok(Ruled::Answered(outcome))
                    if names_batch(&outcome, first_sequence) && !batch.is_empty() =>
                {
                    batch.answer_with_commit(outcome);
                    batch.answer_after_commit(reply);
                }
                Ok(Ruled::Answered(outcome)) => {
                    let _ = reply.send(Ok(outcome));
                }
                Err(Refused::Store(StoreError::Unavailable { cause, .. })) => {
                    self.went_down(format!("reading while ruling a change: {cause}"));
                    let _ = reply.send(Err(WriteError::Unavailable(cause).into()));
                }
                Err(Refused::Store(e)) => {
                    self.fail_stop(&e, "reading while ruling a change");
                    let _ = reply.send(Err(WriteError::Stopped(e.to_string()).into()));
                }
                Err(Refused::Change(e)) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if let Some(cause) = &self.failed {
            // Nothing of this batch went to the store.
            batch.refuse(cause);
            return None;
        }
        if let Some(down) = &self.down {
            let cause = down.cause.clone();
            batch.refuse_unavailable(&cause);
            return None;
        }
        if batch.is_empty() {
            return None;
        }
        batch.write.next_sequence = self.next_sequence;
        Some(batch)
    }

    /// Rules one change: answers it at once (a replay, a change from before
    /// an erasure), or records it in the batch to be answered after commit.
    fn rule_into(
        &mut self,
        catalog: &Catalog,
        change: Change,
        batch: &mut GroupBatch,
    ) -> Result<Ruled, Refused> {
        // An address's undeliverable mark is ruled like a decision on it
        // (rule 2), with nothing of a consent's: no double opt-in, no
        // stickiness, never retired (DESIGN.md §9).
        let mark = match Mark::of(change.consent.as_str()) {
            None => false,
            Some(Mark::Undeliverable) if change.contact.is_address() => true,
            // No other mark is a change a caller or a page makes.
            Some(_) => return Err(ChangeError::UnknownConsent(change.consent.to_string()).into()),
        };
        let (idx, version, retired, double_opt_in) = if mark {
            (UNDELIVERABLE, 0, false, false)
        } else {
            let idx = catalog
                .consent_idx(change.consent.as_str())
                .ok_or_else(|| ChangeError::UnknownConsent(change.consent.to_string()))?;
            let def = catalog
                .consent(idx)
                .expect("consent_idx only names compiled consents");
            // An address's GRANT only lifts an address withdrawal: it is
            // not consent, so double opt-in never holds it (DESIGN.md §9).
            let double_opt_in = def.spec.double_opt_in && !change.contact.is_address();
            (idx, def.spec.version, def.spec.retired, double_opt_in)
        };
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
            retired,
            current: batch.decision(&contact, idx, &self.index),
            holds_state: erased_at.is_some()
                && (self.index.holds(&contact) || batch.holds(&contact)),
            double_opt_in,
            person_withdrew_at: if !mark
                && change.action == Action::Grant
                && change.source.is_a_system()
            {
                self.person_withdrew_at(catalog, batch, &contact, idx)
            } else {
                None
            },
        };
        let recorded_at = self.receipt_time();
        let ruling = rule(&change, fingerprint, &known, recorded_at);
        let standing = || batch.state(&contact, idx, change.consent.as_str(), &*self.store);
        let answer = |sequence| -> Result<Ruled, Refused> {
            Ok(Ruled::Answered(ChangeOutcome {
                applied: false,
                state: standing()?,
                sequence,
                pending: None,
            }))
        };
        let applied = match ruling {
            Ruling::KeyReused => {
                return Err(
                    ChangeError::KeyReused(change.idempotency_key.unwrap_or_default()).into(),
                );
            }
            Ruling::Retired => {
                return Err(ChangeError::RetiredConsent(change.consent.to_string()).into());
            }
            Ruling::Erased => return answer(0),
            Ruling::Replay { sequence } => {
                // A retried pending grant gets its confirmation link again:
                // the caller that timed out still has a mail to send.
                let pending = batch.replayed_pending(&contact, sequence, &*self.store)?;
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
                return Err(ChangeError::TooManyPending(change.contact.to_string()).into());
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
            version,
            sequence,
            idempotency_key: change.idempotency_key,
            applied,
            actor: change.actor,
            pending,
            confirmed: change.confirmed,
            confirmation_link,
            chain: None,
        };
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
}

/// Whether an answer refers to the batch numbered from `first` on.
fn names_batch(outcome: &ChangeOutcome, first: u64) -> bool {
    outcome.sequence >= first || outcome.state.as_ref().is_some_and(|s| s.sequence >= first)
}
