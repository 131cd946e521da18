//! Start-up: the catalog and the index rebuilt from the store, and what the
//! writer takes over (the sequence, the erasures, the deletion guard's
//! counts). A node that restarts (the authority opening), and the
//! simulation's nodes, come up through here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::marks::{Slot, counted, place};
use super::{Applied, WriterStart};
use crate::clock::{Clock, SystemClock};
use crate::domain::{AddressHasher, Catalog, Erasures, PhoneRegion};
use crate::index::Index;
use crate::store::{Loaded, Store, StoreError, WriteBatch};

/// How a node behaves, from configuration: the authority and its writer.
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
    /// How long a confirmation link works (`--confirmation-ttl-hours`).
    pub confirmation_ttl: Duration,
    /// At most one new confirmation link per (contact, consent) this often
    /// (`--confirmation-resend-hours`).
    pub confirmation_resend: Duration,
    /// The controller the pages name beside the brand (`--controller-name`;
    /// empty: none named).
    pub controller_name: String,
    /// Where phone numbers written without `+` are dialled
    /// (`--phone-region`; none: such a number is refused).
    pub phone_region: PhoneRegion,
    /// The key receipts and checkpoints are signed with (`--signing-key`;
    /// none: no receipts, no checkpoints).
    pub signer: Option<crate::audit::note::Signer>,
    /// A signed checkpoint at least every this many records...
    pub checkpoint_records: u64,
    /// ...or this often, when anything was committed.
    pub checkpoint_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            default_purpose: None,
            idempotency_retention: Duration::from_secs(7 * 24 * 3600),
            erasure_purge_after: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            confirmation_ttl: Duration::from_secs(168 * 3600),
            confirmation_resend: Duration::from_secs(24 * 3600),
            controller_name: String::new(),
            phone_region: PhoneRegion::NONE,
            signer: None,
            checkpoint_records: 10_000,
            checkpoint_interval: Duration::from_secs(60),
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

/// What start-up rebuilt.
pub(crate) struct Rebuilt {
    /// The index, loaded.
    pub(crate) index: Arc<Index>,
    /// The catalog in force.
    pub(crate) catalog: Catalog,
    /// What the writer takes over.
    pub(crate) start: WriterStart,
    /// How big and how fast.
    pub(crate) report: LoadReport,
    /// Names addresses to the store, under its erasure key.
    pub(crate) addresses: AddressHasher,
}

/// Rebuilds the catalog and the index from `store`.
pub(crate) fn rebuild(store: &dyn Store, options: &Options) -> Result<Rebuilt, StoreError> {
    let started = Instant::now();
    let recovered = store.recover()?;
    let catalog = match recovered.catalog {
        Some(spec) => {
            let restored =
                Catalog::restore(options.default_purpose.clone(), spec, recovered.wordings)
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
        None => Catalog::empty(options.default_purpose.clone()),
    };
    let index = Arc::new(Index::with_capacity(recovered.contacts as usize));
    index.set_confirmation_ttl(crate::clock::nanos(options.confirmation_ttl));
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
    let states = store.load_states(&mut |contact, consent, loaded| {
        let state = matches!(loaded, Loaded::State { .. });
        match place(&index, &catalog, contact, consent, loaded) {
            Slot::State(idx) if state && counted(idx) => usage[idx as usize] += 1,
            Slot::Nowhere => orphans += 1,
            _ => {}
        }
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
    // Everything before the sequence read at the start is in the index.
    let applied = Arc::new(Applied::default());
    applied.advance(recovered.next_sequence.saturating_sub(1));
    let start = WriterStart {
        next_sequence: recovered.next_sequence,
        applied,
        catalog_version: recovered.catalog_version,
        last_recorded_at: recovered.last_recorded_at,
        usage,
        idempotency_retention: options.idempotency_retention,
        purge_after: options.erasure_purge_after,
        checkpoints: options.signer.clone().map(|s| {
            crate::audit::Checkpoints::new(
                s,
                options.checkpoint_records,
                options.checkpoint_interval,
            )
        }),
        clock: options.clock.clone(),
        erasures: Erasures::new(&recovered.erasure_key, recovered.erasures),
        confirmation_ttl: options.confirmation_ttl,
        confirmation_resend: options.confirmation_resend,
    };
    Ok(Rebuilt {
        index,
        catalog,
        start,
        report,
        addresses: AddressHasher::new(&recovered.erasure_key),
    })
}
