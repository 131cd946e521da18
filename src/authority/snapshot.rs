//! ExportStates (DESIGN.md §10): every contact's states and addresses as
//! of one sequence, streamed a contact at a time, so that a consumer loads
//! it and then Watches from that sequence.
//!
//! The snapshot's sequence is what this node has applied when it starts
//! (so a Watch from it on this node is never ahead of it). The store is
//! read a page of contacts at a time, while writes go on: a contact with a
//! state newer than the sequence is rebuilt from its history up to it
//! ([`crate::domain::fold`]), so every row stands exactly at the sequence;
//! a contact erased meanwhile is left out (the Watch brings its erasure).
//! The stream holds one page; a slow consumer slows the export, nothing
//! else.

use tokio::sync::mpsc;

use super::reads::{HeldWithHash, event_at, split_held};
use super::{Authority, ReadError};
use crate::domain::{Address, FieldError, StateRecord, fold};
use crate::store::{Store, StoreError};

/// Contacts read from the store per page.
const PAGE: usize = 256;

/// One contact of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatesRow {
    /// Whom it is about.
    pub contact: String,
    /// Its states as of the snapshot's sequence (of the purposes asked).
    pub states: Vec<StateRecord>,
    /// The addresses it sent to then, in the order they were added, each
    /// with its keyed hash (what Watch names it by).
    pub addresses: Vec<(Address, [u8; 32])>,
    /// HMAC-SHA256 of the contact id under the store's erasure key.
    pub contact_hash: [u8; 32],
}

/// What a snapshot's consumer receives: a row, the end of a whole
/// snapshot (`None`), or why it broke off.
pub type SnapshotItem = Result<Option<StatesRow>, ReadError>;

impl Authority {
    /// Starts a snapshot of the states of `purposes` (root consent ids;
    /// empty: all); answers the sequence it stands at and its rows. A
    /// purpose that is not a root of the catalog is an error naming it.
    pub fn export_states(
        &self,
        purposes: &[String],
    ) -> Result<(u64, mpsc::Receiver<SnapshotItem>), FieldError> {
        let purposes = self.purposes(purposes)?;
        let at = self.applied_sequence();
        let (tx, rx) = mpsc::channel(PAGE);
        let authority = self.clone();
        tokio::spawn(async move {
            let mut after = String::new();
            loop {
                // One blocking read per page: the contacts, and the history
                // of those that moved past `at`.
                let page = {
                    let after = after.clone();
                    authority
                        .read(move |store| {
                            let page = store.states_after(&after, PAGE)?;
                            let last = page.last().map(|(c, _)| c.clone());
                            let rows = page
                                .into_iter()
                                .map(|(contact, states)| {
                                    let (states, held) = at_sequence(store, &contact, states, at)?;
                                    Ok((contact, states, held))
                                })
                                .collect::<Result<Vec<_>, StoreError>>()?;
                            Ok((last, rows))
                        })
                        .await
                };
                let (last, rows) = match page {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let Some(last) = last else {
                    let _ = tx.send(Ok(None)).await;
                    return;
                };
                after = last;
                let catalog = authority.catalog.load();
                for (contact, states, addresses) in rows {
                    let states: Vec<StateRecord> = states
                        .into_iter()
                        .filter(|s| purposes.passes(&catalog, s.consent.as_str()))
                        .collect();
                    if states.is_empty() && addresses.is_empty() {
                        continue;
                    }
                    let contact_hash = authority.hasher.hash(&contact);
                    let row = StatesRow {
                        contact,
                        states,
                        addresses,
                        contact_hash,
                    };
                    if tx.send(Ok(Some(row))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok((at, rx))
    }
}

/// One contact's states and addresses as of sequence `at`: its stored
/// states when none is newer, else rebuilt from its history up to `at`.
fn at_sequence(
    store: &dyn Store,
    contact: &str,
    states: Vec<StateRecord>,
    at: u64,
) -> Result<(Vec<StateRecord>, HeldWithHash), StoreError> {
    if states.iter().all(|s| s.sequence <= at) {
        return split_held(states, |seq| event_at(store, contact, seq));
    }
    let history = store.history(contact)?;
    let folded = fold(&history, |e| e.sequence <= at);
    split_held(folded.states, |seq| {
        Ok(history.iter().find(|e| e.sequence == seq).cloned())
    })
}
