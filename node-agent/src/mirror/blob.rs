//! Blobs: served from the P2P core with the digest as the task id, streamed
//! as pieces arrive. Before anything from the cluster reaches a caller, the
//! upstream confirms (or has recently confirmed) that the caller's
//! credentials can read the blob's repository.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::sync::Arc;

use super::auth::AuthKey;
use super::config::OfflinePolicy;
use super::proxy;
use super::range::{self, RangeError};
use super::state::{oci_error, Ctx, Mirror};
use crate::daemon::StartError;
use crate::store::{StoredTask, TaskFailure};
use crate::task_id::task_id_for_digest;
use crate::task_request::TaskRequest;

pub async fn serve(mirror: &Arc<Mirror>, ctx: &Ctx, name: &str, digest: &str) -> Response {
    let path = format!("/v2/{name}/blobs/{digest}");
    // Only sha256 digests key the content store; other algorithms, and
    // requests another dfdaemon already handled, go straight upstream.
    let task_id = match task_id_for_digest(digest) {
        Ok(id) if !ctx.relayed => id,
        _ => return relay_upstream(mirror, ctx, &path).await,
    };
    // A malformed Range is refused before any upstream work.
    let ranges = match requested_ranges(ctx) {
        Ok(ranges) => ranges,
        Err(e) => return range_error(&e, None),
    };
    let local = mirror
        .daemon
        .store
        .get(&task_id)
        .filter(|t| t.is_complete());
    // Lazy-pull clients wait only briefly on the access check, so a slow
    // upstream makes them fall back instead of stalling.
    let check_timeout = if ranges.is_some() {
        mirror.config.range_timeout
    } else {
        mirror.config.upstream_timeout
    };
    let upstream_length = match check_access(mirror, ctx, name, digest, &path, check_timeout).await
    {
        Ok(access) => access.length(),
        Err(resp) => return resp,
    };
    if ctx.is_head() {
        let length = local
            .as_ref()
            .and_then(|t| t.with_meta(|m| m.content_length))
            .or(upstream_length);
        return match length {
            Some(length) => head_response(digest, length),
            None => proxy::forward(mirror, ctx, &path).await,
        };
    }
    let source = if local.is_some() { "local" } else { "swarm" };
    let lazy = ranges.is_some() && local.is_none();
    let request = TaskRequest {
        url: ctx.upstream.url(&path),
        headers: origin_headers(ctx, &mirror.daemon.host_id),
        digest: Some(digest.to_string()),
        lazy,
        prefetch: lazy && wants_prefetch(mirror, ctx),
        ..Default::default()
    };
    // A lazy reader waits only briefly for the length too, and hardly at
    // all while the upstream or range reads are known to be failing: the
    // cluster gets a moment to serve from peers, then the client falls back.
    let health = &mirror.daemon.mirror_health;
    let range_timeout = if health.is_broken(&ctx.upstream) || health.stalled().is_some() {
        mirror.config.range_timeout.min(DEGRADED_RANGE_TIMEOUT)
    } else {
        mirror.config.range_timeout
    };
    let size_timeout = if lazy {
        range_timeout
    } else {
        mirror.daemon.config.stall_timeout
    };
    let (task, length) = match start_and_size(
        mirror,
        request,
        upstream_length,
        size_timeout,
        "BLOB_UNKNOWN",
        "blob",
    )
    .await
    {
        Ok(found) => found,
        Err(resp) => {
            if lazy {
                range_failed(mirror, &resp, || {
                    format!("blob length not known within {size_timeout:?}")
                });
            }
            return resp;
        }
    };
    task.touch();
    tracing::debug!(task = %task.id, length, source, ranges = ?ranges, "serving blob");
    let on_bytes = {
        let mirror = mirror.clone();
        move || -> Box<dyn Fn(u64) + Send + Sync> {
            let mirror = mirror.clone();
            Box::new(move |n| mirror.metrics().blob_bytes(source, n))
        }
    };
    let Some(specs) = ranges else {
        let stall = mirror.daemon.config.stall_timeout;
        // The first piece before the status line: a download that cannot
        // start (the origin refuses, the cache cannot store a byte) answers
        // 5xx and containerd moves on to the registry, instead of a 200
        // whose body ends after 0 bytes and fails the pull.
        if let Err(resp) = await_first_pieces(&task, &[(0, length)], stall).await {
            return resp;
        }
        let counting = count_whole_blob(mirror.clone(), task.clone(), source, length, on_bytes());
        let stream = crate::reader::stream_range(task, 0, length, stall, counting);
        return body_response(
            StatusCode::OK,
            digest,
            length,
            Body::from_stream(io(stream)),
        );
    };
    serve_ranges(
        mirror,
        task,
        digest,
        length,
        &specs,
        range_timeout,
        on_bytes,
    )
    .await
}

