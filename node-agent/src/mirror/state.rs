//! The mirror's shared state and what every handler uses: the per-request
//! context, the loop guard, and errors in the distribution spec's shape.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use std::sync::Arc;

use super::auth::AuthCache;
use super::config;
use super::manifest_cache::ManifestCache;
use super::metrics;
use super::upstream::{Clients, Upstream, UpstreamError};
use crate::daemon::Daemon;

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

/// containerd's `ns` query parameter: the registry a request is for.
pub fn ns_param(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
}

/// Which dfdaemons a request went through, from the loop-guard header.
#[derive(Debug, PartialEq, Eq)]
pub enum Hops {
    First,
    /// Another dfdaemon already handled it.
    Relayed,
    /// This daemon did: the upstream points back at a mirror.
    Loop,
}

pub fn loop_guard(headers: &HeaderMap, host_id: &str) -> Hops {
    let mut hops = Hops::First;
    for value in headers.get_all(wire::headers::VIA) {
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
        headers.append(wire::headers::VIA, HeaderValue::from_static("other"));
        assert_eq!(loop_guard(&headers, "me"), Hops::Relayed);
        headers.append(wire::headers::VIA, HeaderValue::from_static("x, me"));
        assert_eq!(loop_guard(&headers, "me"), Hops::Loop);
    }
}
