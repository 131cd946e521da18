//! The consent authority: the one set of operations that gRPC and HTTP both
//! call. It owns the index, the catalog in force, the store and the writer.
//!
//! Reads (CanSend) go to the index and the catalog snapshot only; writes go
//! through the single [`Writer`]. A cheap, cloneable handle (`Arc` inside).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::domain::{
    Action, Catalog, CatalogSpec, Change, ConsentId, ConsentIdx, ContactId, EventRecord, Evidence,
    FieldError, HeldState, Source, StateRecord, UnixNanos, Verdict, ids::check_contact,
};
use crate::index::Index;
use crate::links::{Claim, Links};
use crate::metrics::{Metrics, Tally};
use crate::store::{Store, StoreError};
use crate::writer::{ChangeOutcome, WriteError, Writer, WriterState, now_nanos};

/// The answer to one CanSend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub verdict: Verdict,
    /// The deciding consent's id; empty for NO_CONSENT and NOT_COVERED.
    pub decided_by: &'static str,
    /// The consent an unsubscribe link for this check withdraws: the most
    /// specific of the covering set (DESIGN.md rule 4).
    pub unsubscribe: Option<ConsentIdx>,
}

/// Why no unsubscribe link can be minted.
#[derive(Debug, thiserror::Error)]
pub enum LinkRefusal {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("no consent of the purpose covers channel {channel:?} and brand {brand:?}")]
    NotCovered { channel: String, brand: String },
}

/// What the page behind a link shows.
#[derive(Debug, Clone)]
pub struct LinkPage {
    pub claim: Claim,
    pub brand: String,
    /// Title of the consent the link withdraws (its id if untitled).
    pub consent_title: String,
    /// Title of the purpose's root ("everything").
    pub purpose_title: String,
}

/// The whole CanSend decision over a catalog snapshot and the index: what
/// the server runs per check, and what `benches/decision.rs` measures.
/// Allocates nothing.
pub fn answer_check(
    catalog: &Catalog,
    index: &Index,
    contact: &str,
    channel: &str,
    brand: &str,
    purpose: &str,
) -> Result<Answer, FieldError> {
    check_contact("contact_id", contact)?;
    let cell = catalog.cell(purpose, channel, brand)?;
    let cover = catalog.covering(cell);
    let verdict = index.verdict(contact, cover);
    let decided_by = match verdict {
        Verdict::Granted { by, .. } | Verdict::Withdrawn { by, .. } => catalog.consent_id(by),
        Verdict::NoConsent | Verdict::NotCovered => "",
    };
    Ok(Answer {
        verdict,
        decided_by,
        unsubscribe: cover.first().copied(),
    })
}

#[derive(Clone)]
pub struct Authority {
    inner: Arc<Inner>,
}

struct Inner {
    index: Arc<Index>,
    catalog: Arc<ArcSwap<Catalog>>,
    store: Arc<dyn Store>,
    writer: Writer,
    metrics: Arc<Metrics>,
    links: Links,
}

/// Start-up figures, for the log and the benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    pub states: u64,
    pub contacts: usize,
    pub seconds: f64,
}

