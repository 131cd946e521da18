//! The consent authority: the one façade that gRPC, HTTP and tools call.
//! It owns the index, the catalog in force, the store and the writer, and
//! every rule between a validated request and a domain answer lives here or
//! below, never in a transport.
//!
//! Reads (CanSend) go to the index and the catalog snapshot only; writes go
//! through the single writer; store reads run on the blocking pool. Errors
//! are one enum, [`Error`], named for causes.
//!
//! Layout: this file holds the operations; `links.rs` the unsubscribe links
//! (mint, page, click); `import.rs` the streamed import pipeline.

mod import;
mod links;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use self::import::{Import, ImportSummary, RowError};
pub use self::links::{LinkPage, PAGE_ACTOR};
pub use crate::error::Error;

use crate::clock::{Clock, SystemClock};
use crate::domain::{
    Catalog, CatalogSpec, Change, ChangeOutcome, ConsentId, ConsentIdx, ContactId, Erasures,
    EventRecord, FieldError, HeldState, StateRecord, UnixNanos, Verdict, Wording,
    ids::check_contact,
};
use crate::index::Index;
use crate::links::Links;
use crate::metrics::{Metrics, Tally};
use crate::store::{Store, StoreError, WriteBatch};
use crate::writer::{Writer, WriterStart};

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

/// Longest erasure reason kept with a tombstone, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// The answer to one CanSend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Which state decided, and how.
    pub verdict: Verdict,
    /// The deciding consent's id; empty for NO_CONSENT and NOT_COVERED.
    pub decided_by: &'static str,
    /// The consent an unsubscribe link for this check withdraws: the most
    /// specific of the covering set (DESIGN.md rule 4).
    pub unsubscribe: Option<ConsentIdx>,
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

/// Counts one answer: its verdict, or an invalid check.
fn count(tally: &mut Tally, answer: &Result<Answer, FieldError>) {
    match answer {
        Ok(a) => tally.verdict(a.verdict),
        Err(_) => tally.invalid(),
    }
}

/// A cheap, cloneable handle (every part is shared).
#[derive(Clone)]
pub struct Authority {
    index: Arc<Index>,
    catalog: Arc<ArcSwap<Catalog>>,
    store: Arc<dyn Store>,
    writer: Writer,
    metrics: Arc<Metrics>,
    links: Arc<Links>,
    imports: Arc<import::ImportLimits>,
    clock: Arc<dyn Clock>,
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
}

/// How the authority behaves, from configuration.
#[derive(Clone)]
pub struct Options {
    /// The purpose a CanSend naming none uses when the catalog sets none.
    pub default_purpose: Option<String>,
    /// How long idempotency keys are remembered (at least 24 hours).
    pub idempotency_retention: Duration,
    /// How long after an erasure the data files are purged of it (several
    /// erasures in that window share one purge).
    pub erasure_purge_after: Duration,
    /// The clock for receipt times, link times and pruning.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            default_purpose: None,
            idempotency_retention: Duration::from_secs(7 * 24 * 3600),
            erasure_purge_after: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Start-up figures, for the log and the benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    /// States loaded into the index.
    pub states: u64,
    /// Contacts holding at least one of them.
    pub contacts: usize,
    /// Wall-clock time of the whole load.
    pub seconds: f64,
}

