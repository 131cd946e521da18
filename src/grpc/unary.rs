//! What the calls answered straight from the HTTP/2 request share
//! (CanSend and CanSendBatch in `eligibility.rs`, Grant and Withdraw in
//! `writes.rs`, each after admission, without tonic's router and codec):
//! reading the request's one message, framing the answer, and the
//! answer's body. A caller sees the same gRPC as from tonic's server: the
//! same frames, the same statuses (as trailers, or trailers-only for a
//! refusal).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

/// The request's body, at most `limit` bytes (else `too_large()`), read
/// to its end: usually one DATA frame, kept without a copy. A body in a
/// compression this server does not read is refused before it is read.
pub(super) async fn read(
    request: http::Request<Body>,
    limit: usize,
    too_large: impl FnOnce() -> Status,
) -> Result<Bytes, Status> {
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(Status::unimplemented(format!(
            "request: is compressed ({}); this server reads uncompressed messages only",
            String::from_utf8_lossy(&encoding.as_bytes()[..encoding.len().min(32)])
        )));
    }
    Ok(http_body_util::Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Status::from_error(e)
            }
        })?
        .to_bytes())
}

/// The answer to a unary call: its framed message and `grpc-status: 0`,
/// or the status alone (trailers-only).
pub(super) fn respond(answer: Result<Bytes, Status>) -> http::Response<Body> {
    match answer {
        Ok(message) => {
            let mut response = http::Response::new(Body::new(Unary {
                message: Some(message),
                done: false,
            }));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// The one message of a unary request's body (gRPC over HTTP/2:
/// a compressed flag, a 4-byte big-endian length, the message).
pub(super) fn one_message(body: &[u8]) -> Result<&[u8], Status> {
    let Some((&[flag, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return Err(Status::internal(if body.is_empty() {
            "request: carries no message"
        } else {
            "request: ends inside its message header"
        }));
    };
    if flag != 0 {
        return Err(Status::internal(
            "request: is marked compressed, and no grpc-encoding names how",
        ));
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(Status::internal("request: ends inside its message")),
        std::cmp::Ordering::Greater => Err(Status::internal(
            "request: carries more than the one message this method takes",
        )),
        std::cmp::Ordering::Equal => Ok(rest),
    }
}

/// A buffer for an answer of `len` bytes, its gRPC frame header written.
pub(super) fn framed(len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("an answer is far below 4 GiB"));
    buf
}

/// A buffer for an answer whose length is known once it is written (room
/// for `guess` bytes): the frame header's length is left zero until
/// [`close_frame`] writes it.
pub(super) fn open_frame(guess: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(5 + guess);
    buf.put_u8(0);
    buf.put_u32(0);
    buf
}

/// Writes the length of the answer written after [`open_frame`]'s header.
pub(super) fn close_frame(buf: &mut BytesMut) {
    let len = u32::try_from(buf.len() - 5).expect("an answer is far below 4 GiB");
    buf[1..5].copy_from_slice(&len.to_be_bytes());
}

/// A unary gRPC answer's body: the one message, then `grpc-status: 0`.
struct Unary {
    message: Option<Bytes>,
    done: bool,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        self.done = true;
        let mut trailers = http::HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    // No exact size hint: hyper would send it as a `content-length`
    // header, which tonic's answers do not carry and every client would
    // decode and check (gRPC frames its messages itself).
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_carries_exactly_one_message() {
        assert_eq!(one_message(&[0, 0, 0, 0, 2, 8, 1]).unwrap(), &[8, 1]);
        assert_eq!(one_message(&[0, 0, 0, 0, 0]).unwrap(), &[] as &[u8]);
        for (bad, why) in [
            (&[][..], "no message"),
            (&[0, 0, 0][..], "header"),
            (&[1, 0, 0, 0, 0][..], "compressed"),
            (&[0, 0, 0, 0, 3, 8, 1][..], "ends inside"),
            (&[0, 0, 0, 0, 1, 8, 1][..], "more than"),
        ] {
            let status = one_message(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Internal);
            assert!(status.message().starts_with("request: "), "{status:?}");
            assert!(status.message().contains(why), "{status:?}");
        }
    }
}
