//! The gRPC listener: accepts connections (TLS when configured) and serves
//! each over HTTP/2 with hyper, as tonic's own server does, but with unary
//! the small calls answered on their connection's own task.
//!
//! hyper hands every call of a connection to an executor; tonic's spawns
//! one task per call. A CanSend is answered in well under a microsecond of
//! consentd's work once its request is read, so a task per call meant, per
//! answer: a spawn, a wake of that task, a wake back of the connection to
//! write the answer's frames, and one `writev` per answer (measured: 0.92
//! per CanSend). Here a connection's CanSend, Grant and Withdraw calls
//! run in the connection's task ([`Driven`]): it reads what arrived,
//! answers every such call among it, and writes the answers of the round
//! in one go (one `writev` per eight answers under the load bench); a
//! Grant waiting for its commit is polled there again when woken. Every
//! other call is spawned as before, so a batch, an import, an export or a
//! Watch never holds up the connection's other calls, and runs on another
//! core meanwhile.
//!
//! Also unlike tonic's server: no `date` header on each answer (gRPC does
//! not use it), no per-call boxing of the whole stack and no `ConnectInfo`
//! extension map per request (nothing here reads the peer address), and
//! no server-side cut at `grpc-timeout` (the writes honour the deadline
//! themselves, [`super::deadline`]; a client that stops waiting resets
//! its stream, which drops the call).
//!
//! Kept as tonic does it: HTTP/2 only, `max_concurrent_streams` per
//! connection, load shedding answered RESOURCE_EXHAUSTED (tonic's
//! [`RecoverErrorLayer`]), and a graceful stop that closes the listening
//! socket at once, lets each connection finish its calls (GOAWAY), then
//! returns.

use std::cell::Cell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::service::RecoverErrorLayer;
use tonic::transport::server::TcpIncoming;
use tower::{Service, ServiceBuilder, ServiceExt};

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds of read, answer, write in one poll of a connection before its
/// task lets the others run.
const ROUNDS_PER_POLL: usize = 8;

/// The calls that run on their connection's task: each does a few
/// microseconds of work when polled, and waits (a Grant for its commit, a
/// CanSend for a freshness token) by returning `Pending`.
const ON_ITS_CONNECTION: [&str; 3] = [
    "/consent.v1.EligibilityService/CanSend",
    "/consent.v1.ConsentsService/Grant",
    "/consent.v1.ConsentsService/Withdraw",
];

thread_local! {
    /// Whether the call hyper is about to hand over runs on its connection.
    /// Set by [`Marked::call`], which hyper calls on the connection's task
    /// right before it hands the call to the executor; read there. Were
    /// hyper ever to do otherwise, a call would only run where another
    /// should have: never wrongly, only slower.
    static ON_CONNECTION: Cell<bool> = const { Cell::new(false) };
}

type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One connection's executor: the calls of [`ON_ITS_CONNECTION`] are
/// queued for the connection's task ([`Driven`]); every other is spawned.
#[derive(Clone, Default)]
pub(crate) struct PerConnection {
    handed: Arc<Mutex<Vec<Call>>>,
}

impl PerConnection {
    fn take(&self) -> Vec<Call> {
        std::mem::take(
            &mut *self
                .handed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl<F> hyper::rt::Executor<F> for PerConnection
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        if ON_CONNECTION.replace(false) {
            self.handed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Box::pin(future));
        } else {
            tokio::spawn(future);
        }
    }
}

/// A connection and its own calls, polled together: the connection
/// reads what arrived and hands its calls over, the calls answer, and the
/// connection, polled again, writes all their answers at once.
struct Driven<C> {
    conn: Pin<Box<C>>,
    executor: PerConnection,
    calls: FuturesUnordered<Call>,
}

impl<C: Future> Future for Driven<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        for _ in 0..ROUNDS_PER_POLL {
            let done = this.conn.as_mut().poll(cx);
            let handed = this.executor.take();
            let fresh = !handed.is_empty();
            this.calls.extend(handed);
            let mut answered = false;
            while let Poll::Ready(Some(())) = this.calls.poll_next_unpin(cx) {
                answered = true;
            }
            if let Poll::Ready(out) = done {
                // Closed: a call still here cannot send its answer.
                return Poll::Ready(out);
            }
            // Nothing new and nothing answered: the connection has written
            // what there was and waits for the socket or a call's wake-up.
            if !fresh && !answered {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The service as hyper calls it, marking the calls that stay on their
/// connection.
#[derive(Clone)]
struct Marked<S> {
    inner: S,
}

impl<S> hyper::service::Service<http::Request<Incoming>> for Marked<S>
where
    S: Service<http::Request<Incoming>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, http::Request<Incoming>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        ON_CONNECTION.set(ON_ITS_CONNECTION.contains(&request.uri().path()));
        self.inner.clone().oneshot(request)
    }
}

/// Where the listener takes its connections from and how it shakes hands.
pub(crate) struct Listener {
    pub(crate) incoming: TcpIncoming,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) max_streams_per_connection: u32,
}

/// Serves `service` on every connection `listener` accepts until `stop`
/// completes; then stops accepting (the socket closes), asks each
/// connection to finish (GOAWAY: its calls in flight are answered) and
/// returns once all are closed.
pub(crate) async fn serve<S, E>(listener: Listener, service: S, stop: impl Future<Output = ()>)
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = E>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    E: Into<tower::BoxError> + Send + 'static,
{
    let Listener {
        incoming,
        tls,
        max_streams_per_connection,
    } = listener;
    let service = ServiceBuilder::new()
        .layer(RecoverErrorLayer::new())
        .map_request(|request: http::Request<Incoming>| request.map(Body::new))
        .service(service);
    let graceful = GracefulShutdown::new();
    {
        let mut incoming = pin!(incoming);
        let mut stop = pin!(stop);
        loop {
            let tcp = tokio::select! {
                () = &mut stop => break,
                next = incoming.next() => match next {
                    None => break,
                    Some(Ok(tcp)) => tcp,
                    // Out of descriptors or a reset before accept: keep
                    // serving the connections there are.
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let service = Marked {
                inner: service.clone(),
            };
            let watcher = graceful.watcher();
            let limit = max_streams_per_connection;
            match &tls {
                None => {
                    tokio::spawn(connection(tcp, service, watcher, limit));
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    tokio::spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                            Ok(Ok(tls)) => connection(tls, service, watcher, limit).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
            }
        }
        // `incoming` is dropped here: the listening socket closes, so new
        // clients are refused at once rather than left hanging.
    }
    graceful.shutdown().await;
}

/// Serves one connection, watched by the graceful stop.
async fn connection<IO, S, B>(io: IO, service: Marked<S>, watcher: Watcher, max_streams: u32)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    let executor = PerConnection::default();
    let mut http2 = hyper::server::conn::http2::Builder::new(executor.clone());
    http2
        .timer(TokioTimer::new())
        .auto_date_header(false)
        .max_concurrent_streams(max_streams);
    let conn = watcher.watch(http2.serve_connection(TokioIo::new(io), service));
    let driven = Driven {
        conn: Box::pin(conn),
        executor,
        calls: FuturesUnordered::new(),
    };
    if let Err(e) = driven.await {
        tracing::debug!(error = %e, "gRPC connection ended");
    }
}