impl Authority {
    /// Rebuilds the index from the store and starts the writer thread,
    /// which runs until [`Authority::close`].
    pub fn open(
        store: Arc<dyn Store>,
        links: Links,
        options: Options,
    ) -> Result<(Authority, LoadReport), StoreError> {
        let Options {
            default_purpose,
            idempotency_retention,
            erasure_purge_after,
            clock,
        } = options;
        let started = Instant::now();
        let recovered = store.recover()?;
        let catalog = match recovered.catalog {
            Some(spec) => {
                let restored = Catalog::restore(default_purpose, spec, recovered.wordings)
                    .map_err(|e| {
                        StoreError::corrupt(
                            "meta",
                            format!("stored catalog no longer validates: {e}"),
                        )
                    })?;
                if !restored.wordings.is_empty() {
                    // A catalog stored before wordings were kept: keep the
                    // words in force now, under their stored versions.
                    store.commit(&WriteBatch {
                        wordings: restored.wordings,
                        next_sequence: recovered.next_sequence,
                        ..Default::default()
                    })?;
                }
                restored.catalog
            }
            None => Catalog::empty(default_purpose),
        };
        let index = Arc::new(Index::with_capacity(recovered.contacts as usize));
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
        let writer = Writer::start(
            store.clone(),
            index.clone(),
            catalog.clone(),
            WriterStart {
                next_sequence: recovered.next_sequence,
                last_recorded_at: recovered.last_recorded_at,
                usage,
                idempotency_retention,
                purge_after: erasure_purge_after,
                clock: clock.clone(),
                erasures: Erasures::new(&recovered.erasure_key, recovered.erasures),
            },
            metrics.clone(),
        );
        let authority = Authority {
            index,
            catalog,
            store,
            writer,
            metrics,
            links: Arc::new(links),
            imports: Arc::default(),
            clock,
        };
        Ok((authority, report))
    }

    /// Stops taking writes, commits what is queued, and stops the writer.
    /// Reads keep answering from memory; later writes answer
    /// [`Error::Closed`].
    pub async fn close(&self) -> Result<(), Error> {
        self.writer.close().await
    }

    /// The time now, by the authority's clock.
    pub fn now(&self) -> UnixNanos {
        self.clock.now()
    }

