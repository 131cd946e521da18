//! The one mapping from each of the authority's error families to gRPC
//! statuses. No store type reaches here: the authority has already turned
//! a store's error into "unavailable" or "failed", and what failed stays in
//! the log, not in the status.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::authority::{CatalogError, ChangeError, EraseError, LinkError, ReadError, WriteError};
use crate::domain::FieldError;

/// INVALID_ARGUMENT naming the field, with a BadRequest detail for clients
/// that read rich errors.
pub fn invalid(e: FieldError) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        e.to_string(),
        ErrorDetails::with_bad_request_violation(e.field, e.problem),
    )
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Status {
        match e {
            WriteError::Unavailable(_) => {
                Status::unavailable("the store cannot be reached now; nothing was changed; retry")
            }
            // Already logged by the writer, with the cause and batch size.
            WriteError::OutcomeUnknown(_) => Status::unavailable(
                "outcome unknown: the store failed before this change was known to be durable; \
                 read it back before retrying",
            ),
            WriteError::Stopped(_) => Status::unavailable(
                "writes are stopped after a storage failure; nothing was recorded",
            ),
            e @ WriteError::Overloaded(_) => Status::resource_exhausted(e.to_string()),
            e @ WriteError::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
            WriteError::Closed => Status::unavailable("shutting down; nothing was recorded"),
            WriteError::WriterPanicked => {
                Status::unavailable("outcome unknown: the writer stopped")
            }
        }
    }
}

impl From<ChangeError> for Status {
    fn from(e: ChangeError) -> Status {
        match e {
            ChangeError::Invalid(f) => invalid(f),
            e @ ChangeError::UnknownConsent(_) => Status::not_found(format!("consent_id: {e}")),
            e @ (ChangeError::RetiredConsent(_) | ChangeError::KeyReused(_)) => {
                Status::failed_precondition(e.to_string())
            }
            e @ ChangeError::TooManyPending(_) => Status::resource_exhausted(e.to_string()),
            ChangeError::Write(w) => w.into(),
        }
    }
}

impl From<CatalogError> for Status {
    fn from(e: CatalogError) -> Status {
        match e {
            CatalogError::Invalid(f) => invalid(f),
            e @ CatalogError::ConsentInUse(_) => Status::failed_precondition(e.to_string()),
            CatalogError::Write(w) => w.into(),
        }
    }
}

impl From<EraseError> for Status {
    fn from(e: EraseError) -> Status {
        match e {
            EraseError::Invalid(f) => invalid(f),
            EraseError::Write(w) => w.into(),
        }
    }
}

impl From<ReadError> for Status {
    fn from(e: ReadError) -> Status {
        match e {
            ReadError::Invalid(f) => invalid(f),
            e @ ReadError::NeverDeclared(_) => Status::not_found(format!("consent_id: {e}")),
            e @ ReadError::NotFresh { .. } => Status::unavailable(e.to_string()),
            ReadError::NotFound(what) => Status::not_found(what),
            ReadError::Unavailable(_) => {
                Status::unavailable("the store cannot be reached now; nothing was changed; retry")
            }
            ReadError::Failed(cause) => {
                // Storage details stay in the log; the client learns only
                // that it failed.
                tracing::error!(error = %cause, "storage error");
                Status::internal("storage error; nothing was changed")
            }
        }
    }
}

impl From<LinkError> for Status {
    fn from(e: LinkError) -> Status {
        match e {
            LinkError::Invalid(f) => invalid(f),
            e @ LinkError::UnknownConsent(_) => Status::not_found(format!("consent_id: {e}")),
            e @ (LinkError::NotCovered { .. } | LinkError::NothingPending(_)) => {
                Status::failed_precondition(e.to_string())
            }
            LinkError::Change(c) => c.into(),
            LinkError::Read(r) => r.into(),
        }
    }
}
