//! The streamed import pipeline (Consents.Import, and any tool that feeds
//! rows): validated rows are queued at the writer without waiting for each,
//! so they fill whole group commits, while at most
//! [`MAX_IMPORT_IN_FLIGHT`] wait for their answer; a million-row import
//! never sits in memory at once.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::{ChangeError, WriteError};
use crate::domain::{Change, ChangeOutcome, FieldError};
use crate::metrics::{Metrics, Shed};
use crate::writer::Writer;

/// Import rows queued at the writer at once (two full group commits).
pub(super) const MAX_IMPORT_IN_FLIGHT: usize = 8192;
/// Imports running at once; one more is refused (RESOURCE_EXHAUSTED).
pub(super) const MAX_CONCURRENT_IMPORTS: usize = 4;
/// Import rows in flight over all imports together.
pub(super) const MAX_ROWS_IN_FLIGHT: usize = 16_384;
/// Rejected rows listed in an import summary.
pub(super) const MAX_IMPORT_ERRORS: usize = 1000;

/// One rejected row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The row's number, from 1.
    pub row: u64,
    /// Why it was rejected.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Rows received, valid or not.
    pub received: u64,
    /// Valid rows that became a state.
    pub applied: u64,
    /// Valid rows that changed nothing (a newer decision, a repeated key).
    pub superseded: u64,
    /// Invalid rows.
    pub rejected: u64,
    /// Grants taken as pending (recorded, waiting for the person).
    pub pending: u64,
    /// The first 1,000 rejected rows (`MAX_IMPORT_ERRORS`).
    pub errors: Vec<RowError>,
}

impl ImportSummary {
    fn reject(&mut self, row: u64, reason: String) {
        self.rejected += 1;
        if self.errors.len() < MAX_IMPORT_ERRORS {
            self.errors.push(RowError { row, reason });
        }
    }
}

/// An import in progress: [`Import::row`] for each row, then
/// [`Import::finish`]. Dropping it unfinished abandons the answers, not
/// the rows already queued.
pub struct Import {
    writer: Writer,
    metrics: Arc<Metrics>,
    summary: ImportSummary,
    /// Rows queued at the writer and not yet answered, oldest first, each
    /// with its share of the global rows budget.
    pending: VecDeque<InFlight>,
    /// The global budget of rows in flight.
    rows: Arc<Semaphore>,
    /// This import's slot among the imports running at once.
    _slot: OwnedSemaphorePermit,
}

/// A row queued at the writer: its number, its answer to come, and its
/// share of the global rows budget (released with it).
type InFlight = (
    u64,
    oneshot::Receiver<Result<ChangeOutcome, ChangeError>>,
    OwnedSemaphorePermit,
);

/// The limits every import shares.
pub(super) struct ImportLimits {
    slots: Arc<Semaphore>,
    rows: Arc<Semaphore>,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_IMPORTS)),
            rows: Arc::new(Semaphore::new(MAX_ROWS_IN_FLIGHT)),
        }
    }
}

impl Import {
    /// Starts an import, or refuses it when [`MAX_CONCURRENT_IMPORTS`] run.
    pub(super) fn start(
        writer: Writer,
        metrics: Arc<Metrics>,
        limits: &ImportLimits,
    ) -> Result<Self, WriteError> {
        let Ok(slot) = limits.slots.clone().try_acquire_owned() else {
            metrics.shed(Shed::Imports);
            return Err(WriteError::Overloaded(format!(
                "{MAX_CONCURRENT_IMPORTS} imports are running already"
            )));
        };
        Ok(Self {
            writer,
            metrics,
            summary: ImportSummary::default(),
            pending: VecDeque::new(),
            rows: limits.rows.clone(),
            _slot: slot,
        })
    }

    /// Takes the next row, as validated at the edge. An error ends the
    /// import: the store failed or the server is shutting down.
    pub async fn row(&mut self, row: Result<Change, FieldError>) -> Result<(), WriteError> {
        self.summary.received += 1;
        let n = self.summary.received;
        match row {
            Ok(mut change) => {
                // No row's answer reaches a person: links for pending rows
                // are minted later (IssueConfirmationLink).
                change.bulk = true;
                // The oldest row of this import settles first when the
                // budget is spent by others, so two imports never wait on
                // each other forever.
                let permit = loop {
                    match self.rows.clone().try_acquire_owned() {
                        Ok(p) => break p,
                        Err(_) if !self.pending.is_empty() => self.settle_oldest().await?,
                        Err(_) => {
                            break self
                                .rows
                                .clone()
                                .acquire_owned()
                                .await
                                .map_err(|_| WriteError::Closed)?;
                        }
                    }
                };
                let rx = self.writer.submit(change).await?;
                self.pending.push_back((n, rx, permit));
            }
            Err(e) => self.summary.reject(n, e.to_string()),
        }
        while self.pending.len() >= MAX_IMPORT_IN_FLIGHT {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Waits for every queued row and returns what the import did.
    pub async fn finish(mut self) -> Result<ImportSummary, WriteError> {
        while !self.pending.is_empty() {
            self.settle_oldest().await?;
        }
        let s = self.summary;
        self.metrics.imported(s.received);
        tracing::info!(
            received = s.received,
            applied = s.applied,
            superseded = s.superseded,
            rejected = s.rejected,
            "import done"
        );
        Ok(s)
    }

    async fn settle_oldest(&mut self) -> Result<(), WriteError> {
        let Some((row, rx, _permit)) = self.pending.pop_front() else {
            return Ok(());
        };
        let answer = rx.await.unwrap_or_else(|_| {
            Err(WriteError::OutcomeUnknown("the writer stopped".into()).into())
        });
        match answer {
            Ok(out) if out.applied => self.summary.applied += 1,
            Ok(out) if out.pending.is_some_and(|p| !p.replay) => {
                self.metrics.pending_grant(false);
                self.summary.pending += 1;
            }
            Ok(_) => self.summary.superseded += 1,
            Err(ChangeError::Write(
                e @ (WriteError::OutcomeUnknown(_)
                | WriteError::Stopped(_)
                | WriteError::Closed
                | WriteError::WriterPanicked),
            )) => return Err(e),
            Err(e) => self.summary.reject(row, e.to_string()),
        }
        Ok(())
    }
}
