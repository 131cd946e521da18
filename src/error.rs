//! Why an operation of the authority was refused or failed: one enum per
//! operation family, naming only what that operation can meet (a Grant
//! never says "consent in use", a read never says "outcome unknown"):
//!
//! - [`ChangeError`] for Grant, Withdraw, an import row, a click on a page;
//! - [`CatalogError`] for ApplyCatalog;
//! - [`EraseError`] for EraseContact;
//! - [`ReadError`] for GetContact, GetHistory, ExportContact, GetWordings,
//!   a page read, a freshness wait;
//! - [`LinkError`] for minting links (unsubscribe, preferences, a
//!   confirmation re-sent);
//! - [`WriteError`], which every write shares: the store, the writer or
//!   the caller's budget stood in the way.
//!
//! No store type reaches a transport: the authority turns a store's error
//! into "unavailable" (retry) or "failed" (logged, its details kept from
//! the client). Transports map each enum once: gRPC in `grpc/status.rs`,
//! HTTP in its pages.

use crate::domain::FieldError;
use crate::store::StoreError;

/// Why a write did not certainly happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The store cannot be reached now (a database connection lost or
    /// refused): nothing was recorded; retry once it is back.
    #[error("the store cannot be reached now ({0}); nothing was recorded")]
    Unavailable(String),
    /// The change was queued, but the store failed (or the writer stopped)
    /// before it was known to be durable: it may or may not have been
    /// recorded. The cause is shared by the whole batch, hence a message.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Writes are stopped: the store failed earlier (fail-stop, DESIGN.md
    /// rule 6) and the server is going down. Nothing was recorded.
    #[error("writes are stopped after a storage failure ({0}); nothing was recorded")]
    Stopped(String),
    /// Too much is waiting already (the writer queue, the imports running):
    /// refused at once, nothing recorded; retry later.
    #[error("overloaded: {0}; nothing was recorded")]
    Overloaded(String),
    /// The caller's deadline passed before the change could be recorded:
    /// it was not applied.
    #[error("the deadline passed before the change was recorded; it was not applied")]
    DeadlineExceeded,
    /// The writer has stopped (shutdown): nothing was recorded.
    #[error("the writer has stopped")]
    Closed,
    /// The writer thread panicked.
    #[error("the writer thread panicked")]
    WriterPanicked,
}

/// Why a Grant or Withdraw (an import row, a page's click) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A request field is malformed; the error names it.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The change names a consent the catalog lacks.
    #[error("consent {0:?} is not in the catalog")]
    UnknownConsent(String),
    /// A GRANT of a retired consent.
    #[error("consent {0:?} is retired and accepts no new grants")]
    RetiredConsent(String),
    /// The idempotency key was first used for a different change.
    #[error("idempotency_key {} was already used for a different change", crate::domain::ids::quote(.0))]
    KeyReused(String),
    /// The contact has too many grants waiting for confirmation already
    /// (DESIGN.md §7: confirmation mails cannot flood anyone).
    #[error(
        "contact {} has {} pending grants waiting for confirmation already; nothing was recorded",
        crate::domain::ids::quote(.0),
        crate::domain::MAX_PENDING_PER_CONTACT
    )]
    TooManyPending(String),
    /// The write itself did not certainly happen.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A click on a page reads before it records: a read that failed refused
/// the change (nothing was recorded).
impl From<ReadError> for ChangeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Invalid(f) => ChangeError::Invalid(f),
            ReadError::NeverDeclared(c) => ChangeError::UnknownConsent(c),
            other @ (ReadError::NotFresh { .. } | ReadError::NotFound(_)) => {
                ChangeError::Write(WriteError::Unavailable(other.to_string()))
            }
            ReadError::Unavailable(c) | ReadError::Failed(c) => {
                ChangeError::Write(WriteError::Unavailable(c))
            }
        }
    }
}

/// Why an ApplyCatalog was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog is invalid; the error names the field.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// A catalog would delete consents that contacts hold state for.
    #[error("consents {} are held by contacts and cannot be deleted: retire them instead", few(.0))]
    ConsentInUse(Vec<String>),
    /// The write itself did not certainly happen.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Why an EraseContact was refused.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// A request field is malformed; the error names it.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The write itself did not certainly happen.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Why a read was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A request field is malformed; the error names it.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// A consent id that no catalog ever declared.
    #[error("consent {0:?} was never declared")]
    NeverDeclared(String),
    /// A freshness token this node has not reached within the wait: it has
    /// applied changes up to `reached` only.
    #[error(
        "this node has applied changes up to sequence {reached}; min_sequence {wanted} was not reached within 1 s"
    )]
    NotFresh {
        /// The token asked for.
        wanted: u64,
        /// How far this node has got.
        reached: u64,
    },
    /// The store cannot be reached now; retry.
    #[error("the store cannot be reached now ({0})")]
    Unavailable(String),
    /// The store failed; the details are for the log.
    #[error("the store failed: {0}")]
    Failed(String),
    /// What was asked for is not held (the message names it).
    #[error("{0}")]
    NotFound(String),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { cause, .. } => ReadError::Unavailable(cause),
            other => ReadError::Failed(other.to_string()),
        }
    }
}

/// Why a link could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A request field is malformed; the error names it.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The request names a consent the catalog lacks.
    #[error("consent {0:?} is not in the catalog")]
    UnknownConsent(String),
    /// No consent of the purpose covers the channel and brand, so no link
    /// can withdraw anything.
    #[error("no consent of the purpose covers channel {channel:?} and brand {brand:?}")]
    NotCovered {
        /// The channel asked for.
        channel: String,
        /// The brand asked for.
        brand: String,
    },
    /// No grant of the contact waits for confirmation of this consent.
    #[error("no grant of consent {0:?} waits for this contact's confirmation")]
    NothingPending(String),
    /// Minting it records a change (a confirmation mail re-sent), which was
    /// refused.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// Reading what the link needs failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// The first few of a list of ids, and how many there are in all: an error
/// message stays short whatever the request deleted.
fn few(ids: &[String]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<&str> = ids.iter().take(SHOWN).map(String::as_str).collect();
    if ids.len() > SHOWN {
        format!("{shown:?} and {} more", ids.len() - SHOWN)
    } else {
        format!("{shown:?}")
    }
}
