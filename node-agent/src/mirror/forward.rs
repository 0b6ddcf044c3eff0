//! Forward HTTP proxy mode on the mirror port, for runtimes configured with
//! an image proxy (`image-proxy: http://127.0.0.1:65001`) instead of
//! mirrors: absolute-URI requests whose URL matches a rule (default
//! `blobs/sha256.*`) go through P2P, everything else passes through
//! unchanged, and `CONNECT` is tunnelled (HTTPS cannot be looked into).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::Response;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use super::route::{self, Route};
use super::state::{oci_error, Ctx, Hops, Mirror};
use super::upstream::Upstream;

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Whether `request` is for the forward proxy rather than the mirror.
pub fn is_proxy_request(request: &Request) -> bool {
    request.method() == Method::CONNECT || request.uri().scheme().is_some()
}

pub async fn serve(mirror: &Arc<Mirror>, request: Request) -> (&'static str, Response) {
    if mirror.config.forward_proxy_hosts.is_empty() {
        let resp = oci_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "forward proxy mode is disabled",
        );
        return ("proxy", resp);
    }
    if let Some(refusal) = refuse_target(mirror, request.uri()) {
        return ("proxy", refusal);
    }
    if request.method() == Method::CONNECT {
        return ("connect", tunnel(request).await);
    }
    let hops = super::state::loop_guard(request.headers(), &mirror.daemon.host_id);
    if hops == Hops::Loop {
        let resp = oci_error(StatusCode::LOOP_DETECTED, "UNSUPPORTED", "proxy loop");
        return ("proxy", resp);
    }
    let uri = request.uri().clone();
    let url = uri.to_string();
    let p2p = request.method() == Method::GET && hops == Hops::First && mirror.rules.is_match(&url);
    if p2p {
        // Only the headers cross the await: a request body is not Sync.
        let headers = request.headers().clone();
        if let Some(resp) = through_p2p(mirror, &headers, &uri).await {
            return ("proxy_p2p", resp);
        }
    }
    ("proxy", pass_through(mirror, request).await)
}

/// Only the configured hosts: a forward proxy open to any destination
/// would relay every pod's traffic to anything the node can reach. The
/// answer for a target that is not allowed.
fn refuse_target(mirror: &Mirror, uri: &Uri) -> Option<Response> {
    let Some(host) = uri.host() else {
        return Some(oci_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "proxy request without a host",
        ));
    };
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    if mirror.config.forward_proxy_allows(host, port) {
        return None;
    }
    tracing::warn!(
        host,
        port,
        "forward proxy request for a host not configured"
    );
    Some(oci_error(
        StatusCode::FORBIDDEN,
        "DENIED",
        &format!("the forward proxy does not serve {host}:{port}"),
    ))
}

/// Registry blob URLs go through the mirror's blob path (access check,
/// ranges, digest task id); other matching URLs become plain URL tasks.
/// `None`: not something P2P can serve; pass it through.
async fn through_p2p(mirror: &Arc<Mirror>, headers: &HeaderMap, uri: &Uri) -> Option<Response> {
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") => "https",
        _ => return None,
    };
    let upstream = Upstream {
        scheme,
        host: uri.authority()?.as_str().to_ascii_lowercase(),
    };
    if let Ok(Route::Blob { name, digest }) = route::parse(uri.path()) {
        if uri.query().is_none() {
            let ctx = Ctx {
                method: Method::GET,
                headers: headers.clone(),
                upstream,
                query: None,
                relayed: false,
            };
            return Some(super::blob::serve(mirror, &ctx, &name, &digest).await);
        }
    }
    // A ranged or conditional request for a plain URL is the origin's to
    // answer; a whole-object GET can be shared.
    if headers.contains_key(header::RANGE) || headers.contains_key(header::IF_NONE_MATCH) {
        return None;
    }
    Some(url_task(mirror, headers, uri).await)
}

