//! The one mapping from the authority's errors to gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::authority::Error;
use crate::domain::FieldError;
use crate::store::StoreError;

/// INVALID_ARGUMENT naming the field, with a BadRequest detail for clients
/// that read rich errors.
pub fn invalid(e: FieldError) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        e.to_string(),
        ErrorDetails::with_bad_request_violation(e.field, e.problem),
    )
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Invalid(f) => invalid(f),
            e @ (Error::UnknownConsent(_) | Error::NeverDeclared(_)) => {
                Status::not_found(format!("consent_id: {e}"))
            }
            e @ (Error::RetiredConsent(_)
            | Error::KeyReused(_)
            | Error::ConsentInUse(_)
            | Error::NotCovered { .. }) => Status::failed_precondition(e.to_string()),
            Error::Storage(StoreError::Unavailable { .. }) | Error::Unavailable(_) => {
                Status::unavailable("the store cannot be reached now; nothing was changed; retry")
            }
            Error::Storage(e) => {
                // Storage details stay in the log; the client learns only
                // that it failed.
                tracing::error!(error = %e, "storage error");
                Status::internal("storage error; nothing was changed")
            }
            // Already logged by the writer, with the batch size.
            // Already logged by the writer, with the cause and batch size.
            Error::OutcomeUnknown(_) => Status::unavailable(
                "outcome unknown: the store failed before this change was known to be durable; \
                 read it back before retrying",
            ),
            Error::Stopped(_) => Status::unavailable(
                "writes are stopped after a storage failure; nothing was recorded",
            ),
            e @ Error::NotFresh { .. } => Status::unavailable(e.to_string()),
            e @ (Error::Overloaded(_) | Error::TooManyPending(_)) => {
                Status::resource_exhausted(e.to_string())
            }
            e @ Error::NothingPending(_) => Status::failed_precondition(e.to_string()),
            e @ Error::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
            Error::Closed => Status::unavailable("shutting down; nothing was recorded"),
            Error::WriterPanicked => Status::unavailable("outcome unknown: the writer stopped"),
        }
    }
}
