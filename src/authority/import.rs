//! The streamed import pipeline (Consents.Import, and any tool that feeds
//! rows): validated rows are queued at the writer without waiting for each,
//! so they fill whole group commits, while at most
//! [`MAX_IMPORT_IN_FLIGHT`] wait for their answer; a million-row import
//! never sits in memory at once.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Error;
use crate::domain::{Change, ChangeOutcome, FieldError};
use crate::metrics::Metrics;
use crate::writer::Writer;

/// Import rows queued at the writer at once (two full group commits).
pub(super) const MAX_IMPORT_IN_FLIGHT: usize = 8192;
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
    /// Rows queued at the writer and not yet answered, oldest first.
    pending: VecDeque<(u64, oneshot::Receiver<Result<ChangeOutcome, Error>>)>,
}

impl Import {
    pub(super) fn new(writer: Writer, metrics: Arc<Metrics>) -> Self {
        Self {
            writer,
            metrics,
            summary: ImportSummary::default(),
            pending: VecDeque::new(),
        }
    }

    /// Takes the next row, as validated at the edge. An error ends the
    /// import: the store failed or the server is shutting down.
    pub async fn row(&mut self, row: Result<Change, FieldError>) -> Result<(), Error> {
        self.summary.received += 1;
        let n = self.summary.received;
        match row {
            Ok(change) => {
                let rx = self.writer.submit(change).await?;
                self.pending.push_back((n, rx));
            }
            Err(e) => self.summary.reject(n, e.to_string()),
        }
        while self.pending.len() >= MAX_IMPORT_IN_FLIGHT {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Waits for every queued row and returns what the import did.
    pub async fn finish(mut self) -> Result<ImportSummary, Error> {
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

    async fn settle_oldest(&mut self) -> Result<(), Error> {
        let Some((row, rx)) = self.pending.pop_front() else {
            return Ok(());
        };
        let answer = rx
            .await
            .unwrap_or_else(|_| Err(Error::OutcomeUnknown("the writer stopped".into())));
        match answer {
            Ok(out) if out.applied => self.summary.applied += 1,
            Ok(_) => self.summary.superseded += 1,
            Err(
                e @ (Error::Storage(_)
                | Error::OutcomeUnknown(_)
                | Error::Stopped(_)
                | Error::Closed
                | Error::WriterPanicked),
            ) => return Err(e),
            Err(e) => self.summary.reject(row, e.to_string()),
        }
        Ok(())
    }
}