/// A matching non-registry URL: one task per URL, streamed whole.
async fn url_task(mirror: &Arc<Mirror>, caller: &HeaderMap, uri: &Uri) -> Response {
    let mut headers = std::collections::BTreeMap::new();
    if let Some(auth) = caller
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        headers.insert("Authorization".to_string(), auth.to_string());
    }
    headers.insert(
        wire::headers::VIA.to_string(),
        mirror.daemon.host_id.clone(),
    );
    let task_request = crate::task_request::TaskRequest {
        url: uri.to_string(),
        headers,
        ..Default::default()
    };
    let task = match mirror.daemon.start_task(task_request) {
        Ok(task) => task,
        Err(e) => return oci_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &e.to_string()),
    };
    let stall = mirror.daemon.config.stall_timeout;
    let length = match task.wait_shape(stall).await {
        Ok(Some((length, _))) => length,
        Ok(None) => {
            return oci_error(
                StatusCode::GATEWAY_TIMEOUT,
                "UNAVAILABLE",
                "content length not known in time",
            )
        }
        Err(failure) => {
            let status = match &failure {
                crate::store::TaskFailure::Origin { status, .. } => {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
                }
                _ => StatusCode::BAD_GATEWAY,
            };
            return oci_error(status, "UNAVAILABLE", &failure.to_string());
        }
    };
    let metrics = mirror.daemon.metrics.clone();
    let stream = crate::reader::stream_range(
        task,
        0,
        length,
        stall,
        Box::new(move |n| metrics.mirror.blob_bytes("swarm", n)),
    )
    .map(|r| r.map_err(std::io::Error::from));
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// Sends the request on as is (body included) and relays the answer with
/// every end-to-end header; redirects go back to the client.
async fn pass_through(mirror: &Mirror, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let url = parts.uri.to_string();
    let mut headers = end_to_end(&parts.headers);
    headers.append(
        HeaderName::from_static(wire::headers::VIA),
        match header::HeaderValue::from_str(&mirror.daemon.host_id) {
            Ok(v) => v,
            Err(_) => header::HeaderValue::from_static("dfdaemon"),
        },
    );
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let send = mirror
        .passthrough
        .request(parts.method, &url)
        .headers(headers)
        .body(body)
        .send();
    let timeout = mirror.config.upstream_timeout;
    let resp = match tokio::time::timeout(timeout, send).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            return oci_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &format!("{url}: {e}"),
            )
        }
        Err(_) => {
            let message = format!("{url} did not answer within {timeout:?}");
            return oci_error(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", &message);
        }
    };
    let status = resp.status();
    let headers = end_to_end(resp.headers());
    let stream = resp
        .bytes_stream()
        .map(|c| c.map_err(std::io::Error::other));
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        out.remove(name);
    }
    out
}

/// `CONNECT host:port`: answer 200, then copy bytes both ways.
async fn tunnel(request: Request) -> Response {
    let Some(authority) = request.uri().authority().map(|a| a.to_string()) else {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "CONNECT needs host:port",
        );
    };
    if request.uri().port_u16().is_none() {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "CONNECT needs host:port",
        );
    }
    // Connect first so an unreachable target is an HTTP error, not a
    // tunnel that closes at once.
    let connect = tokio::net::TcpStream::connect(&authority);
    let target = match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return oci_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &format!("{authority}: {e}"),
            )
        }
        Err(_) => return oci_error(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", &authority),
    };
    tokio::spawn(async move {
        let mut target = target;
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut target).await {
                    tracing::debug!(%authority, error = %e, "tunnel closed");
                }
            }
            Err(e) => tracing::warn!(%authority, error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer y"));
        h.insert(header::HOST, HeaderValue::from_static("h"));
        let out = end_to_end(&h);
        assert_eq!(out.len(), 1);
        assert_eq!(out[header::AUTHORIZATION], "Bearer y");
    }

    #[test]
    fn default_rule_matches_blob_urls_only() {
        let config = crate::mirror::config::MirrorConfig::default();
        let rules = regex::RegexSet::new(&config.proxy_rules).unwrap();
        assert!(rules.is_match(&format!(
            "https://r.io/v2/a/blobs/sha256:{}",
            "0".repeat(64)
        )));
        assert!(!rules.is_match("https://r.io/v2/a/manifests/latest"));
    }
}
