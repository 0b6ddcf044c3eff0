//! Manifests: always asked of the upstream when it answers (tags move), the
//! answer kept in memory so a registry outage does not stop nodes from
//! starting images they pulled recently.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::time::Instant;

use super::auth::AuthKey;
use super::manifest_cache::{CachedManifest, ManifestKey, MAX_MANIFEST};
use super::proxy::{self, ProxyError};
use super::route::Reference;
use super::state::{oci_error, Ctx, Mirror};

pub async fn serve(
    mirror: &std::sync::Arc<Mirror>,
    ctx: &Ctx,
    name: &str,
    reference: &Reference,
) -> Response {
    // sha256 digests are content-addressed: shared through P2P like blobs.
    if let Reference::Digest(digest) = reference {
        if digest.starts_with("sha256:") && !ctx.relayed {
            return super::manifest_p2p::serve(mirror, ctx, name, digest).await;
        }
    }
    let path = format!("/v2/{name}/manifests/{}", reference.as_str());
    let by_digest = matches!(reference, Reference::Digest(_));
    let key = ManifestKey {
        registry: ctx.upstream.host.clone(),
        name: name.to_string(),
        reference: reference.as_str().to_string(),
        accept: ctx
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    };
    let auth_key = AuthKey::repository(&ctx.upstream.host, name, ctx.authorization());
    // A HEAD stays a HEAD: registries such as Docker Hub count manifest
    // GETs against pull rate limits, HEADs not.
    let resp = match proxy::send(mirror, ctx, ctx.method.clone(), &path).await {
        Ok(resp) => resp,
        Err(e) => {
            return offline(
                mirror,
                ctx,
                &key,
                by_digest,
                &auth_key,
                e.to_string(),
                e.response(),
            )
            .await
        }
    };
    let status = resp.status();
    if status.is_server_error() {
        let message = format!("upstream answered {status}");
        let fallback = proxy::relay(resp, ctx.is_head(), None);
        return offline(mirror, ctx, &key, by_digest, &auth_key, message, fallback).await;
    }
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        mirror.auth.record_denied(&auth_key);
    }
    if status == StatusCode::OK {
        // Reading a manifest proves read access to the repository (its
        // manifests, for the offline policy); blobs are checked each on
        // their own, a registry scoping them to repositories.
        mirror.auth.record_allowed(&auth_key);
    }
    if status == StatusCode::OK && ctx.is_head() && !by_digest {
        // containerd resolves tags with HEAD: what the tag points to is in
        // the headers, and worth sharing as much as a GET's.
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let (Some(digest), Some(media_type)) =
            (header("docker-content-digest"), header("content-type"))
        {
            // The tag's yes covers the manifest it names: containerd's GET
            // by digest that follows needs no access check of its own.
            super::references::grant_one(mirror, ctx, name, &digest);
            share_tag(mirror, &key, digest, media_type);
        }
    }
    if status != StatusCode::OK || ctx.is_head() {
        return proxy::relay(resp, ctx.is_head(), None);
    }
    let headers = proxy::relayed_headers(resp.headers());
    let body = match read_limited(resp, MAX_MANIFEST).await {
        Ok(body) => body,
        Err(e) => return e.response(),
    };
    let manifest = CachedManifest {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        digest: headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.clone(),
        fetched: Instant::now(),
    };
    if !by_digest {
        let digest = manifest
            .digest
            .clone()
            .filter(|d| d.starts_with("sha256:"))
            .unwrap_or_else(|| crate::piece::piece_digest(&manifest.body));
        let media_type = manifest
            .content_type
            .clone()
            .unwrap_or_else(|| super::manifest_p2p::media_type(&manifest.body).to_string());
        share_tag(mirror, &key, digest, media_type);
    }
    // A tag read proves the manifest it names readable, and with it what
    // that manifest references: their blob checks need no request of their own.
    if !by_digest {
        let digest = crate::piece::piece_digest(&manifest.body);
        super::references::grant_one(mirror, ctx, name, &digest);
    }
    super::references::grant(mirror, ctx, name, &manifest.body);
    mirror.manifests.put(key, manifest);
    let mut out = Response::new(Body::from(body.clone()));
    *out.headers_mut() = headers;
    out.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    out
}

/// Tells the scheduler what a tag resolved to, so nodes that never saw it
/// can resolve it from the cluster while the registry is down.
fn share_tag(mirror: &Mirror, key: &ManifestKey, digest: String, media_type: String) {
    if !mirror.daemon.schedulers.is_configured() || !digest.starts_with("sha256:") {
        return;
    }
    let req = proto::ReportTagRequest {
        tag: Some(image_tag(key)),
        digest,
        media_type,
        host_id: mirror.daemon.host_id.clone(),
    };
    let schedulers = mirror.daemon.schedulers.clone();
    tokio::spawn(async move {
        if let Err(e) = schedulers.report_tag(req).await {
            tracing::debug!(error = %e, "tag not shared with the scheduler");
        }
    });
}

