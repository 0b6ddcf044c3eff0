//! Fetching pieces and task shapes from parent peers over HTTP.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::liveness::{self, Liveness, CHECK_EVERY, PROBE_ANSWER};

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
    /// The parent answered, then its body broke off: it may be gone, or it
    /// may have cut one piece (e.g. found damaged on its disk) and be fine
    /// otherwise, so this is not the proof of absence a refused connection
    /// is.
    #[error("parent broke off the piece: {0}")]
    BrokenOff(String),
    #[error("parent timed out")]
    Timeout,
    #[error("parent went silent: no answer or no bytes for {0:?}")]
    Stalled(Duration),
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
    #[error("piece {piece} from parent fails the digest recorded from the origin (the parent claimed {claimed})")]
    Forged { piece: u32, claimed: String },
    #[error("piece {0} has no recorded digest yet; taken from the source only")]
    Unverified(u32),
    #[error("parent sent a malformed answer: {0}")]
    Malformed(String),
    #[error("parent is not the member the scheduler named: {0}")]
    Impostor(String),
}

impl PeerError {
    /// Soft failures say "not now", not "this parent is broken".
    pub fn is_soft(&self) -> bool {
        matches!(
            self,
            PeerError::NotReady
                | PeerError::Busy
                | PeerError::PieceBusy
                | PeerError::Unverified(_)
                | PeerError::Stalled(_)
        )
    }

    pub fn reason(&self) -> proto::FailureReason {
        use proto::FailureReason as R;
        match self {
            PeerError::Connect(_) => R::Connect,
            PeerError::Timeout => R::Timeout,
            PeerError::NotFound => R::NotFound,
            PeerError::DigestMismatch | PeerError::Forged { .. } => R::DigestMismatch,
            PeerError::Server(_) | PeerError::Malformed(_) | PeerError::BrokenOff(_) => {
                R::ServerError
            }
            PeerError::Impostor(_) => R::DigestMismatch,
            PeerError::NotReady
            | PeerError::Busy
            | PeerError::PieceBusy
            | PeerError::Unverified(_)
            | PeerError::Stalled(_) => R::Slow,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            PeerError::Connect(_) => "peer_connect",
            PeerError::BrokenOff(_) => "peer_broken_off",
            PeerError::Timeout => "peer_timeout",
            PeerError::Stalled(_) => "peer_stalled",
            PeerError::NotReady => "peer_not_ready",
            PeerError::Busy => "peer_busy",
            PeerError::PieceBusy => "peer_piece_busy",
            PeerError::NotFound => "peer_not_found",
            PeerError::Server(_) => "peer_server_error",
            PeerError::DigestMismatch => "peer_digest_mismatch",
            PeerError::Forged { .. } => "peer_forged",
            PeerError::Unverified(_) => "peer_unverified",
            PeerError::Malformed(_) => "peer_malformed",
            PeerError::Impostor(_) => "peer_impostor",
        }
    }
}

/// A body of exactly `expected` bytes, read without holding more.
/// A parent that holds a piece answers at once (it waits only for pieces
/// it is still fetching); one silent this long may be frozen or cut off:
/// the piece is asked elsewhere and the parent rests a while (a soft
/// failure: under load a live parent can be this slow too).
pub const HOLDER_ANSWER: Duration = Duration::from_secs(1);

/// Once a piece's bytes flow, a gap this long means the parent is gone.
/// Parents pace uploads in slices small enough to stay well inside it.
pub const BODY_IDLE: Duration = Duration::from_secs(1);

/// A piece's body as it arrives, cut off once past the piece's length: a
/// parent cannot make this daemon take more than one piece.
pub struct PieceBody {
    resp: reqwest::Response,
    expected: u64,
    seen: u64,
    /// Bytes from the parent show it alive to asks waiting on it.
    liveness: Arc<Liveness>,
    base: String,
}

impl std::fmt::Debug for PieceBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceBody")
            .field("expected", &self.expected)
            .field("seen", &self.seen)
            .finish()
    }
}

impl PieceBody {
    fn new(
        resp: reqwest::Response,
        expected: u64,
        liveness: Arc<Liveness>,
        base: &str,
    ) -> Result<Self, PeerError> {
        if let Some(announced) = resp.content_length() {
            if announced != expected {
                return Err(Self::wrong_length(announced, expected));
            }
        }
        Ok(PieceBody {
            resp,
            expected,
            seen: 0,
            liveness,
            base: base.to_string(),
        })
    }

    fn wrong_length(got: u64, expected: u64) -> PeerError {
        PeerError::Malformed(format!("piece body of {got} bytes, expected {expected}"))
    }

