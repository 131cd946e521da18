//! ApplyCatalog on the writer thread: the catalog is compiled as the
//! successor of the one in force (versions assigned here, once), refused if
//! it deletes a consent some contact holds, committed with its new
//! wordings, then swapped in. With a shared store all of it happens under
//! the commit lock, on the latest catalog: two nodes applying at once get
//! one version each in turn, never one number for two texts.

use std::sync::Arc;

use super::committer::Committer;
use crate::domain::{Catalog, CatalogSpec, UnixNanos};
use crate::error::{CatalogError, WriteError};
use crate::store::{StoreError, Write, WriteBatch};

impl Committer {
    pub(super) fn apply_catalog(
        &mut self,
        spec: CatalogSpec,
    ) -> Result<Arc<Catalog>, CatalogError> {
        let mut compiled: Option<Result<(Catalog, usize, UnixNanos, u64), CatalogError>> = None;
        let mut spec = Some(spec);
        let result = match self.shared.clone() {
            None => {
                let (next, batch, at) = self.compile(spec.take().unwrap_or_default())?;
                if self.unchanged(&next, &batch) {
                    return Ok(self.catalog.load_full());
                }
                compiled = Some(Ok((next, batch.wordings.len(), at, batch.catalog_sequence)));
                self.store.commit(&batch)
            }
            Some(shared) => shared.commit_on_latest(self.cursor(), &mut |latest| {
                self.apply_changes(latest);
                match self.compile(spec.take().unwrap_or_default()) {
                    // The catalog in force (with what other nodes applied)
                    // already: nothing to write.
                    Ok((next, batch, at)) if self.unchanged(&next, &batch) => {
                        compiled = Some(Ok((next, 0, at, 0)));
                        Write::Nothing
                    }
                    Ok((next, batch, at)) => {
                        let sequence = batch.catalog_sequence;
                        compiled = Some(Ok((next, batch.wordings.len(), at, sequence)));
                        Write::Batch(batch)
                    }
                    Err(e) => {
                        compiled = Some(Err(e));
                        Write::Nothing
                    }
                }
            }),
        };
        let committed = match result {
            Ok(committed) => committed,
            Err(StoreError::Unavailable {
                in_doubt: false,
                cause,
            }) => {
                self.went_down(format!("applying a catalog: {cause}"));
                return Err(WriteError::Unavailable(cause).into());
            }
            Err(e) => {
                self.fail_stop(&e, "applying a catalog");
                return Err(WriteError::OutcomeUnknown(e.to_string()).into());
            }
        };
        let (next, new_wordings, in_force_from, sequence) = match compiled {
            Some(c) => c?,
            None => unreachable!("a catalog commit that succeeds was compiled"),
        };
        if sequence == 0 {
            return Ok(self.catalog.load_full());
        }
        self.catalog_version = committed.catalog_version;
        self.last_recorded = self.last_recorded.max(in_force_from);
        let next = Arc::new(next);
        self.catalog.store(next.clone());
        // Its place in the feed, once the catalog is in force here.
        self.next_sequence = self.next_sequence.max(sequence + 1);
        self.applied.advance(sequence);
        tracing::info!(
            consents = next.spec().consents.len(),
            channels = next.spec().channels.len(),
            brands = next.spec().brands.len(),
            new_wordings,
            "catalog applied"
        );
        Ok(next)
    }

    /// Whether a compiled catalog is the one in force already (the same
    /// file at a restart, the same ApplyCatalog twice): then nothing is
    /// written, and the feed gets no record of it.
    fn unchanged(&self, next: &Catalog, batch: &WriteBatch) -> bool {
        batch.wordings.is_empty() && next.spec() == self.catalog.load().spec()
    }

    /// Compiles `spec` as the successor of the catalog in force; refuses
    /// the deletion of a consent some contact holds.
    fn compile(&self, spec: CatalogSpec) -> Result<(Catalog, WriteBatch, UnixNanos), CatalogError> {
        let current = self.catalog.load_full();
        let in_force_from = self.receipt_time();
        let compiled = current.compile(spec, in_force_from)?;
        let in_use: Vec<String> = compiled
            .removed
            .iter()
            .filter(|&&i| self.usage.get(i as usize).copied().unwrap_or(0) > 0)
            .map(|&i| current.consent_id(i).to_owned())
            .collect();
        if !in_use.is_empty() {
            return Err(CatalogError::ConsentInUse(in_use));
        }
        let batch = WriteBatch {
            catalog: Some(compiled.catalog.spec().clone()),
            catalog_at: in_force_from,
            // The catalog takes a sequence, like an event: Watch streams
            // it in its place.
            catalog_sequence: self.next_sequence,
            wordings: compiled.wordings,
            next_sequence: self.next_sequence + 1,
            ..Default::default()
        };
        Ok((compiled.catalog, batch, in_force_from))
    }
}
