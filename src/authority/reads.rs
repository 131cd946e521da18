//! The read side of the authority: a contact's states, its history a page
//! at a time, its whole export, and the wordings. Every store read runs on
//! the blocking pool, off the tokio workers.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Authority, ReadError};
use crate::domain::{
    Action, Address, ConsentId, ContactId, EventRecord, FieldError, Mark, StateRecord, UnixNanos,
    Wording, mark::ADDRESS_EVIDENCE,
};
use crate::store::{Store, StoreError};

/// Most events in one page of history.
pub const MAX_HISTORY_PAGE: usize = 1000;

/// The sequence a history page token continues after (0: the first page).
fn page_after(token: &str) -> Result<u64, FieldError> {
    if token.is_empty() {
        return Ok(0);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| FieldError::new("page_token", "is not a token this server issued"))
}

/// How many events a page holds: 0 means up to [`MAX_HISTORY_PAGE`], and
/// so does more.
fn page_len(page_size: u32) -> usize {
    match page_size as usize {
        0 => MAX_HISTORY_PAGE,
        n => n.min(MAX_HISTORY_PAGE),
    }
}

/// Cuts a page read one event long to `size`, and answers the token of the
/// next page (empty when this one is the last).
fn next_token(events: &mut Vec<EventRecord>, size: usize, after: u64) -> String {
    if events.len() <= size {
        return String::new();
    }
    events.truncate(size);
    let last = events.last().map_or(after, |e| e.sequence);
    URL_SAFE_NO_PAD.encode(last.to_be_bytes())
}

/// What GetContact shows: the contact's states and its pending grants
/// (consent id, record, whether it still waits now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactView {
    /// Whom it is about.
    pub contact: ContactId,
    /// Its current states.
    pub states: Vec<StateRecord>,
    /// Its grants waiting for confirmation.
    pub pending: Vec<(String, crate::domain::PendingRecord, bool)>,
    /// The addresses it sends to, in the order they were added.
    pub addresses: Vec<Address>,
}

/// Everything held about one contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactExport {
    /// Whom it is about.
    pub contact: ContactId,
    /// Its current states.
    pub states: Vec<StateRecord>,
    /// Its whole history, oldest first.
    pub events: Vec<EventRecord>,
    /// The wording behind every (consent, version) of the states and events.
    pub wordings: Vec<Wording>,
    /// When it was read.
    pub exported_at: UnixNanos,
    /// The addresses it sends to, in the order they were added.
    pub addresses: Vec<Address>,
    /// The token of the next page of events (empty after the last).
    pub next_page_token: String,
}

/// Splits a contact's stored states into its consent states and its
/// addresses (the marks it holds), each address's value read from the
/// event that added it: `added` finds that event (by its sequence).
pub(super) fn split_addresses(
    states: Vec<StateRecord>,
    added: impl FnMut(u64) -> Result<Option<EventRecord>, StoreError>,
) -> Result<(Vec<StateRecord>, Vec<Address>), StoreError> {
    let (states, held) = split_held(states, added)?;
    Ok((states, held.into_iter().map(|(a, _)| a).collect()))
}

/// Addresses a contact holds, each with its keyed hash.
pub(super) type HeldWithHash = Vec<(Address, [u8; 32])>;

/// [`split_addresses`], each address with its keyed hash.
pub(super) fn split_held(
    states: Vec<StateRecord>,
    mut added: impl FnMut(u64) -> Result<Option<EventRecord>, StoreError>,
) -> Result<(Vec<StateRecord>, HeldWithHash), StoreError> {
    let mut consents = Vec::with_capacity(states.len());
    let mut held = Vec::new();
    for s in states {
        match Mark::of(s.consent.as_str()) {
            None => consents.push(s),
            Some(Mark::Holds { kind, hash }) if s.action == Action::Grant => {
                held.push((s.sequence, kind, hash))
            }
            Some(_) => {}
        }
    }
    held.sort_unstable_by_key(|(sequence, ..)| *sequence);
    let mut addresses = Vec::with_capacity(held.len());
    for (sequence, kind, hash) in held {
        if let Some(value) = added(sequence)?.and_then(|mut e| e.evidence.remove(ADDRESS_EVIDENCE))
        {
            addresses.push((Address::recorded(kind, value), hash));
        }
    }
    Ok((consents, addresses))
}

/// The event of `contact` recorded under `sequence`, if kept.
pub(super) fn event_at(
    store: &dyn Store,
    contact: &str,
    sequence: u64,
) -> Result<Option<EventRecord>, StoreError> {
    Ok(store
        .history_page(contact, sequence.saturating_sub(1), 1)?
        .into_iter()
        .find(|e| e.sequence == sequence))
}

