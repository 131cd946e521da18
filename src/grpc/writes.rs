//! Grant and Withdraw (`consent.v1.ConsentsService`, role `write`),
//! answered straight from the HTTP/2 request, after admission, as
//! CanSend is (`eligibility.rs`).
//!
//! Under 64 writers tonic's way to these two cost more of the server's
//! CPU than the writer's ruling and the store's inserts together: the
//! router's lookup and boxed services per call, a streaming decoder that
//! copies the message into a buffer of its own, an encoder that copies
//! the answer into another, a response future boxed at every layer. On
//! two cores that CPU is what the next group commit waits for (its
//! writes arrive while the previous commit is fsync'd). Here the body is
//! collected, the message decoded by prost once, the change recorded by
//! the same [`super::record`] as tonic's handler, and the answer encoded
//! once into the reply's buffer. A caller sees the same gRPC: the same
//! messages, the same statuses; a message over the limit is
//! RESOURCE_EXHAUSTED, and one that is not a GrantRequest (or
//! WithdrawRequest) is INVALID_ARGUMENT (tonic's codec said INTERNAL).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use super::{convert, unary};
use crate::authority::Authority;
use crate::domain::Action;
use crate::pb;

/// Largest Consents message (a change, an import row, a read): the longest
/// ids, a full evidence map (32 × 2 KiB) and a key fit.
pub(crate) const MAX_CHANGE_MESSAGE_BYTES: usize = 128 * 1024;

/// What a message over a method's limit is answered (the same for every
/// ConsentsService method, by this path or by tonic's).
pub(super) const TOO_LARGE: &str = "request: a message is larger than this method takes";

/// The two methods, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    Grant,
    Withdraw,
}

impl Write {
    /// The write a request path names, if it names Grant or Withdraw.
    pub(crate) fn of(path: &str) -> Option<Self> {
        match path.strip_prefix("/consent.v1.ConsentsService/")? {
            "Grant" => Some(Self::Grant),
            "Withdraw" => Some(Self::Withdraw),
            _ => None,
        }
    }
}

/// The two methods' handler. Cloned for every call: one shared count.
#[derive(Clone)]
pub(crate) struct Writes {
    authority: Arc<Authority>,
}

impl Writes {
    pub(crate) fn new(authority: Authority) -> Self {
        Self {
            authority: Arc::new(authority),
        }
    }

    /// Answers one admitted call by `actor` (empty when auth is off) that
    /// gives up at `deadline`; every failure is a gRPC status.
    pub(crate) async fn call(
        &self,
        method: Write,
        request: http::Request<Body>,
        actor: String,
        deadline: Option<Instant>,
    ) -> http::Response<Body> {
        unary::respond(self.reply(method, request, &actor, deadline).await)
    }

    /// The framed answer message.
    async fn reply(
        &self,
        method: Write,
        request: http::Request<Body>,
        actor: &str,
        deadline: Option<Instant>,
    ) -> Result<Bytes, Status> {
        let body = unary::read(request, 5 + MAX_CHANGE_MESSAGE_BYTES, || {
            Status::resource_exhausted(TOO_LARGE)
        })
        .await?;
        // The body's limit bounds the message: `one_message` takes exactly
        // the length its header gives, and nothing past it.
        let message = unary::one_message(&body)?;
        let authority = &*self.authority;
        match method {
            Write::Grant => {
                let request =
                    pb::GrantRequest::decode(message).map_err(|e| not_a("GrantRequest", &e))?;
                let recorded =
                    super::record(authority, Action::Grant, request.into(), actor, deadline)
                        .await?;
                Ok(encoded(&convert::granted_to(
                    recorded.outcome,
                    recorded.confirmation_url,
                )))
            }
            Write::Withdraw => {
                let request = pb::WithdrawRequest::decode(message)
                    .map_err(|e| not_a("WithdrawRequest", &e))?;
                let recorded =
                    super::record(authority, Action::Withdraw, request.into(), actor, deadline)
                        .await?;
                Ok(encoded(&convert::withdrawn_to(recorded.outcome)))
            }
        }
    }
}

fn not_a(what: &str, e: &prost::DecodeError) -> Status {
    Status::invalid_argument(format!("request: is not a {what}: {e}"))
}

/// `answer`, encoded once into a buffer that starts with its gRPC frame
/// header.
fn encoded(answer: &impl Message) -> Bytes {
    let len = answer.encoded_len();
    let mut buf = unary::framed(len);
    answer
        .encode(&mut buf)
        .expect("the buffer was sized by encoded_len");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_two_writes() {
        assert_eq!(
            Write::of("/consent.v1.ConsentsService/Grant"),
            Some(Write::Grant)
        );
        assert_eq!(
            Write::of("/consent.v1.ConsentsService/Withdraw"),
            Some(Write::Withdraw)
        );
        for other in [
            "/consent.v1.ConsentsService/Import",
            "/consent.v1.ConsentsService/GrantX",
            "/consent.v1.EligibilityService/Grant",
            "/consent.v1.ConsentsService/",
        ] {
            assert_eq!(Write::of(other), None, "{other}");
        }
    }

    #[test]
    fn an_answer_is_one_frame_of_its_message() {
        let answer = pb::WithdrawResponse {
            applied: true,
            state: None,
            sequence: 42,
        };
        let framed = encoded(&answer);
        let message = unary::one_message(&framed).expect("one message");
        assert_eq!(pb::WithdrawResponse::decode(message).unwrap(), answer);
    }
}