/// The Range header's specs, `None` without one.
fn requested_ranges(ctx: &Ctx) -> Result<Option<Vec<range::RangeSpec>>, RangeError> {
    let Some(value) = ctx.headers.get(header::RANGE) else {
        return Ok(None);
    };
    value
        .to_str()
        .map_err(|_| RangeError::Malformed("non-ASCII".into()))
        .and_then(range::parse)
        .map(Some)
}

/// A lazy reader's ranges of a blob whose length is known: only the pieces
/// they touch are fetched, ahead of any background work, and a range that
/// cannot be served within `stall` is refused before any byte goes out.
async fn serve_ranges(
    mirror: &Arc<Mirror>,
    task: Arc<StoredTask>,
    digest: &str,
    length: u64,
    specs: &[range::RangeSpec],
    stall: std::time::Duration,
    on_bytes: impl Fn() -> Box<dyn Fn(u64) + Send + Sync> + Send + Sync + 'static,
) -> Response {
    let health = &mirror.daemon.mirror_health;
    let resolved = match range::resolve(specs, length) {
        Ok(resolved) => resolved,
        Err(e) => return range_error(&e, Some(length)),
    };
    // Only the pieces the ranges touch are fetched (from peers when they
    // have them), ahead of any background work.
    let touched = touched_pieces(&task, &resolved);
    let missing: Vec<u32> = task.with_meta(|m| {
        touched
            .iter()
            .copied()
            .filter(|&i| !m.has_piece(i))
            .collect()
    });
    mirror.daemon.want_bytes(&task, &resolved);
    // Refused before any byte goes out, so a lazy-pull client falls back
    // to the registry at once instead of reading a broken body.
    if let Err(resp) = await_first_pieces(&task, &resolved, stall).await {
        range_failed(mirror, &resp, || {
            format!("blob range not served within {stall:?}")
        });
        return resp;
    }
    health.range_served();
    let total: u64 = resolved.iter().map(|(s, e)| e - s).sum();
    let on_bytes = count_range(mirror.clone(), task.clone(), missing, total, on_bytes);
    if let [(start, end)] = resolved[..] {
        let stream = crate::reader::stream_range(task, start, end, stall, on_bytes());
        let mut resp = body_response(
            StatusCode::PARTIAL_CONTENT,
            digest,
            end - start,
            Body::from_stream(io(stream)),
        );
        if let Ok(v) = HeaderValue::from_str(&range::content_range(start, end, length)) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return resp;
    }
    multipart(task, digest, length, &resolved, stall, on_bytes)
}

