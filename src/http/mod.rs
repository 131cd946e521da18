//! The HTTP side: the unsubscribe pages (`/u/{token}`), `/healthz` and
//! `/metrics`. It calls the same [`Authority`] as gRPC, never logic of its own.

mod unsubscribe;

use axum::extract::DefaultBodyLimit;
use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use tokio::sync::watch;

use crate::authority::Authority;

#[derive(Clone)]
struct AppState {
    authority: Authority,
    /// False once shutdown has begun.
    serving: watch::Receiver<bool>,
}

pub(crate) fn router(authority: Authority, serving: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/u/{token}",
            get(unsubscribe::show).post(unsubscribe::confirm),
        )
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(AppState { authority, serving })
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
        s.authority.metrics().render(s.authority.contacts()),
    )
}
