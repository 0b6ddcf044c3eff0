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
use crate::mirror::upstream::Clients;

#[derive(Clone)]
struct AdminState {
    daemon: Arc<Daemon>,
    ready: Arc<AtomicBool>,
    /// Reach upstreams the way the mirror does (their TLS settings).
    clients: Option<Arc<Clients>>,
}

pub fn router(daemon: Arc<Daemon>, ready: Arc<AtomicBool>) -> Router {
    let clients = Clients::new(&daemon.config.mirror)
        .map_err(|e| tracing::warn!(error = %e, "ping cannot re-check upstreams"))
        .ok();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/server/ping", get(ping))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            daemon,
            ready,
            clients,
        })
}

/// nydusd's `ping_url`: 200 only when the mirror can serve promptly. An
/// upstream marked unavailable is re-checked here (`/v2/`, any answer
/// below 500 counts), so recovery is noticed and a cut path keeps
/// answering 503 — nydusd then keeps reading from the registry directly
/// instead of stalling on the mirror.
async fn ping(State(state): State<AdminState>) -> impl IntoResponse {
    if !state.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting".to_string());
    }
    let health = &state.daemon.mirror_health;
    if let Some(clients) = &state.clients {
        let probes = health.broken().into_iter().map(|(upstream, _)| async move {
            crate::mirror::health::probe(clients, health, &upstream).await
        });
        futures::future::join_all(probes).await;
    }
    let problems = health.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n"))
    }
}

/// Liveness: 503 once the main runtime stopped ticking (a hung dfdaemon
/// holds every new pull on its node until it is restarted).
async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.daemon.heartbeat.stalled(std::time::Instant::now()) {
        None => (StatusCode::OK, "ok".to_string()),
        Some(since) => {
            tracing::error!(
                stalled_ms = since.as_millis() as u64,
                "the runtime stopped ticking"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("runtime stalled for {} ms", since.as_millis()),
            )
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if !state.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting".to_string());
    }
    if let Some(since) = state.daemon.store.budget().disk_full_since() {
        let message = format!(
            "disk full for {}s: no piece can be stored until space is freed",
            since.elapsed().as_secs()
        );
        return (StatusCode::SERVICE_UNAVAILABLE, message);
    }
    (StatusCode::OK, "ok".to_string())
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