/// Whether this range request should also prefetch the rest of the blob:
/// the `X-Dragonfly-Prefetch` header, else the mirror setting.
fn wants_prefetch(mirror: &Mirror, ctx: &Ctx) -> bool {
    match ctx
        .headers
        .get(PREFETCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
    {
        Some(v) if v == "true" || v == "1" => true,
        Some(v) if v == "false" || v == "0" => false,
        _ => mirror.config.prefetch,
    }
}

/// How long a range read waits for its first piece while the upstream is
/// marked unavailable or range reads are stalling.
const DEGRADED_RANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts a refused range read; a server-side failure (the swarm or the
/// origin path stuck, not the client's fault) goes into the mirror's
/// health, which `/server/ping` reports.
fn range_failed(mirror: &Mirror, resp: &Response, why: impl FnOnce() -> String) {
    mirror.metrics().range_served("failed");
    if resp.status().is_server_error() {
        mirror.daemon.mirror_health.range_stalled(why());
    }
}

/// Per-request switch for the background prefetch after a range.
pub const PREFETCH_HEADER: &str = "x-dragonfly-prefetch";

fn touched_pieces(task: &StoredTask, ranges: &[(u64, u64)]) -> Vec<u32> {
    let piece_length = task.with_meta(|m| m.piece_length);
    let mut pieces: Vec<u32> = ranges
        .iter()
        .flat_map(|&(s, e)| crate::piece::pieces_for_range(s, e, piece_length))
        .collect();
    pieces.sort_unstable();
    pieces.dedup();
    pieces
}

/// Waits until the first piece of every range is stored, or answers why
/// not (a failed download keeps its status; a slow one is 504).
async fn await_first_pieces(
    task: &StoredTask,
    ranges: &[(u64, u64)],
    timeout: std::time::Duration,
) -> Result<(), Response> {
    let piece_length = task.with_meta(|m| m.piece_length);
    let deadline = tokio::time::Instant::now() + timeout;
    for &(start, end) in ranges {
        let Some(first) = crate::piece::pieces_for_range(start, end, piece_length).next() else {
            continue;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match task.wait_piece(first, left).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(oci_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UNAVAILABLE",
                    &format!("piece {first} not available within {timeout:?}"),
                ))
            }
            Err(failure) => return Err(failure_response(&failure)),
        }
    }
    Ok(())
}

/// Counts a range answer once its last byte is handed out, by where the
/// pieces it lacked at the start came from.
fn count_range(
    mirror: Arc<Mirror>,
    task: Arc<StoredTask>,
    missing: Vec<u32>,
    total: u64,
    on_bytes: impl Fn() -> Box<dyn Fn(u64) + Send + Sync> + Send + Sync + 'static,
) -> impl Fn() -> Box<dyn Fn(u64) + Send + Sync> + Send + 'static {
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let missing = Arc::new(missing);
    move || {
        let inner = on_bytes();
        let (mirror, task, missing, sent) =
            (mirror.clone(), task.clone(), missing.clone(), sent.clone());
        Box::new(move |n| {
            inner(n);
            let done = sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
            if done >= total && done - n < total {
                let source = mirror
                    .daemon
                    .tasks
                    .get(&task.id)
                    .map_or("local", |p| p.source_of(&missing));
                mirror.metrics().range_served(source);
            }
        })
    }
}

/// Starts (or joins) the P2P task for content addressed by digest and
/// waits, bounded, until its length is known. `bad_request_code` is the OCI
/// error code for a request the daemon refuses; `what` names the content in
/// the timeout message.
pub(super) async fn start_and_size(
    mirror: &Mirror,
    request: TaskRequest,
    known_length: Option<u64>,
    stall: std::time::Duration,
    bad_request_code: &str,
    what: &str,
) -> Result<(Arc<StoredTask>, u64), Response> {
    let task = match mirror.daemon.start_task(request) {
        Ok(task) => task,
        Err(StartError::BadRequest(message)) => {
            return Err(oci_error(
                StatusCode::BAD_REQUEST,
                bad_request_code,
                &message,
            ))
        }
        Err(e) => {
            return Err(oci_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                &e.to_string(),
            ))
        }
    };
    if let Some(length) = known_length {
        // The upstream's HEAD told the length: no need to ask again.
        if !task.with_meta(|m| m.shape_known()) {
            let piece_length = crate::piece::piece_length_for(Some(length));
            if let Err(e) = task.set_shape(Some(length), piece_length) {
                tracing::debug!(error = %e, "upstream length conflicts with the task's");
            }
        }
    }
    match task.wait_shape(stall).await {
        Ok(Some((length, _))) => Ok((task, length)),
        Ok(None) => Err(oci_error(
            StatusCode::GATEWAY_TIMEOUT,
            "UNAVAILABLE",
            &format!("{what} length not known within {stall:?}"),
        )),
        Err(failure) => Err(failure_response(&failure)),
    }
}

/// Why a caller may read an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// The upstream said yes, now (with the length a HEAD told) or within
    /// the access cache's TTL.
    Confirmed { length: Option<u64> },
    /// The upstream cannot be asked; the offline policy allows it.
    Offline,
}

impl Access {
    pub(super) fn length(self) -> Option<u64> {
        match self {
            Access::Confirmed { length } => length,
            Access::Offline => None,
        }
    }
}

