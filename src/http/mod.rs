//! The HTTP side, on two listeners (DESIGN.md §4):
//!
//! - the **public** one (`--http-addr`) faces the internet and serves only
//!   the pages people open from their mail: `GET|POST /u/{token}`
//!   (unsubscribe), `/c/{token}` (double opt-in confirmation),
//!   `/p/{token}` (preference center) and `GET /r/{token}` (the signed
//!   receipt of what the person did there), and the provider webhooks
//!   `POST /hooks/{name}` (`crate::hooks`). Every other path, method and
//!   malformed token gets the one identical 404;
//! - the **admin** one (`--admin-addr`, loopback by default) serves
//!   `/healthz` and `/metrics` for the operator.
//!
//! Both call the same [`Authority`] as gRPC, never logic of their own, and
//! are served by `serve.rs`, which bounds connections and their time.

mod confirm;
mod page;
mod preferences;
mod receipt;
mod serve;
pub(crate) mod unsubscribe;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio::sync::watch;

pub(crate) use serve::{Limits, serve};

use std::sync::Arc;

use crate::authority::Authority;
use crate::hooks::Hooks;

/// Largest request body the public pages read (a form post is tiny).
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest body a provider webhook may send (a SendGrid batch of events).
const MAX_HOOK_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
struct AppState {
    authority: Authority,
    /// False once shutdown has begun.
    serving: watch::Receiver<bool>,
    /// The provider webhooks (`/hooks/{name}`).
    hooks: Arc<Hooks>,
}

/// The public listener: the pages, the provider webhooks, and the identical
/// 404 for all else.
pub(crate) fn public_router(
    authority: Authority,
    serving: watch::Receiver<bool>,
    hooks: Arc<Hooks>,
) -> Router {
    Router::new()
        // The webhooks read bigger bodies than the pages: their own limit,
        // closest to the handler, wins over the pages' one.
        .route(
            "/hooks/{name}",
            any(hook).layer(DefaultBodyLimit::max(MAX_HOOK_BODY_BYTES)),
        )
        .fallback(public)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState {
            authority,
            serving,
            hooks,
        })
}

/// The admin listener: health and metrics.
pub(crate) fn admin_router(
    authority: Authority,
    serving: watch::Receiver<bool>,
    hooks: Arc<Hooks>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            authority,
            serving,
            hooks,
        })
}

/// Routes by hand, so that no malformed path, percent-encoding or method
/// can earn a different answer than the one 404.
async fn public(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let Some((kind, token)) = path
        .get(1..3)
        .filter(|p| matches!(*p, "u/" | "c/" | "p/" | "r/"))
        .map(|p| (&p[..1], &path[3..]))
        .filter(|(_, t)| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    else {
        return page::not_found();
    };
    match (kind, method) {
        ("u", Method::GET | Method::HEAD) => unsubscribe::show(&s, token, &headers).await,
        ("u", Method::POST) => unsubscribe::confirm(&s, token, peer, &headers, &body).await,
        ("c", Method::GET | Method::HEAD) => confirm::show(&s, token, &headers).await,
        ("c", Method::POST) => confirm::post(&s, token, peer, &headers, &body).await,
        ("p", Method::GET | Method::HEAD) => preferences::show(&s, token, &headers).await,
        ("p", Method::POST) => preferences::post(&s, token, peer, &headers, &body).await,
        ("r", Method::GET | Method::HEAD) => receipt::show(&s, token, uri.query(), &headers).await,
        _ => page::not_found(),
    }
}

/// `POST /hooks/{name}`; any other method, or a name no provider has, gets
/// the one 404.
async fn hook(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The raw path, not an extractor: no encoding earns another answer.
    let Some(name) = uri.path().strip_prefix("/hooks/") else {
        return page::not_found();
    };
    if method != Method::POST {
        return page::not_found();
    }
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |p| p.as_str());
    s.hooks
        .receive(&s.authority, name, path_and_query, &headers, &body)
        .await
        .unwrap_or_else(page::not_found)
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    if *s.serving.borrow() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let mut text = s.authority.metrics().render(
                s.authority.contacts(),
                s.authority.writer_queue_depth(),
                s.authority.applied_sequence(),
                s.authority.feed_lag(),
                s.authority
                    .feed_broken()
                    .map_or(0, |(sequence, _)| sequence),
            );
            s.hooks.render_metrics(&mut text);
            text
        },
    )
}
