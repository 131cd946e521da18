//! The consent authority: the one façade that gRPC, HTTP and tools call.
//! It owns the index, the catalog in force, the store and the writer, and
//! every rule between a validated request and a domain answer lives here or
//! below, never in a transport.
//!
//! Reads (CanSend) go to the index and the catalog snapshot only; writes go
//! through the single writer; store reads run on the blocking pool. Errors
//! are one enum per operation family ([`ChangeError`], [`CatalogError`],
//! [`EraseError`], [`ReadError`], [`LinkError`]), named for causes; no
//! store type leaves the authority.
//!
//! Layout: this file holds the operations; `links.rs` the unsubscribe links
//! (mint, page, click); `confirm.rs` the double opt-in confirmation;
//! `preferences.rs` the preference center; `pages.rs` what those pages
//! share (a consent as shown, a link's contact erased since);
//! `import.rs` the streamed import pipeline.

mod addresses;
mod asof;
mod check;
mod confirm;
mod import;
mod links;
mod pages;
mod preferences;
mod reads;
mod receipt;
mod snapshot;
mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use self::addresses::{AddressView, Addressing, KindOf, RawAddress, undeliverable_change};
pub use self::check::{Check, Checked};
pub use self::confirm::{CONFIRM_ACTOR, ConfirmPage, Confirmation, Confirmed};
pub use self::import::{Import, ImportSummary, RowError};
pub use self::links::{LinkPage, PAGE_ACTOR};
pub use self::pages::Shown;
pub use self::preferences::{
    PREFERENCES_ACTOR, PreferenceItem, PreferenceOpen, PreferencePage, PreferenceRefusal,
    PreferenceResult, Reach, Through,
};
pub use self::reads::{ContactExport, ContactView, MAX_HISTORY_PAGE};
pub use self::receipt::{RECEIPT_VERSION, Receipt};
pub use self::snapshot::{SnapshotItem, StatesRow};
pub use self::watch::{CHECKPOINT_EVERY, STALL, WATCH_BUFFER, WatchEnd, WatchItem, Watched};
pub use crate::error::{CatalogError, ChangeError, EraseError, LinkError, ReadError, WriteError};

use crate::clock::Clock;
use crate::domain::ids::{ADDRESS_KEY_LEN, address_key};
use crate::domain::{
    AddressKind, Catalog, CatalogSpec, Change, ChangeOutcome, ConsentIdx, ContactHasher, ContactId,
    FieldError, LastCell, UnixNanos, Verdict, ids::check_contact,
};
use crate::index::{Held, Index};
use crate::links::Links;
use crate::metrics::{Metrics, Shed, Tally};
use crate::store::{Backend, Store, StoreError};
use crate::writer::{Applied, Rebuilt, Writer};
pub use crate::writer::{LoadReport, Options};

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
    /// The address the check named (`to`), as read once: its kind and
    /// keyed hash, which the check's unsubscribe link carries.
    pub to: Option<(AddressKind, [u8; 32])>,
}

/// The whole CanSend decision over a catalog snapshot and the index: what
/// the server runs per check, and what `benches/decision.rs` measures.
/// Allocates nothing; reads the clock only when a consent lapses by age or
/// a grant is pending somewhere. `to` is the key of the address the
/// message goes to (DESIGN.md §9): a withdrawal recorded on it turns an
/// allowed answer into ADDRESS_WITHDRAWN, a hard bounce not cleared since
/// into UNDELIVERABLE; its grants only lift, never allow, and never lapse
/// (an address's decisions are not consent). Without `to`, each address
/// of the channel's kind the contact holds is asked the same.
#[allow(clippy::too_many_arguments)]
pub fn answer_check(
    catalog: &Catalog,
    index: &Index,
    clock: &dyn Clock,
    contact: &str,
    channel: &str,
    brand: &str,
    purpose: &str,
    to: Option<&str>,
) -> Result<Answer, FieldError> {
    answer_held(
        catalog,
        &mut LastCell::default(),
        index,
        clock,
        Held::Lookup,
        contact,
        channel,
        brand,
        purpose,
        to,
    )
}

/// [`answer_check`] over states already gathered for a batch, or looked
/// up here.
#[inline]
#[allow(clippy::too_many_arguments)]
fn answer_held<'a>(
    catalog: &Catalog,
    last: &mut LastCell<'a>,
    index: &Index,
    clock: &dyn Clock,
    held: Held<'_>,
    contact: &str,
    channel: &'a str,
    brand: &'a str,
    purpose: &'a str,
    to: Option<&str>,
) -> Result<Answer, FieldError> {
    check_contact("contact_id", contact)?;
    let cell = last.cell(catalog, purpose, channel, brand)?;
    let cover = catalog.covering(cell);
    let mut verdict = index.verdict(held, contact, cover, catalog.terms(), || clock.now());
    if verdict.allowed() {
        let blocked = match to {
            Some(to) => index.address_says(to, cover, || clock.now()),
            // Without `to`, every address of the channel's kind the contact
            // holds must allow (fail closed).
            None if index.has_addresses() => catalog
                .address_kind(channel)
                .and_then(|kind| index.addresses_say(contact, kind, cover, || clock.now())),
            None => None,
        };
        if let Some(v) = blocked {
            verdict = v;
        }
    }
    let decided_by = verdict
        .decided()
        .map_or("", |(by, _)| catalog.consent_id(by));
    Ok(Answer {
        verdict,
        decided_by,
        unsubscribe: cover.first().copied(),
        to: None,
    })
}