/// Asks the upstream whether the caller may read the blob (or manifest)
/// `digest` under `name`, unless it said yes for that very object recently;
/// an error answer (the upstream's own 401/403/404, or 502) when not.
pub(super) async fn check_access(
    mirror: &Mirror,
    ctx: &Ctx,
    name: &str,
    digest: &str,
    path: &str,
    timeout: std::time::Duration,
) -> Result<Access, Response> {
    let key = AuthKey::blob(&ctx.upstream.host, name, digest, ctx.authorization());
    if mirror.auth.is_fresh(&key) {
        mirror.metrics().auth("cached");
        return Ok(Access::Confirmed { length: None });
    }
    let mut headers = proxy::forwarded_headers(&ctx.headers, &mirror.daemon.host_id);
    headers.remove(header::RANGE);
    let outcome = proxy::send_within(mirror, ctx, Method::HEAD, path, headers, timeout).await;
    let why = match outcome {
        Ok(resp) if resp.status().is_success() => {
            mirror.auth.record_allowed(&key);
            super::anonymous::share(mirror, &key);
            mirror.metrics().auth("allowed");
            let length = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            return Ok(Access::Confirmed { length });
        }
        Ok(resp) if !resp.status().is_server_error() => {
            if matches!(
                resp.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                mirror.auth.record_denied(&key);
                mirror.metrics().auth("denied");
            }
            // The upstream's answer, challenge included, goes back as is.
            return Err(proxy::relay(resp, true, None));
        }
        Ok(resp) => format!("upstream answered {}", resp.status()),
        Err(e) => e.to_string(),
    };
    if mirror
        .auth
        .allowed_offline(&key, mirror.config.offline_policy)
    {
        mirror.metrics().auth("offline_allowed");
        tracing::warn!(reason = %why, "upstream unavailable; serving from the cluster as the offline policy allows");
        return Ok(Access::Offline);
    }
    // Public content this node never read: another member may have seen the
    // registry serve it without credentials.
    if matches!(
        mirror.config.offline_policy,
        OfflinePolicy::Anonymous | OfflinePolicy::Credentials
    ) && super::anonymous::seen_by_cluster(mirror, &key.anonymous()).await
    {
        mirror.metrics().auth("offline_allowed_public");
        tracing::warn!(reason = %why, "upstream unavailable; serving from the cluster, which saw it read anonymously");
        return Ok(Access::Offline);
    }
    mirror.metrics().auth("offline_denied");
    Err(oci_error(
        StatusCode::BAD_GATEWAY,
        "UNAVAILABLE",
        &format!("cannot confirm access with the upstream: {why}"),
    ))
}

/// Headers the back-to-source download sends the registry: the caller's
/// credentials and the loop guard.
pub(super) fn origin_headers(
    ctx: &Ctx,
    host_id: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    if let Some(auth) = ctx
        .authorization()
        .and_then(|a| std::str::from_utf8(a).ok())
    {
        out.insert("Authorization".to_string(), auth.to_string());
    }
    out.insert(wire::headers::VIA.to_string(), host_id.to_string());
    out
}

async fn relay_upstream(mirror: &Mirror, ctx: &Ctx, path: &str) -> Response {
    match proxy::send(mirror, ctx, ctx.method.clone(), path).await {
        Ok(resp) => {
            let metrics = mirror.daemon.metrics.clone();
            proxy::relay(
                resp,
                ctx.is_head(),
                Some(Box::new(move |n| metrics.mirror.blob_bytes("upstream", n))),
            )
        }
        Err(e) => e.response(),
    }
}

fn io(
    stream: impl Stream<Item = Result<Bytes, crate::reader::ReadError>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    stream.map(|r| {
        r.map_err(|e| {
            tracing::warn!(error = %e, "blob stream broken off");
            std::io::Error::from(e)
        })
    })
}

