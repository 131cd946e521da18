//! When the store fails, and when it cannot be reached.
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
//! data: writing pauses instead (up → down → probe → up). Every write is
//! answered UNAVAILABLE at once, "outcome unknown" for a commit in doubt;
//! the availability watch turns false (health NOT_SERVING for Consents and
//! Catalog); the store is probed with backoff (1 s doubling to 8 s). When
//! it answers, the sequence counter is read back and the contacts of every
//! commit in doubt are reloaded into the index from the store (a shared
//! store's feed brings them anyway), before writes are taken again.
//!
//! A record of a shared store this node cannot read stops its writes the
//! same way (it can no longer rule on the latest view) and its checks
//! (NOT_SERVING, via the feed's lag): never silently stale.

use std::time::{Duration, Instant};

use super::committer::{Committer, Down};
use super::marks::{Slot, hold_address};
use crate::domain::{ContactId, HeldState};
use crate::store::StoreError;

/// The first and longest pause between probes of an unreachable store.
const PROBE_FIRST: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(8);

impl Committer {
    /// Stops all writing after a store error (see the module docs); an
    /// unreachable store only pauses it, an unreadable shared record too.
    pub(super) fn fail_stop(&mut self, error: &StoreError, during: &str) {
        match error {
            StoreError::Unavailable { cause, .. } => {
                self.went_down(format!("{during}: {cause}"));
                return;
            }
            StoreError::Unreadable { sequence, .. } => {
                // Another node's record this one cannot read: it can no
                // longer rule on the latest view, nor answer from it.
                tracing::error!(error = %error, during, "a shared record cannot be read: writes and checks stop until it can");
                self.lag.broke(*sequence, error.to_string());
                self.went_down(format!("{during}: {error}"));
                return;
            }
            _ => {}
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
    pub(super) fn went_down(&mut self, cause: String) {
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
    pub(super) fn probe_if_due(&mut self) {
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
        // A shared store's feed brings what landed, in order: no reload.
        let in_doubt: Vec<ContactId> = match self.shared {
            Some(_) => Vec::new(),
            None => down.in_doubt.iter().cloned().collect(),
        };
        for contact in &in_doubt {
            let read = self
                .store
                .contact_states(contact.as_str())
                .and_then(|states| Ok((states, self.store.contact_pending(contact.as_str())?)));
            let (states, pending) = match read {
                Ok(read) => read,
                Err(e) => {
                    tracing::debug!(error = %e, "the store is still unreachable");
                    return;
                }
            };
            self.release(contact.as_str());
            self.index.forget_pending(contact.as_str());
            self.index.forget_addresses(contact.as_str());
            for s in states {
                match Slot::of(&catalog, s.consent.as_str()) {
                    Slot::State(idx) => self.hold(
                        contact.as_str(),
                        HeldState::of(idx, s.decision(), s.version, s.source),
                    ),
                    Slot::Address(address) => {
                        hold_address(&self.index, contact.as_str(), address, s.action);
                    }
                    Slot::Nowhere => {}
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
}
