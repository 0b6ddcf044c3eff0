//! Forwarding a request to the upstream registry and relaying its answer:
//! used for `/v2/`, manifests, blob HEADs and relayed (loop-guarded) blobs.
//! The caller's credentials pass through and the upstream's own answer
//! (401 with `WWW-Authenticate` included) comes back unchanged, so
//! containerd runs its usual token flow against the real registry.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use futures::StreamExt;

use super::state::{oci_error, Ctx, Mirror};

/// Caller headers sent on to the upstream.
const FORWARDED: &[HeaderName] = &[
    header::ACCEPT,
    header::AUTHORIZATION,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::USER_AGENT,
];

/// Upstream headers relayed back to the caller.
const RELAYED: &[&str] = &[
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "docker-content-digest",
    "docker-distribution-api-version",
    "www-authenticate",
    "etag",
    "last-modified",
    "ratelimit-limit",
    "ratelimit-remaining",
    "oci-filters-applied",
];

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Upstream(#[from] super::upstream::UpstreamError),
    #[error("upstream {0} did not answer within {1:?}")]
    Timeout(String, std::time::Duration),
    #[error("upstream request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("upstream {0} failed moments ago ({1}); not waiting on it again yet")]
    FailingFast(String, String),
    #[error(transparent)]
    Destination(#[from] crate::destination::DestinationError),
}

impl ProxyError {
    /// 504 for a timeout, 502 otherwise: both make containerd try its
    /// next host.
    pub fn response(&self) -> Response {
        let (status, code) = match self {
            ProxyError::Timeout(..) => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
            ProxyError::Destination(_) => (StatusCode::FORBIDDEN, "DENIED"),
            _ => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
        };
        oci_error(status, code, &self.to_string())
    }
}

/// Sends `method path` upstream with the caller's pass-through headers and
/// the loop guard; waits at most `upstream_timeout` for the headers.
pub async fn send(
    mirror: &Mirror,
    ctx: &Ctx,
    method: Method,
    path: &str,
) -> Result<reqwest::Response, ProxyError> {
    let headers = forwarded_headers(&ctx.headers, &mirror.daemon.host_id);
    send_with(mirror, ctx, method, path, headers).await
}

/// `send` with the headers chosen by the caller.
pub async fn send_with(
    mirror: &Mirror,
    ctx: &Ctx,
    method: Method,
    path: &str,
    headers: HeaderMap,
) -> Result<reqwest::Response, ProxyError> {
    let timeout = mirror.config.upstream_timeout;
    send_within(mirror, ctx, method, path, headers, timeout).await
}

/// `send_with`, waiting at most `timeout` for the answer's headers. An
/// upstream that failed moments ago is not waited on again (each request
/// would stall for the whole timeout); its outcome feeds the mirror's
/// health, which `/server/ping` reports.
pub async fn send_within(
    mirror: &Mirror,
    ctx: &Ctx,
    method: Method,
    path: &str,
    headers: HeaderMap,
    timeout: std::time::Duration,
) -> Result<reqwest::Response, ProxyError> {
    let health = &mirror.daemon.mirror_health;
    let url = ctx.upstream.url(path);
    mirror.daemon.destinations.check(&url)?;
    if let Some(refusal) = health.fail_fast(&ctx.upstream) {
        // Once per retry window one request re-checks the upstream itself
        // (bounded by the probe's timeout) and goes ahead if it answers:
        // refusing it while the upstream is back would send containerd
        // around the mirror for the whole image.
        let recovered = refusal.recheck && {
            super::health::probe(&mirror.clients, health, &ctx.upstream).await;
            !health.is_broken(&ctx.upstream)
        };
        if !recovered {
            return Err(ProxyError::FailingFast(
                ctx.upstream.url(""),
                refusal.reason,
            ));
        }
    }
    let client = mirror.clients.for_upstream(&ctx.upstream)?;
    let request = client.request(method, &url).headers(headers);
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(timeout, request.send()).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(ProxyError::Request(e)),
        Err(_) => Err(ProxyError::Timeout(url, timeout)),
    };
    match &result {
        Ok(resp) if !resp.status().is_server_error() => health.succeeded(&ctx.upstream),
        Ok(resp) => health.failed_since(
            &ctx.upstream,
            started,
            format!("answered {}", resp.status()),
        ),
        Err(e) => health.failed_since(&ctx.upstream, started, e.to_string()),
    }
    result
}

/// The caller's headers worth forwarding, plus this daemon in the loop guard.
pub fn forwarded_headers(caller: &HeaderMap, host_id: &str) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED {
        for value in caller.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    for value in caller.get_all(wire::headers::VIA) {
        out.append(wire::headers::VIA, value.clone());
    }
    if let Ok(me) = HeaderValue::from_str(host_id) {
        out.append(wire::headers::VIA, me);
    }
    out
}

/// Forwards the request as is and relays the answer.
pub async fn forward(mirror: &Mirror, ctx: &Ctx, path: &str) -> Response {
    match send(mirror, ctx, ctx.method.clone(), path).await {
        Ok(resp) => relay(resp, ctx.is_head(), None),
        Err(e) => {
            tracing::warn!(error = %e, "upstream unavailable");
            e.response()
        }
    }
}

/// The upstream's status, relayed headers and streamed body. `on_bytes`
/// sees each body chunk's size.
pub fn relay(
    resp: reqwest::Response,
    head: bool,
    on_bytes: Option<Box<dyn Fn(u64) + Send + Sync>>,
) -> Response {
    let status = resp.status();
    let headers = relayed_headers(resp.headers());
    let body = if head {
        Body::empty()
    } else {
        let stream = resp.bytes_stream().map(move |chunk| {
            if let (Ok(bytes), Some(f)) = (&chunk, &on_bytes) {
                f(bytes.len() as u64);
            }
            chunk.map_err(std::io::Error::other)
        });
        Body::from_stream(stream)
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

pub fn relayed_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in RELAYED {
        for value in upstream.get_all(*name) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                out.append(name, value.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_headers_go_upstream_and_via_grows() {
        let mut caller = HeaderMap::new();
        caller.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        caller.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        caller.insert(header::COOKIE, HeaderValue::from_static("secret"));
        caller.insert(header::HOST, HeaderValue::from_static("127.0.0.1:65001"));
        caller.insert(
            wire::headers::REGISTRY,
            HeaderValue::from_static("https://r"),
        );
        caller.insert(wire::headers::VIA, HeaderValue::from_static("peer-a"));
        let out = forwarded_headers(&caller, "peer-b");
        assert_eq!(out[header::AUTHORIZATION], "Bearer t");
        assert_eq!(out[header::ACCEPT], "application/json");
        assert!(out.get(header::COOKIE).is_none());
        assert!(out.get(header::HOST).is_none());
        assert!(out.get(wire::headers::REGISTRY).is_none());
        let via: Vec<_> = out.get_all(wire::headers::VIA).iter().collect();
        assert_eq!(via, vec!["peer-a", "peer-b"]);
    }

    #[test]
    fn upstream_auth_challenge_is_relayed() {
        let mut upstream = HeaderMap::new();
        upstream.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"https://auth\",service=\"r\""),
        );
        upstream.insert(header::SET_COOKIE, HeaderValue::from_static("x"));
        let out = relayed_headers(&upstream);
        assert_eq!(out.len(), 1);
        assert!(out[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
}
