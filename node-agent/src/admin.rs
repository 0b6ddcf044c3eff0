//! The admin port (default :40901): health, readiness, Prometheus metrics,
//! and `/server/ping` (the mirror health check nydus polls).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::daemon::Daemon;

#[derive(Clone)]
struct AdminState {
    daemon: Arc<Daemon>,
    ready: Arc<AtomicBool>,
}

pub fn router(daemon: Arc<Daemon>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/server/ping", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { daemon, ready })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.daemon.metrics.encode(),
    )
}