fn image_tag(key: &ManifestKey) -> proto::ImageTag {
    proto::ImageTag {
        registry: key.registry.clone(),
        repository: key.name.clone(),
        tag: key.reference.clone(),
    }
}

/// Whether a client sending `accept` takes `media_type` (no Accept, or a
/// wildcard, takes anything).
#[doc(hidden)] // pub only for the fuzz targets (fuzz/fuzz_targets/manifest.rs)
pub fn accepts(accept: &str, media_type: &str) -> bool {
    let listed: Vec<&str> = accept
        .split(',')
        .map(|part| part.split(';').next().unwrap_or("").trim())
        .filter(|m| !m.is_empty())
        .collect();
    listed.is_empty()
        || listed
            .iter()
            .any(|m| *m == "*/*" || m.eq_ignore_ascii_case(media_type))
}

/// A tag this node has no copy of, resolved from what other dfdaemons
/// reported to the scheduler (recently enough), then served by digest
/// through P2P. `None` when the cluster does not know it either.
async fn from_cluster(
    mirror: &std::sync::Arc<Mirror>,
    ctx: &Ctx,
    key: &ManifestKey,
) -> Option<Response> {
    if !mirror.daemon.schedulers.is_configured() {
        return None;
    }
    let req = proto::ResolveTagRequest {
        tag: Some(image_tag(key)),
    };
    let records = match mirror.daemon.schedulers.resolve_tag(req).await {
        Ok(resp) => resp.records,
        Err(e) => {
            tracing::debug!(error = %e, "cannot ask the scheduler for the tag");
            return None;
        }
    };
    let ttl = mirror.config.manifest_cache_ttl;
    let record = records.into_iter().find(|r| {
        std::time::Duration::from_millis(r.age_ms) <= ttl && accepts(&key.accept, &r.media_type)
    })?;
    tracing::warn!(digest = %record.digest, age_ms = record.age_ms, "upstream unavailable; tag resolved from the cluster");
    let resp = super::manifest_p2p::serve(mirror, ctx, &key.name, &record.digest).await;
    resp.status().is_success().then_some(resp)
}

/// The upstream cannot answer: a cached manifest if the policy lets this
/// caller have it (this node's copy, else for a tag what the cluster
/// resolved it to), else `fallback` (the upstream's error or ours).
async fn offline(
    mirror: &std::sync::Arc<Mirror>,
    ctx: &Ctx,
    key: &ManifestKey,
    by_digest: bool,
    auth_key: &AuthKey,
    why: String,
    fallback: Response,
) -> Response {
    let Some(cached) = mirror.manifests.get(key, by_digest) else {
        if !by_digest {
            if let Some(resp) = from_cluster(mirror, ctx, key).await {
                return resp;
            }
        }
        tracing::warn!(reason = %why, "upstream unavailable and no cached manifest");
        return fallback;
    };
    if !mirror
        .auth
        .allowed_offline(auth_key, mirror.config.offline_policy)
    {
        mirror.metrics().auth("offline_denied");
        tracing::warn!(reason = %why, "upstream unavailable; cached manifest withheld by the offline policy");
        return fallback;
    }
    mirror.metrics().auth("offline_allowed");
    tracing::warn!(reason = %why, age_s = cached.fetched.elapsed().as_secs(), "upstream unavailable; serving the cached manifest");
    let len = cached.body.len();
    let mut out = Response::new(if ctx.is_head() {
        Body::empty()
    } else {
        Body::from(cached.body)
    });
    let headers = out.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(v) = cached
        .content_type
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = cached.digest.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert("docker-content-digest", v);
    }
    out
}

/// The body, or an error past `limit` bytes (a manifest that large breaks
/// the distribution spec, and buffering it would let an upstream use our memory).
pub(super) async fn read_limited(
    resp: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ManifestError> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(ManifestError::TooLarge(limit));
    }
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ManifestError::Upstream(ProxyError::Request(e)))?;
        if body.len() + chunk.len() > limit {
            return Err(ManifestError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn accept_lists() {
        let index = "application/vnd.oci.image.index.v1+json";
        assert!(accepts("", index));
        assert!(accepts("*/*", index));
        assert!(accepts(
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json;q=0.9",
            index
        ));
        assert!(!accepts(
            "application/vnd.oci.image.manifest.v1+json",
            index
        ));
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ManifestError {
    #[error("upstream manifest is larger than {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Upstream(ProxyError),
}

impl ManifestError {
    pub(super) fn response(&self) -> Response {
        match self {
            ManifestError::TooLarge(_) => oci_error(
                StatusCode::BAD_GATEWAY,
                "MANIFEST_INVALID",
                &self.to_string(),
            ),
            ManifestError::Upstream(e) => e.response(),
        }
    }
}