    /// The next bytes; `None` at the end, which must be the piece's end.
    /// A parent that stops sending for [`BODY_IDLE`] is timed out.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, PeerError> {
        let next = tokio::time::timeout(BODY_IDLE, self.resp.chunk())
            .await
            .map_err(|_| PeerError::Stalled(BODY_IDLE))?;
        match next.map_err(PeerClient::classify_body)? {
            Some(chunk) => {
                self.liveness.heard(&self.base, Instant::now());
                self.seen += chunk.len() as u64;
                if self.seen > self.expected {
                    return Err(Self::wrong_length(self.seen, self.expected));
                }
                Ok(Some(chunk))
            }
            None if self.seen == self.expected => Ok(None),
            None => Err(Self::wrong_length(self.seen, self.expected)),
        }
    }
}

#[derive(Clone)]
pub struct PeerClient {
    /// To parents: nodes and seeds of this cluster.
    http: reqwest::Client,
    /// To seeds only: a seed request may carry a caller's credentials,
    /// which must reach no other member.
    seeds: reqwest::Client,
    scheme: &'static str,
    /// Whether a parent's certificate must name the host the scheduler
    /// named (with cluster identity).
    check_identity: bool,
    piece_timeout: Duration,
    liveness: Arc<Liveness>,
}

impl PeerClient {
    pub fn new(
        piece_timeout: Duration,
        tls: Option<&identity::MemberTls>,
    ) -> Result<Self, reqwest::Error> {
        use identity::Role;
        let client = |servers: &[Role]| {
            let builder = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .pool_max_idle_per_host(16)
                // Below the parents' idle deadline (30 s by default), so a
                // pooled connection is not reused just as the parent drops it.
                .pool_idle_timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .no_proxy();
            match tls {
                Some(tls) => builder
                    .use_preconfigured_tls((*tls.client_config(servers)).clone())
                    .tls_info(true)
                    .build(),
                None => builder.build(),
            }
        };
        Ok(PeerClient {
            http: client(&[Role::Node, Role::Seed])?,
            seeds: client(&[Role::Seed])?,
            scheme: if tls.is_some() { "https" } else { "http" },
            check_identity: tls.is_some(),
            piece_timeout,
            liveness: Arc::default(),
        })
    }

    /// `http` or `https`, as parents of this cluster are reached.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The parent's certificate names `host_id`: a member cannot answer in
    /// the place of another one the scheduler named.
    fn check_parent(&self, resp: &reqwest::Response, host_id: &str) -> Result<(), PeerError> {
        if !self.check_identity {
            return Ok(());
        }
        let named = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .ok_or_else(|| PeerError::Impostor("no certificate".into()))
            .and_then(|der| {
                identity::Identity::from_der(der).map_err(|e| PeerError::Impostor(e.to_string()))
            })?;
        if named.name == host_id {
            Ok(())
        } else {
            Err(PeerError::Impostor(format!(
                "certificate of {named}, expected host {host_id}"
            )))
        }
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

    /// An error reading a body the parent already began to send.
    fn classify_body(e: reqwest::Error) -> PeerError {
        if e.is_timeout() {
            PeerError::Timeout
        } else {
            PeerError::BrokenOff(e.to_string())
        }
    }

    /// Asks a parent (`base` is its `ip:port`) for the task's shape, letting it wait up to `wait` for
    /// its own origin answer.
    pub async fn shape(
        &self,
        base: &str,
        host_id: &str,
        task_id: &str,
        wait: Duration,
    ) -> Result<TaskShapeResponse, PeerError> {
        let url = format!(
            "{}://{base}/api/v1/tasks/{task_id}/shape?wait_ms={}",
            self.scheme,
            wait.as_millis()
        );
        let resp = self
            .http
            .get(url)
            .timeout(wait + Duration::from_secs(5))
            .send()
            .await
            .map_err(Self::classify)?;
        self.check_parent(&resp, host_id)?;
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

    /// Fetches one piece of `expected_len` bytes; returns its bytes and the
    /// digest the parent recorded. The caller takes the body as it arrives
    /// and verifies the bytes. A parent without an answer (headers) within
    /// `answer_within` is timed out, and so is one that shows no life for
    /// a liveness check meanwhile (see [`liveness`]).
    pub async fn piece(
        &self,
        base: &str,
        host_id: &str,
        task_id: &str,
        index: u32,
        expected_len: u64,
        answer_within: Duration,
    ) -> Result<(PieceBody, String), PeerError> {
        let url = format!(
            "{}://{base}/api/v1/tasks/{task_id}/pieces/{index}",
            self.scheme
        );
        let request = self.http.get(url).timeout(self.piece_timeout).send();
        let resp = liveness::await_answer(
            request,
            answer_within,
            |now| self.liveness.heard_within(base, CHECK_EVERY, now),
            || self.probe(base, task_id),
        )
        .await
        .map_err(|_| PeerError::Stalled(CHECK_EVERY.min(answer_within)))?
        .map_err(Self::classify)?;
        self.liveness.heard(base, Instant::now());
        self.check_parent(&resp, host_id)?;
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
        Ok((
            PieceBody::new(resp, expected_len, self.liveness.clone(), base)?,
            digest,
        ))
    }

    /// Whether the parent answers at all within [`PROBE_ANSWER`]: a task
    /// shape without waiting is the cheapest question it answers.
    async fn probe(&self, base: &str, task_id: &str) -> bool {
        let url = format!(
            "{}://{base}/api/v1/tasks/{task_id}/shape?wait_ms=0",
            self.scheme
        );
        let answered = self
            .http
            .get(url)
            .timeout(PROBE_ANSWER)
            .send()
            .await
            .is_ok();
        if answered {
            self.liveness.heard(base, Instant::now());
        }
        answered
    }

    /// Asks a seed peer to download a task (the scheduler elected it).
    pub async fn trigger_seed(
        &self,
        base: &str,
        host_id: &str,
        request: &crate::task_request::TaskRequest,
    ) -> Result<(), PeerError> {
        let resp = self
            .seeds
            .post(format!("{}://{base}/api/v1/tasks", self.scheme))
            .timeout(Duration::from_secs(10))
            .json(request)
            .send()
            .await
            .map_err(Self::classify)?;
        self.check_parent(&resp, host_id)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(PeerError::Server(resp.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A parent that answers every request with `head` and then `body`
    /// bytes of zeros (or forever, with `None`).
    async fn parent(head: &'static str, body: Option<usize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![0u8; 64 * 1024];
                    let mut left = body.unwrap_or(usize::MAX);
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if conn.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                });
            }
        });
        addr.to_string()
    }

