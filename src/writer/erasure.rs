//! EraseContact on the writer thread (DESIGN.md rule 5): the store forgets
//! the contact and keeps a tombstone (keyed hash, time, reason); then the
//! index forgets it. With a shared store the erasure takes the commit lock
//! first and rules on the latest view, like any commit: its time follows
//! every receipt time applied, and no change committed before it escapes it.

use std::time::Instant;

use super::committer::Committer;
use crate::domain::{ContactId, UnixNanos};
use crate::error::{EraseError, WriteError};
use crate::store::{StoreError, Tombstone, Write};

impl Committer {
    pub(super) fn erase(
        &mut self,
        contact: ContactId,
        reason: String,
    ) -> Result<UnixNanos, EraseError> {
        let hash = self.erasures.hash(contact.as_str());
        let mut stamped: Option<UnixNanos> = None;
        let result = match self.shared.clone() {
            None => {
                let erased_at = self.receipt_time();
                stamped = Some(erased_at);
                // The erasure takes the next sequence, as on a shared store:
                // Watch streams it in its place among the events.
                let sequence = self.next_sequence;
                let tombstone = Tombstone {
                    hash,
                    erased_at,
                    reason,
                    sequence,
                };
                self.store
                    .erase(contact.as_str(), &tombstone)
                    .map(|_| Some(sequence))
            }
            Some(shared) => {
                let mut reason = Some(reason);
                shared
                    .commit_on_latest(self.cursor(), &mut |latest| {
                        self.apply_changes(latest);
                        let erased_at = self.receipt_time();
                        stamped = Some(erased_at);
                        Write::Erase {
                            contact: contact.to_string(),
                            tombstone: Tombstone {
                                hash,
                                erased_at,
                                reason: reason.take().unwrap_or_default(),
                                // The store numbers it under its lock.
                                sequence: 0,
                            },
                        }
                    })
                    .map(|committed| Some(committed.first_sequence))
            }
        };
        match (result, stamped) {
            (Ok(sequence), Some(erased_at)) => {
                self.forget(&contact, hash, erased_at);
                if let Some(sequence) = sequence {
                    self.applied.advance(sequence);
                    self.next_sequence = self.next_sequence.max(sequence + 1);
                }
                self.purge_pending_since.get_or_insert_with(Instant::now);
                Ok(erased_at)
            }
            (Ok(_), None) => unreachable!("an erasure that committed was stamped"),
            (Err(StoreError::Unavailable { in_doubt, cause }), stamped) => {
                self.went_down(format!("erasing a contact: {cause}"));
                match stamped {
                    // In doubt: forget the contact in memory as if the
                    // erasure landed (CanSend answers "no consent", never a
                    // message to someone who may have asked to be
                    // forgotten); the operator retries, which makes it
                    // certain.
                    Some(erased_at) if in_doubt => {
                        self.forget(&contact, hash, erased_at);
                        Err(WriteError::OutcomeUnknown(cause).into())
                    }
                    _ => Err(WriteError::Unavailable(cause).into()),
                }
            }
            (Err(e), _) => {
                self.fail_stop(&e, "erasing a contact");
                Err(WriteError::OutcomeUnknown(e.to_string()).into())
            }
        }
    }
}