/// Wraps `on_bytes` to count the blob once its last byte is handed to the
/// client, by where its bytes came from: this node's store, or (for a
/// download) peers, the origin, or both. The download's own counters are
/// final only when it completes, so the count waits for that (briefly).
fn count_whole_blob(
    mirror: Arc<Mirror>,
    task: Arc<StoredTask>,
    source: &'static str,
    length: u64,
    on_bytes: Box<dyn Fn(u64) + Send + Sync>,
) -> Box<dyn Fn(u64) + Send + Sync> {
    let sent = std::sync::atomic::AtomicU64::new(0);
    Box::new(move |n| {
        on_bytes(n);
        let total = sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        if total < length || total - n >= length {
            return;
        }
        let mirror = mirror.clone();
        let task = task.clone();
        tokio::spawn(async move {
            if source == "local" {
                mirror.metrics().blob_served("local");
                return;
            }
            let mut changes = task.subscribe();
            let wait = async {
                while task.run_state() == crate::store::RunState::Running {
                    if changes.changed().await.is_err() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), wait).await;
            let (origin, peers) = mirror.daemon.tasks.get(&task.id).map_or((0, 0), |p| {
                (
                    p.from_origin.load(std::sync::atomic::Ordering::Relaxed),
                    p.from_peers.load(std::sync::atomic::Ordering::Relaxed),
                )
            });
            let label = match (origin > 0, peers > 0) {
                (true, false) => "origin",
                (false, true) => "peer",
                (true, true) => "mixed",
                // Another request's download filled the store meanwhile.
                (false, false) => "local",
            };
            mirror.metrics().blob_served(label);
        });
    })
}

fn head_response(digest: &str, length: u64) -> Response {
    body_response(StatusCode::OK, digest, length, Body::empty())
}

fn body_response(status: StatusCode, digest: &str, length: u64, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(digest) {
        headers.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            headers.insert(header::ETAG, etag);
        }
    }
    resp
}

/// Several ranges: one `multipart/byteranges` body whose length is known
/// up front, each part streamed as its pieces arrive.
fn multipart(
    task: Arc<StoredTask>,
    digest: &str,
    length: u64,
    ranges: &[(u64, u64)],
    stall: std::time::Duration,
    on_bytes: impl Fn() -> Box<dyn Fn(u64) + Send + Sync> + Send + 'static,
) -> Response {
    let boundary = hex::encode(rand::random::<[u8; 12]>());
    let heads: Vec<String> = ranges
        .iter()
        .map(|&(start, end)| {
            format!(
                "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: {}\r\n\r\n",
                range::content_range(start, end, length)
            )
        })
        .collect();
    let tail = format!("\r\n--{boundary}--\r\n");
    let total: u64 = heads.iter().map(|h| h.len() as u64).sum::<u64>()
        + ranges.iter().map(|(s, e)| e - s).sum::<u64>()
        + tail.len() as u64;
    let parts: Vec<(String, u64, u64)> = heads
        .into_iter()
        .zip(ranges.iter())
        .map(|(h, &(s, e))| (h, s, e))
        .collect();
    let stream = futures::stream::iter(parts)
        .map(move |(head, start, end)| {
            futures::stream::once(futures::future::ready(Ok(Bytes::from(head)))).chain(
                crate::reader::stream_range(task.clone(), start, end, stall, on_bytes()),
            )
        })
        .flatten()
        .chain(futures::stream::once(futures::future::ready(Ok(
            Bytes::from(tail),
        ))));
    let mut resp = body_response(
        StatusCode::PARTIAL_CONTENT,
        digest,
        total,
        Body::from_stream(io(stream)),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}")) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// 416 for every Range the mirror will not serve: unsatisfiable, invalid
/// or too many ranges (RFC 9110 §15.5.17 names all three), with the
/// length in `Content-Range` once it is known.
fn range_error(e: &RangeError, length: Option<u64>) -> Response {
    let code = match e {
        RangeError::Unsatisfiable(_) => "BLOB_UNKNOWN",
        _ => "UNSUPPORTED",
    };
    let mut resp = oci_error(StatusCode::RANGE_NOT_SATISFIABLE, code, &e.to_string());
    if let Some(length) = length {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// A failed download: the registry's own refusal keeps its status (401,
/// 403, 404); anything else is 502 so containerd tries its next host.
pub(super) fn failure_response(failure: &TaskFailure) -> Response {
    match failure {
        TaskFailure::Origin { status, .. } if matches!(status, 401 | 403 | 404) => {
            let code = if *status == 404 {
                "BLOB_UNKNOWN"
            } else {
                "DENIED"
            };
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            oci_error(status, code, &failure.to_string())
        }
        _ => oci_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &failure.to_string()),
    }
}
