//! The registry mirror on the proxy port (default :65001): the read side of
//! the OCI distribution API. Manifests, tag lists, referrers and `/v2/` are
//! forwarded to the upstream registry; writes are refused (`UNSUPPORTED`);
//! blobs go through the P2P core with their digest as
//! the task id and are streamed to the client as pieces arrive.
//!
//! The upstream comes from the `X-Dragonfly-Registry` header (written into
//! containerd's hosts.toml), else containerd's `ns` query parameter, else
//! the configured default. A loop-guard header marks every request a
//! dfdaemon sends upstream, so a request that already passed through one is
//! proxied straight to its registry instead of into the swarm again.

pub mod anonymous;
pub mod auth;
pub mod blob;
pub mod config;
pub mod discovery;
pub mod forward;
pub mod health;
pub mod manifest;
pub mod manifest_cache;
pub mod manifest_p2p;
pub mod metrics;
pub mod proxy;
pub mod range;
pub mod references;
pub mod route;
pub mod state;
pub mod upstream;
pub mod usage;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

use crate::daemon::Daemon;
use route::{Route, RouteError};
use state::{loop_guard, ns_param, Hops};
pub use state::{oci_error, Ctx, Mirror, SetupError};
use upstream::UpstreamError;

pub fn router(daemon: Arc<Daemon>) -> Result<Router, SetupError> {
    Ok(Router::new()
        .fallback(handle)
        .with_state(Mirror::new(daemon)?))
}

async fn handle(State(mirror): State<Arc<Mirror>>, request: Request) -> Response {
    let span = tracing::info_span!(
        "mirror",
        method = %request.method(),
        uri = %request.uri(),
    );
    async move {
        let _in_flight = mirror.daemon.mirror_health.request_started();
        let started = Instant::now();
        let (route, response) = if forward::is_proxy_request(&request) {
            forward::serve(&mirror, request).await
        } else {
            let (parts, _body) = request.into_parts();
            dispatch(&mirror, parts).await
        };
        let status = response.status();
        mirror.metrics().request(route, status.as_u16());
        if status.is_server_error() || status.is_client_error() {
            tracing::info!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "mirror request refused or failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "mirror request answered"
            );
        }
        response
    }
    .instrument(span)
    .await
}

async fn dispatch(
    mirror: &Arc<Mirror>,
    parts: axum::http::request::Parts,
) -> (&'static str, Response) {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let mut resp = oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the mirror serves pulls only (GET and HEAD)",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return ("invalid", resp);
    }
    let route = match route::parse(parts.uri.path()) {
        Ok(route) => route,
        Err(e) => return ("invalid", route_error(e)),
    };
    let label = route.label();
    let relayed = match loop_guard(&parts.headers, &mirror.daemon.host_id) {
        Hops::First => false,
        Hops::Relayed => true,
        Hops::Loop => {
            let message = "request came back to the dfdaemon that sent it: the upstream registry points at a mirror";
            return (
                label,
                oci_error(StatusCode::LOOP_DETECTED, "UNSUPPORTED", message),
            );
        }
    };
    let header_value = match parts
        .headers
        .get(wire::headers::REGISTRY)
        .map(|v| v.to_str())
    {
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return (
                label,
                oci_error(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED",
                    "X-Dragonfly-Registry is not ASCII",
                ),
            )
        }
        None => None,
    };
    let ns = ns_param(parts.uri.query());
    let upstream = match upstream::resolve(header_value, ns.as_deref(), &mirror.config) {
        Ok((upstream, from)) => {
            tracing::debug!(upstream = %upstream.host, ?from, "upstream resolved");
            upstream
        }
        // No upstream known: 404 lets containerd move on to its next host.
        Err(UpstreamError::Missing) => {
            return (
                label,
                oci_error(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    &UpstreamError::Missing.to_string(),
                ),
            )
        }
        Err(e) => {
            return (
                label,
                oci_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &e.to_string()),
            )
        }
    };
    if !mirror.config.mirrors(&upstream) {
        tracing::warn!(upstream = %upstream.host, "request for a registry this node does not mirror");
        let message = format!("this node does not mirror {}", upstream.host);
        return (label, oci_error(StatusCode::FORBIDDEN, "DENIED", &message));
    }
    let ctx = Ctx {
        method: parts.method,
        headers: parts.headers,
        upstream,
        query: parts.uri.query().map(str::to_string),
        relayed,
    };
    let from_containerd = ns.is_some() && !relayed;
    let is_manifest = matches!(route, Route::Manifest { .. });
    let resp = match route {
        Route::Base => proxy::forward(mirror, &ctx, "/v2/").await,
        Route::Manifest { name, reference } => {
            manifest::serve(mirror, &ctx, &name, &reference).await
        }
        Route::Blob { name, digest } => blob::serve(mirror, &ctx, &name, &digest).await,
        Route::Tags { name } => discovery::tags(mirror, &ctx, &name).await,
        Route::Referrers { name, digest } => {
            discovery::referrers(mirror, &ctx, &name, &digest).await
        }
    };
    if from_containerd && is_manifest && resp.status().is_success() {
        let now = std::time::SystemTime::now();
        mirror.daemon.mirror_use.record(now);
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        mirror.metrics().containerd_pulls.inc();
        mirror.metrics().last_containerd_pull.set(secs);
    }
    (label, resp)
}

fn route_error(e: RouteError) -> Response {
    let (status, code) = match e {
        RouteError::NotFound => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
        RouteError::Name(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
        RouteError::Reference(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        RouteError::Digest(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
    };
    oci_error(status, code, &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_errors_map_to_4xx() {
        assert_eq!(
            route_error(RouteError::NotFound).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route_error(RouteError::Name("A".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            route_error(RouteError::Digest("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
