//! `consent.v1.EligibilityService` (CanSend, CanSendBatch; role `check`),
//! answered straight from the HTTP/2 request, after admission.
//!
//! The hot path does not go through tonic's router and codec: for a
//! message of a few dozen bytes those cost more than the decision (a
//! router lookup, a boxed service per call, a streaming decoder that
//! copies the message into a buffer of its own, a `String` per field, an
//! encoder that copies the answer into another). Here the body is
//! collected (one DATA frame, no copy), the check read in place
//! ([`super::wire`]), and the answer written once into the reply's one
//! buffer with its gRPC frame header. What a caller sees is the same
//! gRPC: the same bytes, the same statuses as trailers.

use std::sync::Arc;

use bytes::Bytes;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use super::status::invalid;
use super::unary;
use super::wire::{self, AnswerOut, Stamp};
use crate::authority::Authority;
use crate::domain::FieldError;

/// Most checks in one CanSendBatch (DESIGN.md §3).
pub const MAX_BATCH_CHECKS: usize = 10_000;

/// The most bytes a single CanSend request may send (a check is at most
/// ~470 bytes): its service allows a 10,000-check batch, this method does
/// not need to.
const MAX_CAN_SEND_BODY: usize = 8 * 1024;

/// Largest CanSendBatch: a full 10,000-check batch of the longest ids fits.
const MAX_BATCH_BODY: usize = 5 * 1024 * 1024;

/// Room made for each answer of a batch before it is written: an allowed
/// answer with its deciding consent and time is ~40 bytes; one with its
/// link and List-Id, several times that, grows the buffer as it goes.
const ANSWER_GUESS: usize = 48;

/// The two methods, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    CanSend,
    CanSendBatch,
}

impl Method {
    /// The EligibilityService method a request path names, if any.
    pub(crate) fn of(path: &str) -> Option<Self> {
        match path.strip_prefix("/consent.v1.EligibilityService/")? {
            "CanSend" => Some(Self::CanSend),
            "CanSendBatch" => Some(Self::CanSendBatch),
            _ => None,
        }
    }

    fn too_large(self) -> Status {
        Status::resource_exhausted(match self {
            Self::CanSend => format!(
                "request: is larger than {MAX_CAN_SEND_BODY} bytes, the most a CanSend sends \
                 (use CanSendBatch for many checks)"
            ),
            Self::CanSendBatch => format!(
                "request: is larger than {MAX_BATCH_BODY} bytes, the most a CanSendBatch \
                 of {MAX_BATCH_CHECKS} checks sends"
            ),
        })
    }
}

/// The service. Cloned for every call: one shared count, where cloning
/// the authority's handle would be a dozen (measured: 5% of the server's
/// time on a CanSend).
#[derive(Clone)]
pub(crate) struct Eligibility {
    authority: Arc<Authority>,
}

impl Eligibility {
    pub(crate) fn new(authority: Authority) -> Self {
        Self {
            authority: Arc::new(authority),
        }
    }

    /// Answers one admitted call; every failure is a gRPC status.
    pub(crate) async fn call(
        &self,
        method: Method,
        request: http::Request<Body>,
    ) -> http::Response<Body> {
        unary::respond(self.reply(method, request).await)
    }

    /// The framed answer message.
    async fn reply(&self, method: Method, request: http::Request<Body>) -> Result<Bytes, Status> {
        let limit = match method {
            Method::CanSend => MAX_CAN_SEND_BODY,
            Method::CanSendBatch => MAX_BATCH_BODY,
        };
        let body = unary::read(request, limit, || method.too_large()).await?;
        let message = unary::one_message(&body)?;
        match method {
            Method::CanSend => self.can_send(message).await,
            Method::CanSendBatch => self.can_send_batch(message).await,
        }
    }

    async fn can_send(&self, message: &[u8]) -> Result<Bytes, Status> {
        let c = wire::check_in(message).map_err(|m| not_a("CanSendRequest", m))?;
        let checked = match c.as_of {
            None => self.authority.check(c.check(), c.min_sequence).await?,
            Some(t) => {
                let at = super::convert::nanos_from("as_of", &timestamp(t)).map_err(invalid)?;
                self.authority
                    .check_as_of(c.check(), at, c.min_sequence)
                    .await?
            }
        };
        let answer = AnswerOut {
            as_of: c.as_of,
            ..AnswerOut::of(&checked)
        };
        let len = wire::answer_len(&answer);
        let mut buf = unary::framed(len);
        wire::answer_out(&answer, &mut buf);
        debug_assert_eq!(buf.len(), 5 + len);
        Ok(buf.freeze())
    }

    pub(super) async fn can_send_batch(&self, message: &[u8]) -> Result<Bytes, Status> {
        let wire::BatchIn {
            checks,
            count,
            min_sequence: own_min_sequence,
        } = wire::batch_in(message, MAX_BATCH_CHECKS)
            .map_err(|m| not_a("CanSendBatchRequest", m))?;
        if count > MAX_BATCH_CHECKS {
            return Err(invalid(FieldError::new(
                "checks",
                format!("has {count} items, at most {MAX_BATCH_CHECKS} allowed"),
            )));
        }
        if let Some(i) = checks.iter().position(|c| c.as_of.is_some()) {
            return Err(invalid(FieldError::new(
                format!("checks[{i}].as_of"),
                "is for CanSend: as-of reads read the history, one check at a time",
            )));
        }
        // DESIGN.md §8: a batch waits for the largest token it names.
        let min_sequence = checks
            .iter()
            .map(|c| c.min_sequence)
            .fold(own_min_sequence, u64::max);
        // Each answer is written as it is decided, straight after the
        // one before (a vector of the answers, then their lengths, then
        // the bytes was three passes); the frame's length last.
        let mut buf = unary::open_frame(checks.len() * ANSWER_GUESS);
        self.authority
            .check_batch(&checks, min_sequence, wire::CheckIn::check, |result| {
                let error;
                let answer = match &result {
                    Ok(checked) => AnswerOut::of(checked),
                    Err(e) => {
                        error = e.to_string();
                        AnswerOut::invalid(&error)
                    }
                };
                let n = wire::answer_len(&answer);
                wire::batch_item_out(&answer, n, &mut buf);
            })
            .await?;
        unary::close_frame(&mut buf);
        Ok(buf.freeze())
    }
}

fn timestamp(t: Stamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

fn not_a(what: &str, m: wire::Malformed) -> Status {
    Status::invalid_argument(format!("request: is not a {what}: {}", m.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_two_methods() {
        assert_eq!(
            Method::of("/consent.v1.EligibilityService/CanSend"),
            Some(Method::CanSend)
        );
        assert_eq!(
            Method::of("/consent.v1.EligibilityService/CanSendBatch"),
            Some(Method::CanSendBatch)
        );
        assert_eq!(Method::of("/consent.v1.EligibilityService/Nope"), None);
        assert_eq!(Method::of("/consent.v1.ConsentsService/CanSend"), None);
    }
}