/// Counts one answer: its verdict, or an invalid check.
fn count(tally: &mut Tally, answer: &Result<Answer, FieldError>) {
    match answer {
        Ok(a) => tally.verdict(a.verdict),
        Err(_) => tally.invalid(),
    }
}

/// A recorded change and what the caller mails (a confirmation link, for
/// a grant taken as pending; empty otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// What the writer answered.
    pub outcome: ChangeOutcome,
    /// The confirmation URL to mail, or empty.
    pub confirmation_url: String,
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
    /// How far this node's index has caught up with the store.
    applied: Arc<Applied>,
    /// How long a confirmation link works, in nanoseconds.
    confirmation_ttl: UnixNanos,
    /// The controller the pages name beside the brand (empty: none).
    controller: Arc<str>,
    /// Names a contact to the store's tombstones (pages reached from links
    /// minted before an erasure).
    hasher: ContactHasher,
    /// Reads addresses and names them to the store (DESIGN.md §9).
    addressing: Addressing,
    /// Catalogs of past times, built for as-of reads.
    as_of_catalogs: Arc<asof::AsOfCatalogs>,
    /// Signs receipts (the checkpoint key).
    signer: Option<Arc<crate::audit::note::Signer>>,
}

/// How long a read waits for its freshness token (`min_sequence`).
const FRESHNESS_WAIT: Duration = Duration::from_secs(1);

impl Authority {
    /// Rebuilds the index from the store and starts the writer thread,
    /// which runs until [`Authority::close`].
    pub fn open(
        backend: impl Into<Backend>,
        links: Links,
        options: Options,
    ) -> Result<(Authority, LoadReport), StoreError> {
        let backend = backend.into();
        let store = backend.store();
        let rebuilt = crate::writer::rebuild(&*store, &options)?;
        let Rebuilt {
            index,
            catalog,
            start,
            report,
            addresses,
        } = rebuilt;
        let catalog = Arc::new(ArcSwap::from_pointee(catalog));
        let metrics = Arc::new(Metrics::default());
        let applied = start.applied.clone();
        let hasher = start.erasures.hasher();
        let writer = Writer::start(
            backend,
            index.clone(),
            catalog.clone(),
            start,
            metrics.clone(),
        );
        let Options {
            clock,
            confirmation_ttl,
            controller_name,
            phone_region,
            signer,
            ..
        } = options;
        let authority = Authority {
            index,
            catalog,
            store,
            writer,
            metrics,
            links: Arc::new(links),
            imports: Arc::default(),
            clock,
            applied,
            confirmation_ttl: crate::clock::nanos(confirmation_ttl),
            controller: Arc::from(controller_name),
            hasher,
            addressing: Addressing::new(addresses, phone_region),
            as_of_catalogs: Arc::default(),
            signer: signer.map(Arc::new),
        };
        Ok((authority, report))
    }

    /// Stops taking writes, commits what is queued, stops the writer and
    /// the threads around it, then closes the store. Checks keep answering
    /// from memory; later writes answer
    /// [`WriteError::Closed`].
    pub async fn close(&self) -> Result<(), WriteError> {
        self.writer.close().await?;
        // Nothing writes any more: the store is closed by this call, not
        // by whichever handle happens to drop last.
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.close()).await {
            Ok(Ok(())) => tracing::info!("store closed"),
            Ok(Err(e)) => tracing::error!(error = %e, "closing the store failed"),
            Err(e) => tracing::error!(error = %e, "closing the store did not finish"),
        }
        Ok(())
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

    /// Whether the store takes writes, as it changes: false while it cannot
    /// be reached (PostgreSQL down or restarting; CanSend answers on from
    /// memory), true again once it answers.
    pub fn store_available(&self) -> tokio::sync::watch::Receiver<bool> {
        self.writer.available()
    }

    /// Waits until this node has applied every change up to `min_sequence`
    /// (a freshness token: the `sequence` a write answered), at most 1 s;
    /// 0 asks for no wait.
    pub async fn fresh(&self, min_sequence: u64) -> Result<(), ReadError> {
        if min_sequence == 0 {
            return Ok(());
        }
        self.applied
            .reach(min_sequence, FRESHNESS_WAIT)
            .await
            .map_err(|reached| ReadError::NotFresh {
                wanted: min_sequence,
                reached,
            })
    }

    /// Every change up to this sequence is applied on this node.
    pub fn applied_sequence(&self) -> u64 {
        self.applied.get()
    }

