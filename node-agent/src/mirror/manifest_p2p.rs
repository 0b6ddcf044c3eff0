//! Manifests by digest are content-addressed like blobs, so they are
//! fetched and shared like blobs: a P2P task keyed by the digest, checked
//! against it. A node can then resolve an image by digest from its peers
//! while the registry is down (as the offline policy allows).

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::sync::Arc;

use super::blob;
use super::manifest_cache::MAX_MANIFEST;
use super::state::{oci_error, Ctx, Mirror};
use crate::task_request::TaskRequest;

/// Every manifest type a back-to-source fetch accepts: the registry must
/// not pick a different representation than the digest names.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/json";

pub async fn serve(mirror: &Arc<Mirror>, ctx: &Ctx, name: &str, digest: &str) -> Response {
    let path = format!("/v2/{name}/manifests/{digest}");
    let access = match blob::check_access(
        mirror,
        ctx,
        name,
        digest,
        &path,
        mirror.config.upstream_timeout,
    )
    .await
    {
        Ok(access) => access,
        Err(resp) => return resp,
    };
    let mut headers = blob::origin_headers(ctx, &mirror.daemon.host_id);
    headers.insert("Accept".to_string(), ACCEPT.to_string());
    let request = TaskRequest {
        url: ctx.upstream.url(&path),
        headers,
        digest: Some(digest.to_string()),
        ..Default::default()
    };
    let (task, length) = match blob::start_and_size(
        mirror,
        request,
        None,
        mirror.daemon.config.stall_timeout,
        "MANIFEST_INVALID",
        "manifest",
    )
    .await
    {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    if length > MAX_MANIFEST as u64 {
        return oci_error(
            StatusCode::BAD_GATEWAY,
            "MANIFEST_INVALID",
            "manifest larger than 4 MiB",
        );
    }
    let mut body = BytesMut::with_capacity(length as usize);
    let mut stream = std::pin::pin!(crate::reader::stream_range(
        task,
        0,
        length,
        mirror.daemon.config.stall_timeout,
        Box::new(|_| {})
    ));
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(e) => return oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &e.to_string()),
        }
    }
    let body = body.freeze();
    if access != blob::Access::Offline {
        // Read with the registry's yes: what it references is readable too.
        super::references::grant(mirror, ctx, name, &body);
    }
    let mut resp = Response::new(if ctx.is_head() {
        Body::empty()
    } else {
        Body::from(body.clone())
    });
    let out = resp.headers_mut();
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Ok(v) = HeaderValue::from_str(media_type(&body)) {
        out.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(digest) {
        out.insert("docker-content-digest", v);
    }
    resp
}

/// The manifest's own `mediaType`, else a guess from its shape (OCI
/// manifests may omit the field).
pub fn media_type(body: &Bytes) -> &'static str {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return "application/octet-stream";
    };
    const KNOWN: &[&str] = &[
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ];
    if let Some(found) = json
        .get("mediaType")
        .and_then(|m| m.as_str())
        .and_then(|m| KNOWN.iter().find(|k| **k == m))
    {
        return found;
    }
    if json.get("manifests").is_some() {
        "application/vnd.oci.image.index.v1+json"
    } else {
        "application/vnd.oci.image.manifest.v1+json"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let t = |s: &'static str| media_type(&Bytes::from_static(s.as_bytes()));
        assert_eq!(
            t(r#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            t(r#"{"schemaVersion":2,"manifests":[]}"#),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            t(r#"{"schemaVersion":2,"layers":[]}"#),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            t(r#"{"mediaType":"text/html"}"#),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(t("not json"), "application/octet-stream");
    }
}
