//! The admin HTTP server: liveness, readiness and Prometheus metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::state::SharedState;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone)]
pub struct Admin {
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
    /// True while the gRPC server accepts requests; false before it is
    /// bound and once shutdown starts, so the Service stops routing to us.
    pub ready: Arc<AtomicBool>,
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    // Sizes are computed at scrape time rather than kept up to date on every
    // request: one pass over the state per scrape is cheaper.
    let gauges = admin.state.with(|s| s.gauges());
    admin.metrics.set_gauges(gauges);
    match admin.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
