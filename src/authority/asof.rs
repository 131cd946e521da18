//! As-of reads (DESIGN.md §10): GetContact and CanSend as the server would
//! have answered at a past time, from the history.
//!
//! The contact's events recorded at or before the time are folded into the
//! states it held then ([`crate::domain::fold`]); a CanSend is then decided
//! by the very function the hot path runs ([`super::answer_check`]) over
//! an index holding only those states, the catalog in force then (its
//! versions, scopes, `min_version`, `valid_for_days`), and a clock stopped
//! at that time, so lapses are computed at it. An erased contact's history
//! is gone: it answers as unknown.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::reads::{ContactView, split_addresses};
use super::{Answer, Authority, Check, Checked, ReadError};
use crate::clock::ManualClock;
use crate::domain::ids::{ADDRESS_KEY_LEN, address_key};
use crate::domain::{
    Catalog, ContactId, EventRecord, FieldError, Folded, UnixNanos, Wording, fold,
};
use crate::index::Index;
use crate::store::Loaded;
use crate::writer::place;

/// A contact's history and what it held at a time.
pub(super) struct AsOf {
    /// Its events, in recording order.
    pub(super) history: Vec<EventRecord>,
    /// What it held at the time.
    pub(super) folded: Folded,
}

impl AsOf {
    /// The contact's events recorded at or before `at`, folded.
    pub(super) fn of(history: Vec<EventRecord>, at: UnixNanos) -> AsOf {
        let folded = fold(history.iter().filter(|e| e.recorded_at <= at), |_| true);
        AsOf { history, folded }
    }
}

impl Authority {
    /// GetContact as of `at`: the states the contact held then, its
    /// pending grants (waiting or not, then) and its addresses then.
    pub async fn contact_as_of(
        &self,
        contact: ContactId,
        at: UnixNanos,
    ) -> Result<ContactView, ReadError> {
        let ttl = self.confirmation_ttl;
        self.read(move |store| {
            let asof = AsOf::of(store.history(contact.as_str())?, at);
            let pending = asof
                .folded
                .pending
                .iter()
                .map(|(consent, p)| (consent.clone(), *p, p.waits(at, ttl)))
                .collect();
            let history = &asof.history;
            let (states, addresses) = split_addresses(asof.folded.states, |seq| {
                Ok(history.iter().find(|e| e.sequence == seq).cloned())
            })?;
            Ok(ContactView {
                contact,
                states,
                pending,
                addresses,
            })
        })
        .await
    }
}

/// Catalogs built for as-of reads, by when they came into force: a few
/// kept, since an auditor asks about the same weeks again and again.
#[derive(Default)]
pub(super) struct AsOfCatalogs(std::sync::Mutex<Vec<(UnixNanos, Arc<Catalog>)>>);

/// As-of catalogs kept built.
const KEPT_CATALOGS: usize = 8;

/// Puts what one subject (a contact, or an address's key) held at a time
/// into `index`, each record where start-up would put it.
fn load(index: &Index, catalog: &Catalog, subject: &str, folded: &Folded) {
    for s in &folded.states {
        place(index, catalog, subject, s.consent.as_str(), Loaded::of(s));
    }
    for (consent, p) in &folded.pending {
        place(index, catalog, subject, consent, Loaded::Pending(*p));
    }
}

/// A check's fields, owned: what an as-of read carries to the store.
struct Asked {
    contact: String,
    channel: String,
    brand: String,
    purpose: String,
}

impl Authority {
    /// CanSend as of `at`: decided by [`super::answer_check`] over the
    /// contact's states then (and those of the addresses it asks), the
    /// catalog in force then, and a clock stopped at `at`. Waits for
    /// `min_sequence` first, like a CanSend.
    pub async fn check_as_of(
        &self,
        check: Check<'_>,
        at: UnixNanos,
        min_sequence: u64,
    ) -> Result<Checked, ReadError> {
        if check.include_unsubscribe {
            return Err(FieldError::new(
                "include_unsubscribe",
                "cannot be asked with as_of: a link is for a message sent now",
            )
            .into());
        }
        self.fresh(min_sequence).await?;
        let catalog = self.catalog_as_of(at).await?;
        crate::domain::ids::check_contact("contact_id", check.contact)?;
        catalog.cell(check.purpose, check.channel, check.brand)?;
        let to = check
            .to
            .map(|raw| self.addressing.read_to_hash(&catalog, check.channel, raw))
            .transpose()?;
        let kind = catalog.address_kind(check.channel);
        let asked = Asked {
            contact: check.contact.to_owned(),
            channel: check.channel.to_owned(),
            brand: check.brand.to_owned(),
            purpose: check.purpose.to_owned(),
        };
        let ttl = self.confirmation_ttl;
        let decided = catalog.clone();
        let answer = self
            .read(move |store| {
                let catalog = &*decided;
                let index = Index::default();
                index.set_confirmation_ttl(ttl);
                let contact = AsOf::of(store.history(&asked.contact)?, at).folded;
                load(&index, catalog, &asked.contact, &contact);
                // The addresses whose records the decision reads: `to`, or
                // every address of the channel's kind the contact held then.
                let asked_addresses: Vec<[u8; 32]> = match to {
                    Some((_, hash)) => vec![hash],
                    None => index
                        .addresses(&asked.contact)
                        .iter()
                        .filter(|(k, _)| Some(*k) == kind)
                        .map(|(_, hash)| *hash)
                        .collect(),
                };
                let mut buf = [0u8; ADDRESS_KEY_LEN];
                for hash in &asked_addresses {
                    let key = address_key(hash, &mut buf);
                    load(
                        &index,
                        catalog,
                        key,
                        &AsOf::of(store.history(key)?, at).folded,
                    );
                }
                let key = to.map(|(_, hash)| address_key(&hash, &mut buf).to_owned());
                let clock = ManualClock::new(at);
                Ok(super::answer_check(
                    catalog,
                    &index,
                    &*clock,
                    &asked.contact,
                    &asked.channel,
                    &asked.brand,
                    &asked.purpose,
                    key.as_deref(),
                ))
            })
            .await??;
        Ok(Checked {
            answer: Answer { to, ..answer },
            unsubscribe_url: String::new(),
            list_id: String::new(),
        })
    }

    /// The catalog in force at `at`, as the store kept it, with the
    /// wordings in force then (built once per catalog, a few kept).
    async fn catalog_as_of(&self, at: UnixNanos) -> Result<Arc<Catalog>, ReadError> {
        let kept = self
            .read(move |store| {
                let Some((from, spec)) = store.catalog_at(at)? else {
                    return Ok(None);
                };
                // The wording of every consent in force then: its latest
                // version at or before `at` (every version is kept).
                let mut latest: BTreeMap<String, Wording> = BTreeMap::new();
                for w in store.wordings(None)? {
                    if w.in_force_from <= at.max(from) {
                        latest.insert(w.consent.to_string(), w);
                    }
                }
                Ok(Some((from, spec, latest.into_values().collect::<Vec<_>>())))
            })
            .await?;
        let Some((from, spec, wordings)) = kept else {
            return Ok(self.catalog.load_full());
        };
        let mut cache = self
            .as_of_catalogs
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = cache.iter().find(|(f, _)| *f == from) {
            return Ok(c.clone());
        }
        let built = Arc::new(
            self.catalog
                .load()
                .follow(spec, wordings)
                .map_err(|e| ReadError::Failed(format!("the catalog kept at {from}: {e}")))?,
        );
        if cache.len() == KEPT_CATALOGS {
            cache.remove(0);
        }
        cache.push((from, built.clone()));
        Ok(built)
    }
}
