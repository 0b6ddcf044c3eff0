//! The task API: what dfget, preheat and peers ask a dfdaemon to download,
//! and what they learn about its tasks.
//!
//! Local (the `--api-listen` unix socket or loopback address, reachable by
//! this host's root only): POST /api/v1/tasks, GET /api/v1/tasks,
//! GET|DELETE /api/v1/tasks/{id}, GET /api/v1/tasks/{id}/content.
//!
//! Network (on the peer port, next to the pieces): POST /api/v1/tasks for
//! requests a peer or the operator may make (no output file, no task id but
//! the request's own, only the headers a registry fetch needs), and
//! GET /api/v1/tasks/{id} for progress. Content leaves this host over the
//! network only as pieces, or through the mirror's access checks.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::daemon::{Daemon, StartError};
use crate::store::{RunState, StoredTask, TaskFailure};
use crate::task_id::is_valid_task_id;
use crate::task_request::TaskRequest;
pub use wire::task::{ErrorBody, TaskState, TaskStatus};

/// The routes of the local task API.
pub fn local_router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/api/v1/tasks", post(create_local).get(list_tasks))
        .route("/api/v1/tasks/{id}", get(task_status).delete(delete_task))
        .route("/api/v1/tasks/{id}/content", get(task_content))
        .with_state(daemon)
}

/// The routes of the task API any cluster member may use.
pub fn network_router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/api/v1/tasks", post(create_from_network))
        .route("/api/v1/tasks/{id}", get(network_task_status))
        .with_state(daemon)
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
            failure: None,
        }),
    )
        .into_response()
}

