//! Serving HTTP/1.1 to untrusted clients: a cap on open connections, a
//! deadline for each request's headers (slowloris), a cap on a
//! connection's lifetime (a keep-alive held open forever), and a graceful
//! stop that waits, briefly, for requests in flight.
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
    /// Longest life of one connection; then it is closed gracefully.
    pub(crate) max_connection_age: Duration,
    /// How long a stop waits for requests in flight.
    pub(crate) drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(120),
            drain: Duration::from_secs(10),
        }
    }
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
        let service =
            router
                .clone()
                .map_request(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req
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
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
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
