//! Serving HTTP/1.1 to untrusted clients: a cap on open connections, a
//! deadline for each request's headers (slowloris), a deadline for the
//! whole request, body included (a POST whose body never comes answers 408
//! and its connection closes), a cap on a connection's lifetime (a
//! keep-alive held open forever; past it a connection is closed within
//! seconds even mid-request), and a graceful stop that waits, briefly, for
//! requests in flight.
//!
//! A connection over the cap is closed at once: file descriptors, and with
//! them the gRPC listener's accepts, are never starved by the public port.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// How a listener bounds its clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once; more are closed on accept.
    pub(crate) max_connections: usize,
    /// Time a client has to send a request's headers, including the wait
    /// for the next request on a kept-alive connection.
    pub(crate) header_timeout: Duration,
    /// Time a whole request (headers and body) may take to arrive and be
    /// answered.
    pub(crate) request_timeout: Duration,
    /// Longest life of one connection; then it is closed gracefully, and
    /// at once after `CLOSE_GRACE` if a request still holds it.
    pub(crate) max_connection_age: Duration,
    /// How long a stop waits for requests in flight.
    pub(crate) drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(120),
            drain: Duration::from_secs(10),
        }
    }
}

/// How long a connection past its age may finish the request it holds.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The answer to a request that did not arrive whole in time; the
/// connection closes after it (its body was never read).
fn request_timeout() -> axum::response::Response {
    let mut r = axum::response::Response::new(axum::body::Body::from(
        "the request did not arrive in time\n",
    ));
    *r.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

/// Serves `router` on `listener` until `stop` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stopping_tx, stopping) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors or a reset before accept: keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let deadline = limits.request_timeout;
        let service = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let answer = router.clone().oneshot(req);
            async move {
                Ok::<_, std::convert::Infallible>(
                    match tokio::time::timeout(deadline, answer).await {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => request_timeout(),
                    },
                )
            }
        });
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(conn);
            let aged = tokio::time::sleep(limits.max_connection_age);
            tokio::pin!(aged);
            let stop = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
                () = &mut aged => {
                    // Past its age: closed after the request in flight, and
                    // within seconds even if that request never ends.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
                }
            }
            drop(slot);
        });
    }
    // Stop: idle connections close, requests in flight finish (briefly).
    let _ = stopping_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.drain, slots.acquire_many(all)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A listener serving one route that reads a POST's whole body.
    async fn started(limits: Limits) -> (SocketAddr, watch::Sender<bool>) {
        let router = Router::new().route(
            "/",
            axum::routing::post(|body: String| async move { body.len().to_string() })
                .get(|| async { "ok" }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, mut stop) = watch::channel(false);
        tokio::spawn(serve(listener, router, limits, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        (addr, stop_tx)
    }

    /// A connection that sends a POST's headers and never its body.
    async fn stalled_post(addr: SocketAddr) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        s
    }

    async fn answer(mut s: tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_request_whose_body_never_comes_is_answered_408_and_frees_its_slot() {
        let (addr, _stop) = started(Limits {
            max_connections: 2,
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let stalled = [stalled_post(addr).await, stalled_post(addr).await];
        for s in stalled {
            // Answered, and the connection closed (read_to_end ends).
            let out = answer(s).await;
            assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        }
        // The slots are free again: a whole request is served.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let out = answer(s).await;
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_connection_past_its_age_is_closed_even_mid_request() {
        let (addr, _stop) = started(Limits {
            max_connections: 2,
            request_timeout: Duration::from_secs(600),
            max_connection_age: Duration::from_millis(200),
            ..Limits::default()
        })
        .await;
        let s = stalled_post(addr).await;
        // Closed within the age and the grace, though its request never ends.
        let started = std::time::Instant::now();
        let _ = answer(s).await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "closed by the server, not by the test's own bound"
        );
    }
}
