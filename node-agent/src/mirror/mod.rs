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
pub mod upstream;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

use crate::daemon::Daemon;
use auth::AuthCache;
use manifest_cache::ManifestCache;
use route::{Route, RouteError};
use upstream::{Clients, Upstream, UpstreamError};

/// Loop guard: carries the host ids of the dfdaemons a request went through.
pub const VIA_HEADER: &str = "x-dragonfly-via";

/// Shared state of the mirror server.
pub struct Mirror {
    pub daemon: Arc<Daemon>,
    pub config: config::MirrorConfig,
    pub clients: Arc<Clients>,
    pub auth: AuthCache,
    pub manifests: ManifestCache,
    /// Forward-proxy URLs that go through P2P.
    pub rules: regex::RegexSet,
    /// Forward-proxy pass-through client: relays redirects, never follows.
    pub passthrough: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("invalid mirror.proxy_rules: {0}")]
    Rule(#[from] regex::Error),
    #[error("building the forward-proxy client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What the handlers need to know about one request.
pub struct Ctx {
    pub method: Method,
    pub headers: HeaderMap,
    pub upstream: Upstream,
    /// The request's query string (`ns`, pagination, filters).
    pub query: Option<String>,
    /// Already passed through a dfdaemon: forwarded as is, never into P2P.
    pub relayed: bool,
}

impl Ctx {
    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    pub fn authorization(&self) -> Option<&[u8]> {
        self.headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
    }
}

impl Mirror {
    pub fn new(daemon: Arc<Daemon>) -> Result<Arc<Self>, SetupError> {
        let config = daemon.config.mirror.clone();
        Ok(Arc::new(Mirror {
            rules: regex::RegexSet::new(&config.proxy_rules)?,
            passthrough: reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.upstream_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            clients: Clients::new(&config)?,
            auth: AuthCache::new(config.auth_check_ttl),
            manifests: ManifestCache::new(config.manifest_cache_ttl),
            config,
            daemon,
        }))
    }

    pub fn metrics(&self) -> &metrics::MirrorMetrics {
        &self.daemon.metrics.mirror
    }
}

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
        .get(upstream::REGISTRY_HEADER)
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
    (label, resp)
}

/// containerd's `ns` query parameter: the registry a request is for.
pub(crate) fn ns_param(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
}

/// Which dfdaemons a request went through, from the loop-guard header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hops {
    First,
    /// Another dfdaemon already handled it.
    Relayed,
    /// This daemon did: the upstream points back at a mirror.
    Loop,
}

pub(crate) fn loop_guard(headers: &HeaderMap, host_id: &str) -> Hops {
    let mut hops = Hops::First;
    for value in headers.get_all(VIA_HEADER) {
        hops = Hops::Relayed;
        let seen_self = value
            .to_str()
            .map(|v| v.split(',').any(|id| id.trim() == host_id))
            .unwrap_or(false);
        if seen_self {
            return Hops::Loop;
        }
    }
    hops
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

/// An error in the distribution spec's JSON shape.
pub fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_guard_spots_our_own_id() {
        let mut headers = HeaderMap::new();
        assert_eq!(loop_guard(&headers, "me"), Hops::First);
        headers.append(VIA_HEADER, HeaderValue::from_static("other"));
        assert_eq!(loop_guard(&headers, "me"), Hops::Relayed);
        headers.append(VIA_HEADER, HeaderValue::from_static("x, me"));
        assert_eq!(loop_guard(&headers, "me"), Hops::Loop);
    }

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