    /// A frozen parent: connections are accepted (by the kernel, as for a
    /// SIGSTOPped process) and never answered.
    async fn frozen_parent() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        (addr, holder)
    }

    #[tokio::test]
    async fn a_frozen_parent_is_left_even_when_it_may_wait_for_the_piece() {
        let client = PeerClient::new(Duration::from_secs(60), None).unwrap();
        let (base, holder) = frozen_parent().await;
        let started = std::time::Instant::now();
        // 30 s is what a parent still fetching the piece may take.
        let err = client
            .piece(&base, "h", "t", 0, 1024, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Stalled(_)), "{err}");
        // One unanswered liveness check, not the 30 s.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        holder.abort();
    }

    async fn read(body: Result<(PieceBody, String), PeerError>) -> Result<Vec<u8>, PeerError> {
        let (mut body, _) = body?;
        let mut data = Vec::new();
        while let Some(chunk) = body.chunk().await? {
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    #[tokio::test]
    async fn a_parent_cannot_make_a_child_buffer_more_than_a_piece() {
        let client = PeerClient::new(Duration::from_secs(10), None).unwrap();
        let digest = "HTTP/1.1 200 OK\r\nx-dragonfly-piece-digest: sha256:00\r\n";
        // Announced longer than the piece: refused before reading.
        let announced: &'static str =
            Box::leak(format!("{digest}content-length: 1073741824\r\n\r\n").into_boxed_str());
        let base = parent(announced, Some(1 << 20)).await;
        let err = read(client.piece(&base, "h", "t", 0, 1024, HOLDER_ANSWER).await)
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Malformed(_)), "{err}");
        // No length, endless body: cut off once past the piece.
        let endless: &'static str =
            Box::leak(format!("{digest}connection: close\r\n\r\n").into_boxed_str());
        let base = parent(endless, None).await;
        let err = read(client.piece(&base, "h", "t", 0, 1024, HOLDER_ANSWER).await)
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Malformed(_)), "{err}");
        // Exactly the piece: fine.
        let exact: &'static str =
            Box::leak(format!("{digest}content-length: 1024\r\n\r\n").into_boxed_str());
        let base = parent(exact, Some(1024)).await;
        let data = read(client.piece(&base, "h", "t", 0, 1024, HOLDER_ANSWER).await)
            .await
            .unwrap();
        assert_eq!(data.len(), 1024);
    }

    #[tokio::test]
    async fn a_body_broken_off_is_told_apart_from_a_refused_connection() {
        let client = PeerClient::new(Duration::from_secs(10), None).unwrap();
        // Half the announced piece, then the connection closes.
        let half: &'static str = "HTTP/1.1 200 OK\r\nx-dragonfly-piece-digest: sha256:00\r\ncontent-length: 1024\r\n\r\n";
        let base = parent(half, Some(512)).await;
        let err = read(client.piece(&base, "h", "t", 0, 1024, HOLDER_ANSWER).await)
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::BrokenOff(_)), "{err}");
        assert_eq!(err.reason(), proto::FailureReason::ServerError);
        // Nobody listening: refused, the scheduler's proof of absence.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = closed.local_addr().unwrap().to_string();
        drop(closed);
        let err = read(client.piece(&base, "h", "t", 0, 1024, HOLDER_ANSWER).await)
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Connect(_)), "{err}");
        assert_eq!(err.reason(), proto::FailureReason::Connect);
    }
}
