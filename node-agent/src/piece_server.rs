//! The peer-facing HTTP server (default :65002): pieces and task shapes for
//! other peers, plus the network part of the task API (see `task_api`).
//!
//! Peer routes:  GET /api/v1/tasks/{id}/pieces/{n}, GET /api/v1/tasks/{id}/shape

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::peer_client::{TaskShapeResponse, PIECE_DIGEST_HEADER, RETRY_REASON_HEADER};
use crate::ratelimit::RateLimiter;
use crate::store::RunState;
use crate::task_api::{error, failure_response, find_task, LookupError};

#[derive(Clone)]
struct AppState {
    daemon: Arc<Daemon>,
    limiter: Option<Arc<RateLimiter>>,
    claims: Claims,
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    let limiter = daemon
        .config
        .upload_rate
        .map(|rate| Arc::new(RateLimiter::new(rate.as_u64())));
    Router::new()
        .route("/api/v1/tasks/{id}/shape", get(task_shape))
        .route("/api/v1/tasks/{id}/pieces/{index}", get(piece))
        .with_state(AppState {
            daemon: daemon.clone(),
            limiter,
            claims: Claims::default(),
        })
        .merge(crate::task_api::network_router(daemon))
}

#[derive(Deserialize)]
struct WaitQuery {
    wait_ms: Option<u64>,
}

async fn task_shape(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Response {
    let task = match find_task(&state.daemon, &id) {
        Ok(task) => task,
        Err(e) => return e.into_response(),
    };
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(state.daemon.config.piece_wait);
    match task.wait_shape(wait).await {
        Ok(Some((content_length, piece_length))) => {
            let (finished_pieces, bitmap) =
                task.with_meta(|m| (m.finished_pieces(), hex::encode(m.bitmap().as_bytes())));
            Json(TaskShapeResponse {
                task_id: id,
                content_length,
                piece_length,
                piece_count: crate::piece::piece_count(content_length, piece_length),
                finished_pieces,
                bitmap,
            })
            .into_response()
        }
        Ok(None) => not_ready(),
        Err(failure) => failure_response(failure),
    }
}

fn not_ready() -> Response {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "not ready yet");
    resp.headers_mut()
        .insert(RETRY_REASON_HEADER, HeaderValue::from_static("not-ready"));
    resp
}