    /// Resolves with the cause once writes have stopped for good after a
    /// store failure or a writer panic (fail-stop, DESIGN.md rule 6): the
    /// server then turns NOT_SERVING and exits. Never resolves otherwise.
    pub async fn failed(&self) -> String {
        self.writer.failed().await
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
            &self.catalog.load(),
            &self.index,
            contact,
            channel,
            brand,
            purpose,
        );
        let mut tally = Tally::default();
        count(&mut tally, &answer);
        self.metrics.decisions(&tally);
        answer
    }

    /// Many CanSends over one catalog snapshot, answered in order; `fields`
    /// gives (contact, channel, brand, purpose) of an item.
    pub fn can_send_many<'a, T: 'a>(
        &self,
        items: &'a [T],
        fields: impl Fn(&'a T) -> (&'a str, &'a str, &'a str, &'a str),
    ) -> Vec<Result<Answer, FieldError>> {
        let catalog = self.catalog.load();
        let mut tally = Tally::default();
        let answers = items
            .iter()
            .map(|item| {
                let (contact, channel, brand, purpose) = fields(item);
                let answer = answer_check(&catalog, &self.index, contact, channel, brand, purpose);
                count(&mut tally, &answer);
                answer
            })
            .collect();
        self.metrics.decisions(&tally);
        answers
    }

    /// Grant or Withdraw; returns once durable and visible to CanSend.
    /// Refused at once when the writer queue is full ([`Error::Overloaded`]);
    /// not applied if still waiting at `deadline` ([`Error::DeadlineExceeded`]).
    pub async fn change(
        &self,
        change: Change,
        deadline: Option<Instant>,
    ) -> Result<ChangeOutcome, Error> {
        let started = Instant::now();
        let result = self.writer.change(change, deadline).await;
        self.metrics.write_seconds.observe(started.elapsed());
        match &result {
            Err(Error::Overloaded(_)) => self.metrics.shed("queue_full"),
            Err(Error::DeadlineExceeded) => {} // counted by the writer
            _ => {}
        }
        result
    }

    /// Starts a streamed import: feed it rows, then finish it. Refused with
    /// [`Error::Overloaded`] when too many imports run already.
    pub fn import(&self) -> Result<Import, Error> {
        Import::start(self.writer.clone(), self.metrics.clone(), &self.imports)
    }

    /// EraseContact (DESIGN.md rule 5): forgets the contact, keeps a keyed
    /// hash with the time and `reason`; returns the erasure time once
    /// durable. The reason must be at most [`MAX_REASON_LEN`] bytes without
    /// control characters; `actor` (who asked) goes to the log, not to the
    /// tombstone.
    pub async fn erase(
        &self,
        contact: ContactId,
        reason: String,
        actor: &str,
    ) -> Result<UnixNanos, Error> {
        if reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
            return Err(FieldError::new(
                "reason",
                format!("must be at most {MAX_REASON_LEN} bytes without control characters"),
            )
            .into());
        }
        let erased_at = self.writer.erase(contact, reason).await?;
        self.metrics.erased();
        tracing::info!(actor, erased_at, "contact erased");
        Ok(erased_at)
    }

    /// Every current state of a contact (empty for an unknown contact).
    pub async fn contact_states(&self, contact: ContactId) -> Result<Vec<StateRecord>, Error> {
        self.read(move |store| store.contact_states(contact.as_str()))
            .await
    }

    /// One page of a contact's history, in recording order, and the token
    /// of the next page (empty after the last). `page_size` 0 means up to
    /// [`MAX_HISTORY_PAGE`]; more is that many. `page_token` is empty for
    /// the first page.
    pub async fn history(
        &self,
        contact: ContactId,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<EventRecord>, String), Error> {
        let size = match page_size as usize {
            0 => MAX_HISTORY_PAGE,
            n => n.min(MAX_HISTORY_PAGE),
        };
        let after = page_after(page_token)?;
        let mut events = self
            .read(move |store| store.history_page(contact.as_str(), after, size + 1))
            .await?;
        let next = if events.len() > size {
            events.truncate(size);
            let last = events.last().map_or(after, |e| e.sequence);
            URL_SAFE_NO_PAD.encode(last.to_be_bytes())
        } else {
            String::new()
        };
        Ok((events, next))
    }

    /// Everything held about a contact (GDPR Art. 15/20): its states, its
    /// whole history and every wording those point at, as of one moment.
    pub async fn export(&self, contact: ContactId) -> Result<ContactExport, Error> {
        let clock = self.clock.clone();
        let export = self
            .read(move |store| {
                // States, then history: when a commit lands in between, the
                // history holds an applied event newer than every state, and
                // the pair is read again, so the two always agree.
                // A contact written to without pause gets the last pair read.
                let mut attempts = 0;
                let (states, events) = loop {
                    attempts += 1;
                    let states = store.contact_states(contact.as_str())?;
                    let events = store.history(contact.as_str())?;
                    let newest = states.iter().map(|s| s.sequence).max().unwrap_or(0);
                    if attempts == 8 || events.iter().all(|e| !e.applied || e.sequence <= newest) {
                        break (states, events);
                    }
                };
                let mut wanted: BTreeSet<(&str, u32)> = events
                    .iter()
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
                })
            })
            .await?;
        Ok(export)
    }

    /// Runs a blocking store read on the blocking pool, off the tokio workers.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&*store))
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?
            .map_err(Error::from)
    }

    /// Every wording of `consent` (of every consent when empty), oldest
    /// first. [`Error::NeverDeclared`] for an id no catalog ever declared.
    pub async fn wordings(&self, consent: &str) -> Result<Vec<Wording>, Error> {
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
            return Err(Error::NeverDeclared(id.to_string()));
        }
        self.read(move |store| store.wordings(Some(id.as_str())))
            .await
    }

    /// Validates and installs a catalog, atomically and durably.
    pub async fn apply_catalog(&self, spec: CatalogSpec) -> Result<Arc<Catalog>, Error> {
        self.writer.apply_catalog(spec).await
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts the handler time of one CanSend or CanSendBatch call.
    pub fn observe_check(&self, took: Duration) {
        self.metrics.can_send_seconds.observe(took);
    }

    /// Commands waiting for the writer.
    pub fn writer_queue_depth(&self) -> usize {
        self.writer.queue_depth()
    }

    /// Contacts holding at least one state.
    pub fn contacts(&self) -> usize {
        self.index.contacts()
    }
}
