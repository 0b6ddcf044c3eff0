//! Fetching pieces and task shapes from parent peers over HTTP.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Header carrying a piece's recorded digest.
pub const PIECE_DIGEST_HEADER: &str = "x-dragonfly-piece-digest";
/// Set on 503 answers: `not-ready` (piece still arriving) or `busy` (no
/// upload slot free).
pub const RETRY_REASON_HEADER: &str = "x-dragonfly-retry";

/// A task's shape as a parent knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskShapeResponse {
    pub task_id: String,
    pub content_length: u64,
    pub piece_length: u32,
    pub piece_count: u32,
    pub finished_pieces: u32,
    /// Hex of the parent's finished-piece bitmap: lets a child keep its
    /// view of a parent fresh while no scheduler answers. Empty from
    /// daemons that predate it.
    #[serde(default)]
    pub bitmap: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect to parent: {0}")]
    Connect(String),
    #[error("parent timed out")]
    Timeout,
    #[error("parent does not have the piece yet")]
    NotReady,
    #[error("parent has no free upload slot")]
    Busy,
    #[error("parent is sending this piece to another peer")]
    PieceBusy,
    #[error("parent does not have the task or piece")]
    NotFound,
    #[error("parent answered {0}")]
    Server(u16),
    #[error("piece from parent does not match its digest")]
    DigestMismatch,
    #[error("parent sent a malformed answer: {0}")]
    Malformed(String),
}

impl PeerError {
    /// Soft failures say "not now", not "this parent is broken".
    pub fn is_soft(&self) -> bool {
        matches!(
            self,
            PeerError::NotReady | PeerError::Busy | PeerError::PieceBusy
        )
    }

    pub fn reason(&self) -> proto::FailureReason {
        use proto::FailureReason as R;
        match self {
            PeerError::Connect(_) => R::Connect,
            PeerError::Timeout => R::Timeout,
            PeerError::NotFound => R::NotFound,
            PeerError::DigestMismatch => R::DigestMismatch,
            PeerError::Server(_) | PeerError::Malformed(_) => R::ServerError,
            PeerError::NotReady | PeerError::Busy | PeerError::PieceBusy => R::Slow,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            PeerError::Connect(_) => "peer_connect",
            PeerError::Timeout => "peer_timeout",
            PeerError::NotReady => "peer_not_ready",
            PeerError::Busy => "peer_busy",
            PeerError::PieceBusy => "peer_piece_busy",
            PeerError::NotFound => "peer_not_found",
            PeerError::Server(_) => "peer_server_error",
            PeerError::DigestMismatch => "peer_digest_mismatch",
            PeerError::Malformed(_) => "peer_malformed",
        }
    }
}

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    piece_timeout: Duration,
}

impl PeerClient {
    pub fn new(piece_timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(16)
            .tcp_nodelay(true)
            .no_proxy()
            .build()?;
        Ok(PeerClient {
            http,
            piece_timeout,
        })
    }

    fn classify(e: reqwest::Error) -> PeerError {
        // Anything but a timeout (refused, reset, broken body) means the
        // parent cannot be relied on.
        if e.is_timeout() {
            PeerError::Timeout
        } else {
            PeerError::Connect(e.to_string())
        }
    }

    /// Asks a parent for the task's shape, letting it wait up to `wait` for
    /// its own origin answer.
    pub async fn shape(
        &self,
        base: &str,
        task_id: &str,
        wait: Duration,
    ) -> Result<TaskShapeResponse, PeerError> {
        let url = format!(
            "{base}/api/v1/tasks/{task_id}/shape?wait_ms={}",
            wait.as_millis()
        );
        let resp = self
            .http
            .get(url)
            .timeout(wait + Duration::from_secs(5))
            .send()
            .await
            .map_err(Self::classify)?;
        match resp.status().as_u16() {
            200 => resp
                .json::<TaskShapeResponse>()
                .await
                .map_err(|e| PeerError::Malformed(e.to_string())),
            404 => Err(PeerError::NotFound),
            503 => Err(PeerError::NotReady),
            code => Err(PeerError::Server(code)),
        }
    }

    /// Fetches one piece; returns its bytes and the digest the parent
    /// recorded. The caller verifies the bytes against it.
    pub async fn piece(
        &self,
        base: &str,
        task_id: &str,
        index: u32,
    ) -> Result<(Bytes, String), PeerError> {
        let url = format!("{base}/api/v1/tasks/{task_id}/pieces/{index}");
        let resp = self
            .http
            .get(url)
            .timeout(self.piece_timeout)
            .send()
            .await
            .map_err(Self::classify)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(PeerError::NotFound),
            503 => {
                // The reason decides what to avoid: this parent for a
                // moment (busy), or only this piece there (piece-busy).
                let reason = resp.headers().get(RETRY_REASON_HEADER);
                return Err(match reason.map(|v| v.as_bytes()) {
                    Some(b"busy") => PeerError::Busy,
                    Some(b"piece-busy") => PeerError::PieceBusy,
                    _ => PeerError::NotReady,
                });
            }
            code => return Err(PeerError::Server(code)),
        }
        let digest = resp
            .headers()
            .get(PIECE_DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| PeerError::Malformed("piece without digest header".into()))?;
        let data = resp.bytes().await.map_err(Self::classify)?;
        Ok((data, digest))
    }

    /// Asks a seed peer to download a task (the scheduler elected it).
    pub async fn trigger_seed(
        &self,
        base: &str,
        request: &crate::task_request::TaskRequest,
    ) -> Result<(), PeerError> {
        let resp = self
            .http
            .post(format!("{base}/api/v1/tasks"))
            .timeout(Duration::from_secs(10))
            .json(request)
            .send()
            .await
            .map_err(Self::classify)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(PeerError::Server(resp.status().as_u16()))
        }
    }
}