#[tracing::instrument(skip(state), fields(peer_task = %id))]
async fn piece(State(state): State<AppState>, Path((id, index)): Path<(String, u32)>) -> Response {
    let daemon = &state.daemon;
    let task = match find_task(daemon, &id) {
        Ok(task) => task,
        // A seed is asked for a task before the peer that triggered it has
        // reached it: "not yet", not "never", or the seed is deposed.
        Err(LookupError::Unknown(_)) if daemon.config.seed => return not_ready(),
        Err(e) => return e.into_response(),
    };
    // While this daemon still downloads the task, each piece goes to one
    // peer at a time: a source's uplink then carries fresh pieces, and the
    // children swap copies among themselves.
    let claim = if task.is_complete() {
        None
    } else {
        match UploadClaim::take(&state.claims, &id, index) {
            Some(claim) => Some(claim),
            None => return retry_later("piece-busy", "piece is being sent to another peer"),
        }
    };
    if !task.with_meta(|m| m.has_piece(index)) {
        // The back-to-source peer of a lazily read task fetches what its
        // children ask for; a full download will bring every piece anyway.
        let coming = daemon.want_piece_for_peer(&task, index)
            || (task.run_state() == RunState::Running
                && daemon.tasks.get(&id).is_some_and(|p| p.demand.wants_all()));
        if !coming {
            if !task.with_meta(|m| m.shape_known()) {
                // Just created (its run may not even have started): it
                // cannot tell yet what it will fetch.
                return not_ready();
            }
            return error(StatusCode::NOT_FOUND, format!("piece {index} not held"));
        }
        match task.wait_piece(index, daemon.config.piece_wait).await {
            Ok(true) => {}
            Ok(false) if task.with_meta(|m| m.piece_count().is_some_and(|n| index >= n)) => {
                return error(StatusCode::NOT_FOUND, format!("task has no piece {index}"))
            }
            Ok(false) => return not_ready(),
            Err(failure) => return failure_response(failure),
        }
    }
    // The slot first: a piece counts as handed out only once it really is.
    let Ok(permit) = daemon.uploads.clone().try_acquire_owned() else {
        daemon.metrics.upload_rejected.inc();
        return retry_later("busy", "no free upload slot");
    };
    // Handing each fresh piece out once relies on the scheduler telling
    // children who else holds it; without one, the sourcing daemon serves
    // every request.
    let sourcing_since = daemon
        .tasks
        .sourcing_since()
        .filter(|_| !daemon.schedulers.is_lost());
    // Created here for a complete task no run has touched since start: its
    // hand-outs count too.
    if !daemon
        .tasks
        .get_or_insert(&id)
        .may_upload(index, sourcing_since)
    {
        return retry_later(
            "piece-busy",
            "piece already handed to a peer; ask the peers",
        );
    }
    // Checked (in chunks) first, then sent chunk by chunk from disk: a
    // parent holds a chunk per upload, not a piece (up to 32 MiB).
    let (start, length, digest) = match task.verify_piece(index).await {
        Ok(found) => found,
        Err(e) => return error(StatusCode::NOT_FOUND, e.to_string()),
    };
    tracing::debug!(piece = index, bytes = length, "uploading piece");
    daemon.metrics.upload_bytes.inc_by(length);
    daemon.metrics.upload_pieces.inc();
    task.touch();
    let body = paced_body(
        task.clone(),
        index,
        start..start + length,
        state.limiter.clone(),
        (permit, claim),
    );
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(value) = HeaderValue::from_str(&digest) {
        resp.headers_mut().insert(PIECE_DIGEST_HEADER, value);
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// Chunks a piece so the rate limit paces it evenly (no line-rate bursts
/// that fill the link's queue), holding `held` (upload slot, piece claim)
/// until the last chunk has been taken by the connection.
/// The bytes an upload paced by `--upload-rate` sends at a time.
const PACED_SLICE: u64 = 64 << 10;

/// Piece `index` (bytes `range` of the task) read from disk a chunk at a
/// time, each paced by the upload limiter; `held` (the upload slot and
/// claim) lives until the last byte is out. When the file changes while a
/// piece is sent, the piece is checked again: a damaged one cuts the body
/// (the child never takes it whole), an intact one goes on.
fn paced_body<H: Send + 'static>(
    task: Arc<crate::store::StoredTask>,
    index: u32,
    range: std::ops::Range<u64>,
    limiter: Option<Arc<RateLimiter>>,
    held: H,
) -> Body {
    let chunks = futures::stream::try_unfold(range.start, move |offset| {
        let task = task.clone();
        let limiter = limiter.clone();
        let end = range.end;
        async move {
            if offset >= end {
                return Ok(None);
            }
            // Paced uploads go out in smaller slices, so a child never sees
            // a gap near its idle limit while others' slices go first.
            let slice = if limiter.is_some() {
                PACED_SLICE
            } else {
                crate::piece::IO_CHUNK as u64
            };
            let len = (end - offset).min(slice);
            if let Some(limiter) = &limiter {
                limiter.acquire(len).await;
            }
            match task.read_verified(index, offset, len as usize).await {
                Ok(Some(chunk)) => Ok(Some((chunk, offset + len))),
                Ok(None) => Err(std::io::Error::other(format!(
                    "piece {index} changed on disk while it was sent"
                ))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        }
    });
    let release = futures::stream::once(async move {
        drop(held);
        None
    })
    .filter_map(|none: Option<Result<bytes::Bytes, std::io::Error>>| async move { none });
    Body::from_stream(chunks.chain(release))
}

fn retry_later(reason: &'static str, message: &str) -> Response {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, message);
    resp.headers_mut()
        .insert(RETRY_REASON_HEADER, HeaderValue::from_static(reason));
    resp
}

type Claims = Arc<std::sync::Mutex<std::collections::HashSet<(String, u32)>>>;

/// A piece being sent right now; released on drop.
struct UploadClaim {
    claims: Claims,
    key: (String, u32),
}

impl UploadClaim {
    fn take(claims: &Claims, task: &str, index: u32) -> Option<UploadClaim> {
        let key = (task.to_string(), index);
        let mut held = claims.lock().unwrap_or_else(|e| e.into_inner());
        if !held.insert(key.clone()) {
            return None;
        }
        Some(UploadClaim {
            claims: claims.clone(),
            key,
        })
    }
}

impl Drop for UploadClaim {
    fn drop(&mut self) {
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}