impl Authority {
    /// Rebuilds the index from the store and starts the writer thread. The
    /// thread ends once every handle to the authority is dropped.
    pub fn open(
        store: Arc<dyn Store>,
        default_purpose: Option<String>,
        links: Links,
        idempotency_retention: std::time::Duration,
    ) -> Result<(Authority, JoinHandle<()>, LoadReport), StoreError> {
        let started = Instant::now();
        let loaded = store.recover()?;
        let empty = Catalog::empty(default_purpose);
        let catalog = match loaded.catalog {
            Some(spec) => {
                empty
                    .compile(spec)
                    .map_err(|e| StoreError::Corrupt {
                        table: "meta",
                        what: format!("stored catalog no longer validates: {e}"),
                    })?
                    .0
            }
            None => empty,
        };
        let index = Arc::new(Index::with_capacity(loaded.contacts as usize));
        let mut orphans = 0u64;
        // Contacts holding state, per interned consent: the writer's guard
        // against deleting a held consent, counted in the same pass.
        let mut usage = vec![
            0u64;
            catalog
                .consents()
                .map(|c| c.idx as usize + 1)
                .max()
                .unwrap_or(0)
        ];
        let states = store.load_states(&mut |contact, consent, d| match catalog
            .consent_idx(consent)
        {
            Some(idx) => {
                usage[idx as usize] += 1;
                index.put(
                    contact,
                    HeldState {
                        occurred_at: d.occurred_at,
                        consent: idx,
                        action: d.action,
                    },
                );
            }
            None => orphans += 1,
        })?;
        if orphans > 0 {
            // Deletion of a held consent is refused, so this means a damaged file.
            tracing::error!(
                orphans,
                "states name consents missing from the stored catalog; they are ignored"
            );
        }
        let report = LoadReport {
            states,
            contacts: index.contacts(),
            seconds: started.elapsed().as_secs_f64(),
        };
        let catalog = Arc::new(ArcSwap::from_pointee(catalog));
        let metrics = Arc::new(Metrics::default());
        let (writer, thread) = Writer::start(
            store.clone(),
            index.clone(),
            catalog.clone(),
            WriterState {
                next_sequence: loaded.next_sequence,
                last_recorded_at: loaded.last_recorded_at,
                usage,
                idempotency_retention,
                erasure_key: loaded.erasure_key,
                erasures: loaded.erasures,
            },
            metrics.clone(),
        );
        let inner = Inner {
            index,
            catalog,
            store,
            writer,
            metrics,
            links,
        };
        Ok((
            Authority {
                inner: Arc::new(inner),
            },
            thread,
            report,
        ))
    }

    /// CanSend (DESIGN.md rule 3). Never touches the disk, never allocates.
    pub fn can_send(
        &self,
        contact: &str,
        channel: &str,
        brand: &str,
        purpose: &str,
    ) -> Result<Answer, FieldError> {
        let answer = answer_check(
            &self.inner.catalog.load(),
            &self.inner.index,
            contact,
            channel,
            brand,
            purpose,
        );
        let mut tally = Tally::default();
        tally.count(&answer);
        self.inner.metrics.decisions(&tally);
        answer
    }