impl Authority {
    /// GetContact: waits for `min_sequence`, then every current state of
    /// the contact (empty for an unknown contact) and its pending grants,
    /// read together.
    pub async fn contact(
        &self,
        contact: ContactId,
        min_sequence: u64,
    ) -> Result<ContactView, ReadError> {
        self.fresh(min_sequence).await?;
        let now = self.clock.now();
        let ttl = self.confirmation_ttl;
        self.read(move |store| {
            let states = store.contact_states(contact.as_str())?;
            let pending = store
                .contact_pending(contact.as_str())?
                .into_iter()
                .map(|(consent, p)| {
                    let waits = p.waits(now, ttl);
                    (consent, p, waits)
                })
                .collect();
            let (states, addresses) =
                split_addresses(states, |seq| event_at(store, contact.as_str(), seq))?;
            Ok(ContactView {
                contact,
                states,
                pending,
                addresses,
            })
        })
        .await
    }

    /// GetHistory: waits for `min_sequence`, then one page of a contact's
    /// history, in recording order, and the token of the next page (empty
    /// after the last). `page_size` 0 means up to
    /// [`MAX_HISTORY_PAGE`]; more is that many. `page_token` is empty for
    /// the first page.
    pub async fn history(
        &self,
        contact: ContactId,
        page_size: u32,
        page_token: &str,
        min_sequence: u64,
    ) -> Result<(Vec<EventRecord>, String), ReadError> {
        let after = page_after(page_token)?;
        self.fresh(min_sequence).await?;
        let size = page_len(page_size);
        let mut events = self
            .read(move |store| store.history_page(contact.as_str(), after, size + 1))
            .await?;
        let next = next_token(&mut events, size, after);
        Ok((events, next))
    }

    /// Everything held about a contact (GDPR Art. 15/20), a page of its
    /// history at a time (bounded like [`Authority::history`]): its states
    /// and addresses, the page's events and every wording those point at,
    /// read together.
    pub async fn export(
        &self,
        contact: ContactId,
        page_size: u32,
        page_token: &str,
    ) -> Result<ContactExport, ReadError> {
        let after = page_after(page_token)?;
        let size = page_len(page_size);
        let clock = self.clock.clone();
        let export = self
            .read(move |store| {
                // States, then history: when a commit lands in between, the
                // history holds an applied event newer than every state, and
                // the pair is read again, so the two always agree.
                // A contact written to without pause gets the last pair read.
                let mut attempts = 0;
                let (states, mut events) = loop {
                    attempts += 1;
                    let states = store.contact_states(contact.as_str())?;
                    let events = store.history_page(contact.as_str(), after, size + 1)?;
                    let newest = states.iter().map(|s| s.sequence).max().unwrap_or(0);
                    if attempts == 8 || events.iter().all(|e| !e.applied || e.sequence <= newest) {
                        break (states, events);
                    }
                };
                let next_page_token = next_token(&mut events, size, after);
                let (states, addresses) = split_addresses(states, |seq| {
                    match events.iter().find(|e| e.sequence == seq) {
                        Some(e) => Ok(Some(e.clone())),
                        None => event_at(store, contact.as_str(), seq),
                    }
                })?;
                let mut wanted: BTreeSet<(&str, u32)> = events
                    .iter()
                    .filter(|e| !e.consent.is_mark())
                    .map(|e| (e.consent.as_str(), e.version))
                    .collect();
                wanted.extend(states.iter().map(|s| (s.consent.as_str(), s.version)));
                let mut wordings = Vec::with_capacity(wanted.len());
                let consents: BTreeSet<&str> = wanted.iter().map(|(c, _)| *c).collect();
                for consent in consents {
                    wordings.extend(
                        store
                            .wordings(Some(consent))?
                            .into_iter()
                            .filter(|w| wanted.contains(&(consent, w.version))),
                    );
                }
                Ok(ContactExport {
                    contact,
                    states,
                    events,
                    wordings,
                    exported_at: clock.now(),
                    addresses,
                    next_page_token,
                })
            })
            .await?;
        Ok(export)
    }

    /// Runs a blocking store read on the blocking pool, off the tokio workers.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&*store))
            .await
            .map_err(|e| ReadError::Failed(format!("the read task ended: {e}")))?
            .map_err(ReadError::from)
    }

    /// Every wording of `consent` (of every consent when empty), oldest
    /// first. [`ReadError::NeverDeclared`] for an id no catalog ever declared.
    pub async fn wordings(&self, consent: &str) -> Result<Vec<Wording>, ReadError> {
        if consent.is_empty() {
            let mut all = self.read(|store| store.wordings(None)).await?;
            all.sort_by(|a, b| {
                (a.in_force_from, a.consent.as_str(), a.version).cmp(&(
                    b.in_force_from,
                    b.consent.as_str(),
                    b.version,
                ))
            });
            return Ok(all);
        }
        let id = ConsentId::parse("consent_id", consent)?;
        if self.catalog.load().latest_wording(id.as_str()).is_none() {
            return Err(ReadError::NeverDeclared(id.to_string()));
        }
        self.read(move |store| store.wordings(Some(id.as_str())))
            .await
    }
}