/// A failed download as an HTTP answer: the origin's own 4xx/5xx is
/// reported as 502 with the details in the body.
pub(crate) fn failure_response(failure: TaskFailure) -> Response {
    let status = match failure {
        TaskFailure::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    (
        status,
        Json(ErrorBody {
            error: failure.to_string(),
            failure: Some(failure),
        }),
    )
        .into_response()
}

/// Why a task named in a path cannot be used.
pub(crate) enum LookupError {
    InvalidId(String),
    Unknown(String),
    Failed(TaskFailure),
}

impl IntoResponse for LookupError {
    fn into_response(self) -> Response {
        match self {
            LookupError::InvalidId(id) => {
                error(StatusCode::BAD_REQUEST, format!("invalid task id {id:?}"))
            }
            LookupError::Unknown(id) => error(StatusCode::NOT_FOUND, format!("unknown task {id}")),
            LookupError::Failed(failure) => failure_response(failure),
        }
    }
}

pub(crate) fn find_task(daemon: &Daemon, id: &str) -> Result<Arc<StoredTask>, LookupError> {
    if !is_valid_task_id(id) {
        return Err(LookupError::InvalidId(id.to_string()));
    }
    if let Some(task) = daemon.store.get(id) {
        return Ok(task);
    }
    // A task dropped because it failed still answers with why, for a while.
    match daemon.tasks.recent_failure(id) {
        Some(failure) => Err(LookupError::Failed(failure)),
        None => Err(LookupError::Unknown(id.to_string())),
    }
}

fn start(daemon: &Arc<Daemon>, request: TaskRequest) -> Response {
    match daemon.start_task(request) {
        Ok(task) => (StatusCode::ACCEPTED, Json(status_of(daemon, &task))).into_response(),
        Err(StartError::BadRequest(message)) => error(StatusCode::BAD_REQUEST, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[tracing::instrument(skip_all)]
async fn create_local(
    State(daemon): State<Arc<Daemon>>,
    body: Result<Json<TaskRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => start(&daemon, request),
        Err(rejection) => error(StatusCode::BAD_REQUEST, rejection.body_text()),
    }
}

#[tracing::instrument(skip_all)]
/// Who may start a download here over the network: the operator
/// (Preheat) anywhere, other members only on a seed (the seed request of
/// a node the scheduler sent to it). Without cluster identity, anyone.
fn may_start_tasks(
    daemon: &Daemon,
    caller: Option<&crate::serve::PeerIdentity>,
) -> Result<(), String> {
    use identity::Role;
    if daemon.tls.is_none() {
        return Ok(());
    }
    let Some(crate::serve::PeerIdentity(caller)) = caller else {
        return Err("no cluster identity on this connection".into());
    };
    match caller.role {
        Role::Operator => Ok(()),
        Role::Node | Role::Seed if daemon.config.seed => Ok(()),
        _ => Err(format!("{caller} may not start downloads on this host")),
    }
}

async fn create_from_network(
    State(daemon): State<Arc<Daemon>>,
    caller: Option<axum::Extension<crate::serve::PeerIdentity>>,
    body: Result<Json<TaskRequest>, JsonRejection>,
) -> Response {
    if let Err(why) = may_start_tasks(&daemon, caller.as_ref().map(|c| &c.0)) {
        daemon.metrics.failure("network_task_refused");
        tracing::warn!(reason = %why, "task request from the network refused");
        return error(StatusCode::FORBIDDEN, why);
    }
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    if let Err(why) = request.check_from_network() {
        daemon.metrics.failure("network_task_refused");
        tracing::warn!(url = %request.url, reason = %why, "task request from the network refused");
        return error(StatusCode::FORBIDDEN, why.to_string());
    }
    start(&daemon, request)
}

fn status_of(daemon: &Daemon, task: &StoredTask) -> TaskStatus {
    let meta = task.meta();
    let url = meta.url.clone();
    let (from_origin, from_peers) = daemon.tasks.get(&task.id).map_or((0, 0), |p| {
        (
            p.from_origin.load(Ordering::Relaxed),
            p.from_peers.load(Ordering::Relaxed),
        )
    });
    let (state, error) = match task.run_state() {
        _ if meta.complete => (TaskState::Complete, None),
        RunState::Running => (TaskState::Running, None),
        RunState::Failed(f) => (TaskState::Failed, Some(f)),
        RunState::Idle => (TaskState::Idle, None),
    };
    TaskStatus {
        task_id: meta.task_id.clone(),
        url,
        state,
        content_length: meta.content_length,
        piece_length: meta.piece_length,
        pieces_total: meta.piece_count(),
        pieces_done: meta.finished_pieces(),
        bytes_done: meta.stored_bytes(),
        from_origin,
        from_peers,
        error,
    }
}

async fn list_tasks(State(daemon): State<Arc<Daemon>>) -> Response {
    let list: Vec<TaskStatus> = daemon
        .store
        .list()
        .iter()
        .map(|t| status_of(&daemon, t))
        .collect();
    Json(list).into_response()
}

async fn task_status(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match find_task(&daemon, &id) {
        Ok(task) => Json(status_of(&daemon, &task)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A task's progress as another host sees it: without the URL's query,
/// which may carry a signature or a token.
async fn network_task_status(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Response {
    match find_task(&daemon, &id) {
        Ok(task) => {
            let mut status = status_of(&daemon, &task);
            if let Some((path, _query)) = status.url.split_once('?') {
                status.url = path.to_string();
            }
            Json(status).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn delete_task(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    if let Err(e) = find_task(&daemon, &id) {
        return e.into_response();
    }
    if daemon.store.remove(&id, false) {
        daemon.forget(&id);
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::CONFLICT, "task is being read or written")
    }
}

#[tracing::instrument(skip(daemon), fields(content_task = %id))]
async fn task_content(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    let task = match find_task(&daemon, &id) {
        Ok(task) => task,
        Err(e) => return e.into_response(),
    };
    let from_cache = task.is_complete();
    let length = match task.wait_shape(daemon.config.stall_timeout).await {
        Ok(Some((length, _))) => length,
        Ok(None) => {
            if let RunState::Failed(f) = task.run_state() {
                return failure_response(f);
            }
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "content length not known in time",
            );
        }
        Err(failure) => return failure_response(failure),
    };
    task.touch();
    let metrics = daemon.metrics.clone();
    let on_bytes: Box<dyn Fn(u64) + Send + Sync> = if from_cache {
        Box::new(move |n| metrics.obtained("cache", n))
    } else {
        Box::new(|_| {})
    };
    let stall = daemon.config.stall_timeout;
    let stream = crate::reader::stream_range(task, 0, length, stall, on_bytes)
        .map(|r| r.map_err(std::io::Error::from));
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}