    /// Many CanSends over one catalog snapshot, answered in order; `fields`
    /// gives (contact, channel, brand, purpose) of an item.
    pub fn can_send_many<'a, T: 'a>(
        &self,
        items: &'a [T],
        fields: impl Fn(&'a T) -> (&'a str, &'a str, &'a str, &'a str),
    ) -> Vec<Result<Answer, FieldError>> {
        let catalog = self.inner.catalog.load();
        let mut tally = Tally::default();
        let answers = items
            .iter()
            .map(|item| {
                let (contact, channel, brand, purpose) = fields(item);
                let answer = answer_check(
                    &catalog,
                    &self.inner.index,
                    contact,
                    channel,
                    brand,
                    purpose,
                );
                tally.count(&answer);
                answer
            })
            .collect();
        self.inner.metrics.decisions(&tally);
        answers
    }

    /// The one-click URL withdrawing `consent` for this contact, channel, brand.
    pub fn unsubscribe_url(
        &self,
        contact: &str,
        channel: &str,
        brand: &str,
        consent: ConsentIdx,
    ) -> String {
        let catalog = self.inner.catalog.load();
        let claim = Claim {
            contact: ContactId::parse("contact_id", contact)
                .expect("validated by the check that chose this consent"),
            consent: ConsentId::parse("consent_id", catalog.consent_id(consent))
                .expect("catalog ids are valid"),
            channel: channel.to_owned(),
            brand: brand.to_owned(),
            issued_at: now_nanos(),
        };
        self.inner.links.url(&self.inner.links.mint(&claim))
    }

    /// IssueUnsubscribeLink: the URL and the consent it withdraws.
    pub fn issue_link(
        &self,
        contact: &str,
        channel: &str,
        brand: &str,
        purpose: &str,
    ) -> Result<(String, &'static str), LinkRefusal> {
        check_contact("contact_id", contact)?;
        let catalog = self.inner.catalog.load();
        let cell = catalog.cell(purpose, channel, brand)?;
        let &target = catalog
            .covering(cell)
            .first()
            .ok_or_else(|| LinkRefusal::NotCovered {
                channel: channel.to_owned(),
                brand: brand.to_owned(),
            })?;
        Ok((
            self.unsubscribe_url(contact, channel, brand, target),
            catalog.consent_id(target),
        ))
    }

    /// Verifies a link token and gathers what its page shows; `None` for
    /// any token that is not authentic.
    pub fn link_page(&self, token: &str) -> Option<LinkPage> {
        let claim = self.inner.links.verify(token)?;
        let catalog = self.inner.catalog.load();
        let title = |idx: Option<ConsentIdx>, fallback: &str| {
            idx.and_then(|i| catalog.consent(i))
                .map(|c| {
                    if c.spec.title.is_empty() {
                        c.id.to_string()
                    } else {
                        c.spec.title.clone()
                    }
                })
                .unwrap_or_else(|| fallback.to_owned())
        };
        let idx = catalog.consent_idx(claim.consent.as_str());
        let root = idx.and_then(|i| catalog.consent(i)).map(|c| c.purpose);
        Some(LinkPage {
            consent_title: title(idx, claim.consent.as_str()),
            purpose_title: title(root, claim.consent.as_str()),
            brand: claim.brand.clone(),
            claim,
        })
    }

    /// Withdraws what a verified link names: its consent, or with
    /// `everything` the root of its purpose. Returns once durable. A consent
    /// since deleted from the catalog was held by nobody: nothing to do.
    pub async fn unsubscribe(
        &self,
        claim: &Claim,
        everything: bool,
        evidence: Evidence,
    ) -> Result<Option<ChangeOutcome>, WriteError> {
        let consent = {
            let catalog = self.inner.catalog.load();
            let Some(idx) = catalog.consent_idx(claim.consent.as_str()) else {
                return Ok(None);
            };
            let target = match catalog.consent(idx) {
                Some(c) if everything => c.purpose,
                _ => idx,
            };
            ConsentId::parse("consent_id", catalog.consent_id(target))
                .expect("catalog ids are valid")
        };
        let change = Change {
            contact: claim.contact.clone(),
            consent,
            action: Action::Withdraw,
            occurred_at: None,
            source: Source::UnsubscribeLink,
            evidence,
            idempotency_key: None,
            issued_at: Some(claim.issued_at),
        };
        let outcome = self.inner.writer.change(change).await?;
        self.inner.metrics.unsubscribed();
        Ok(Some(outcome))
    }

    /// EraseContact (DESIGN.md rule 5): forgets the contact, keeps a keyed
    /// hash with the time and reason; returns the erasure time once durable.
    pub async fn erase(&self, contact: ContactId, reason: String) -> Result<UnixNanos, WriteError> {
        let erased_at = self.inner.writer.erase(contact, reason).await?;
        self.inner.metrics.erased();
        Ok(erased_at)
    }

    /// Queues a change for the writer (imports pipeline many this way).
    pub async fn submit(
        &self,
        change: Change,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<ChangeOutcome, WriteError>>, WriteError> {
        self.inner.writer.submit(change).await
    }

    /// Grant or Withdraw; returns once durable and visible to CanSend.
    pub async fn change(&self, change: Change) -> Result<ChangeOutcome, WriteError> {
        self.inner.writer.change(change).await
    }

    /// Every current state of a contact (empty for an unknown contact).
    pub fn contact_states(&self, contact: &ContactId) -> Result<Vec<StateRecord>, StoreError> {
        self.inner.store.contact_states(contact.as_str())
    }

    /// Every event of a contact, in recording order.
    pub fn history(&self, contact: &ContactId) -> Result<Vec<EventRecord>, StoreError> {
        self.inner.store.history(contact.as_str())
    }

    pub async fn apply_catalog(&self, spec: CatalogSpec) -> Result<Arc<Catalog>, WriteError> {
        self.inner.writer.apply_catalog(spec).await
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.catalog.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Contacts holding at least one state.
    pub fn contacts(&self) -> usize {
        self.inner.index.contacts()
    }
}
