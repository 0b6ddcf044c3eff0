//! A demo origin: serves in-memory files with Range support and counts every
//! body byte it sends, so tests can check "fetched from the origin once"
//! without trusting the system's own metrics.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct OriginStats {
    pub bytes_served: AtomicU64,
    pub requests: AtomicU64,
}

#[derive(Clone)]
struct OriginState {
    files: Arc<Mutex<HashMap<String, Bytes>>>,
    stats: Arc<OriginStats>,
    /// Bytes per second per response (0: unlimited).
    throttle: Arc<AtomicU64>,
}

pub struct Origin {
    pub addr: SocketAddr,
    state: OriginState,
    task: tokio::task::JoinHandle<()>,
}

const CHUNK: usize = 64 * 1024;

impl Origin {
    pub async fn start(bind: &str) -> anyhow::Result<Origin> {
        let state = OriginState {
            files: Arc::default(),
            stats: Arc::default(),
            throttle: Arc::default(),
        };
        let app = Router::new()
            .route("/files/{name}", get(serve).head(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Origin { addr, state, task })
    }

    pub fn add(&self, name: &str, data: Bytes) -> String {
        self.state
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), data);
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/files/{name}", self.addr)
    }

    pub fn bytes_served(&self) -> u64 {
        self.state.stats.bytes_served.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.state.stats.requests.load(Ordering::SeqCst)
    }

    /// Limits each response to `bytes_per_sec` (0: unlimited).
    pub fn set_throttle(&self, bytes_per_sec: u64) {
        self.state.throttle.store(bytes_per_sec, Ordering::SeqCst);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Random content of `len` bytes.
pub fn random_bytes(len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    Bytes::from(data)
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub(crate) fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.parse().ok()?;
    let end: u64 = if end.is_empty() {
        len - 1
    } else {
        end.parse().ok()?
    };
    (start <= end && start < len).then_some((start, end.min(len - 1)))
}

async fn serve(
    State(state): State<OriginState>,
    Path(name): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::SeqCst);
    let Some(data) = state
        .files
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let len = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e + 1),
        Some(None) => return (StatusCode::RANGE_NOT_SATISFIABLE, "bad range").into_response(),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end - 1, len))
                .unwrap_or(HeaderValue::from_static("")),
        );
    }
    if method == axum::http::Method::HEAD {
        return builder.body(Body::empty()).unwrap_or_default();
    }
    let body = data.slice(start as usize..end as usize);
    let throttle = state.throttle.load(Ordering::SeqCst);
    let stats = state.stats.clone();
    let stream = futures::stream::iter(chunks(body)).then(move |chunk| {
        let stats = stats.clone();
        async move {
            if throttle > 0 {
                tokio::time::sleep(Duration::from_secs_f64(
                    chunk.len() as f64 / throttle as f64,
                ))
                .await;
            }
            stats
                .bytes_served
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
            Ok::<_, std::io::Error>(chunk)
        }
    });
    builder.body(Body::from_stream(stream)).unwrap_or_default()
}

/// `body` as the chunks a streamed response sends: servers here count
/// bytes as each chunk goes out, so a transfer cut short counts only what
/// was sent.
pub fn chunks(body: Bytes) -> impl Iterator<Item = Bytes> + Send {
    (0..body.len())
        .step_by(CHUNK)
        .map(move |i| body.slice(i..(i + CHUNK).min(body.len())))
}