    /// With a shared store: changes committed (by any node) that this
    /// node's feed has not read yet, and for how long it has been behind.
    pub fn feed_lag(&self) -> (u64, Duration) {
        self.writer.feed_lag()
    }

    /// With a shared store: the record this node cannot read (its
    /// sequence, and why), while it cannot keep its view up.
    pub fn feed_broken(&self) -> Option<(u64, String)> {
        self.writer.feed_broken()
    }

    /// CanSend (DESIGN.md rule 3). Never touches the disk; allocates only
    /// to normalise an address (`to`).
    pub fn can_send(&self, check: &Check<'_>) -> Result<Answer, FieldError> {
        let answer = self.decide(
            &self.catalog.load(),
            &mut LastCell::default(),
            check,
            Held::Lookup,
        );
        let mut tally = Tally::default();
        count(&mut tally, &answer);
        self.metrics.decisions(&tally);
        answer
    }

    /// One check over a catalog snapshot, with this node's index and clock.
    #[inline]
    fn decide<'a>(
        &self,
        catalog: &Catalog,
        last: &mut LastCell<'a>,
        c: &Check<'a>,
        held: Held<'_>,
    ) -> Result<Answer, FieldError> {
        let to =
            c.to.map(|raw| self.addressing.read_to_hash(catalog, c.channel, raw))
                .transpose()?;
        // The address's key, written in place: no allocation per check.
        let mut buf = [0u8; ADDRESS_KEY_LEN];
        let key = to.as_ref().map(|(_, hash)| address_key(hash, &mut buf));
        let mut answer = answer_held(
            catalog,
            last,
            &self.index,
            &*self.clock,
            held,
            c.contact,
            c.channel,
            c.brand,
            c.purpose,
            key,
        )?;
        answer.to = to;
        Ok(answer)
    }

    /// Many CanSends over one catalog snapshot, answered in order, each
    /// with its link when it asked, handed to `each` as it is decided (see
    /// [`Authority::check_batch`]); `fields` reads an item's check.
    fn can_send_each<'a, T: 'a>(
        &self,
        items: &'a [T],
        fields: impl Fn(&'a T) -> Check<'a>,
        mut each: impl FnMut(Result<Checked, FieldError>),
    ) {
        let catalog = self.catalog.load();
        let mut tally = Tally::default();
        let mut last = LastCell::default();
        let held = self
            .index
            .gather(items.iter().map(|item| fields(item).contact));
        // Each answer is dressed where it is decided and handed on: no
        // vector of answers (a profile found them moved twice).
        for (item, states) in items.iter().zip(&held) {
            let c = fields(item);
            let answer = self.decide(&catalog, &mut last, &c, Held::Gathered(states.as_deref()));
            count(&mut tally, &answer);
            each(answer.map(|a| self.dress(&c, a)));
        }
        self.metrics.decisions(&tally);
    }

    /// Grant or Withdraw; returns once durable and visible to CanSend.
    /// Refused at once when the writer queue is full
    /// ([`WriteError::Overloaded`]); not applied if still waiting at
    /// `deadline` ([`WriteError::DeadlineExceeded`]).
    pub async fn change(
        &self,
        change: Change,
        deadline: Option<Instant>,
    ) -> Result<ChangeOutcome, ChangeError> {
        let started = Instant::now();
        let result = self.writer.change(change, deadline).await;
        self.metrics.write_seconds.observe(started.elapsed());
        // (A missed deadline is counted by the writer, which sees it.)
        if let Err(ChangeError::Write(WriteError::Overloaded(_))) = &result {
            self.metrics.shed(Shed::QueueFull);
        }
        result
    }

    /// Grant or Withdraw as a caller asked it: recorded (see
    /// [`Authority::change`]), with the confirmation link to mail when it
    /// was taken as pending and a new link is due.
    pub async fn record(
        &self,
        change: Change,
        deadline: Option<Instant>,
    ) -> Result<Recorded, ChangeError> {
        let (contact, consent) = (change.contact.clone(), change.consent.clone());
        let outcome = self.change(change, deadline).await?;
        let confirmation_url = self.confirmation_url(&contact, &consent, &outcome);
        Ok(Recorded {
            outcome,
            confirmation_url,
        })
    }

    /// Starts a streamed import: feed it rows, then finish it. Refused with
    /// [`WriteError::Overloaded`] when too many imports run already.
    pub fn import(&self) -> Result<Import, WriteError> {
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
    ) -> Result<UnixNanos, EraseError> {
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

    /// Validates and installs a catalog, atomically and durably.
    pub async fn apply_catalog(&self, spec: CatalogSpec) -> Result<Arc<Catalog>, CatalogError> {
        self.writer.apply_catalog(spec).await
    }

    /// The controller of the data the pages name beside the brand
    /// (`--controller-name`; empty when none was configured).
    pub fn controller_name(&self) -> &str {
        &self.controller
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts the handler time of one CanSend or CanSendBatch call.
    fn observe_check(&self, took: Duration) {
        self.metrics.check_took(took);
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
