//! Back-to-source: fetch a task's missing pieces from the origin with ranged
//! GETs, cutting the byte stream into pieces, hashing and storing each one
//! as it completes so peers can pipeline from us while we download.
//!
//! Redirects are followed (registries send blob GETs to object storage);
//! reqwest drops `Authorization` when a redirect leaves the original host.

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::piece::{piece_count, piece_length_for};
use crate::store::{PieceWriter, StoredTask, TaskFailure};

const MAX_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A request that only asks for the length answers quickly or not at all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers never forwarded to the origin: hop-by-hop ones, and the ones this
/// client sets itself.
const DROPPED_HEADERS: &[&str] = &[
    "host",
    "range",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "accept-encoding",
];

#[derive(Clone)]
pub struct SourceClient {
    http: reqwest::Client,
    /// Clients for registries with their own CA or skip-verify setting
    /// (`mirror.registries`), by `host[:port]`.
    per_host: Arc<std::collections::HashMap<String, reqwest::Client>>,
    /// Counts origin requests per task when set.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// What happened to one ranged GET.
enum Attempt {
    Done,
    /// Transient failure; retry from the first missing piece.
    Retry(String),
}

impl SourceClient {
    /// A client that may reach any destination (tests against loopback
    /// servers); the daemon's comes from [`SourceClient::with_registry_tls`].
    pub fn new() -> Result<Self, reqwest::Error> {
        let anywhere = crate::destination::DestinationPolicy::new(&[
            "0.0.0.0/0".to_string(),
            "::/0".to_string(),
        ])
        .unwrap_or_default();
        Ok(SourceClient {
            http: Self::builder(&Arc::new(anywhere)).build()?,
            per_host: Arc::default(),
            metrics: None,
        })
    }

    /// A client that also trusts each registry's own CA (or skips
    /// verification) as the mirror settings say, so blobs download from
    /// the same registries whose manifests the mirror reaches.
    pub fn with_registry_tls(
        mirror: &crate::mirror::config::MirrorConfig,
    ) -> Result<Self, crate::mirror::upstream::UpstreamError> {
        use crate::mirror::upstream::{tls_overrides, with_tls, UpstreamError};
        let build = |b: reqwest::ClientBuilder, host: &str| {
            b.build().map_err(|e| UpstreamError::Tls {
                host: host.to_string(),
                message: e.to_string(),
            })
        };
        let destinations = mirror.destinations();
        let mut per_host = std::collections::HashMap::new();
        for (host, settings) in tls_overrides(mirror) {
            let builder = Self::builder(&destinations);
            let client = build(with_tls(builder, &host, settings)?, &host)?;
            per_host.insert(host, client);
        }
        Ok(SourceClient {
            http: build(Self::builder(&destinations), "*")?,
            per_host: Arc::new(per_host),
            metrics: None,
        })
    }

    /// Counts every origin request in `metrics`, per task.
    pub fn counting(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// One counted GET to the origin, optionally ranged; a transport
    /// error comes back as the reason to retry.
    async fn send_get(
        &self,
        task: &StoredTask,
        url: &str,
        headers: &HeaderMap,
        range: Option<String>,
    ) -> Result<reqwest::Response, String> {
        self.count_request(task);
        let mut request = self.client_for(url).get(url).headers(headers.clone());
        if let Some(range) = range {
            request = request.header(RANGE, range);
        }
        request.send().await.map_err(|e| e.to_string())
    }

    fn count_request(&self, task: &StoredTask) {
        if let Some(metrics) = &self.metrics {
            metrics.origin_request(&task.id);
        }
    }

    fn builder(
        destinations: &Arc<crate::destination::DestinationPolicy>,
    ) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .no_gzip();
        destinations.apply(builder, 10)
    }

    /// The client for `url`'s host.
    fn client_for(&self, url: &str) -> &reqwest::Client {
        if self.per_host.is_empty() {
            return &self.http;
        }
        let Ok(parsed) = url::Url::parse(url) else {
            return &self.http;
        };
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return &self.http,
        };
        self.per_host.get(&host).unwrap_or(&self.http)
    }

    fn headers(caller: &BTreeMap<String, String>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in caller {
            if DROPPED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                map.append(n, v);
            }
        }
        map
    }

    /// Downloads every piece `task` is missing. `on_piece(index, bytes)` is
    /// called after each piece is stored.
    pub async fn fetch_missing(
        &self,
        task: &Arc<StoredTask>,
        url: &str,
        caller_headers: &BTreeMap<String, String>,
        on_piece: &(dyn Fn(u32, u64) + Send + Sync),
    ) -> Result<u64, TaskFailure> {
        let headers = Self::headers(caller_headers);
        with_retries(url, || async {
            let outcome = if task.with_meta(|m| m.shape_known()) {
                self.fetch_known_shape(task, url, &headers, on_piece)
                    .await?
            } else {
                self.fetch_unknown_shape(task, url, &headers, on_piece)
                    .await?
            };
            Ok(match outcome {
                Attempt::Done => Ok(()),
                Attempt::Retry(reason) => Err(reason),
            })
        })
        .await?;
        task.with_meta(|m| m.content_length)
            .ok_or_else(|| TaskFailure::Internal {
                message: "origin finished without a length".into(),
            })
    }

    /// First contact: a plain GET tells the length, from which the piece
    /// length follows; the body is stored as it arrives.
    async fn fetch_unknown_shape(
        &self,
        task: &Arc<StoredTask>,
        url: &str,
        headers: &HeaderMap,
        on_piece: &(dyn Fn(u32, u64) + Send + Sync),
    ) -> Result<Attempt, TaskFailure> {
        let resp = match self.send_get(task, url, headers, None).await {
            Ok(resp) => resp,
            Err(reason) => return Ok(Attempt::Retry(reason)),
        };
        let status = resp.status();
        if let Some(verdict) = judge_status(status, &resp) {
            return verdict;
        }
        let content_length = content_length(resp.headers());
        let piece_length = piece_length_for(content_length);
        task.set_shape(content_length, piece_length)
            .map_err(internal)?;
        self.store_body(task, resp, 0, content_length, on_piece)
            .await
    }

    /// Ranged GETs for each run of consecutive missing pieces.
    async fn fetch_known_shape(
        &self,
        task: &Arc<StoredTask>,
        url: &str,
        headers: &HeaderMap,
        on_piece: &(dyn Fn(u32, u64) + Send + Sync),
    ) -> Result<Attempt, TaskFailure> {
        let missing = task.with_meta(|m| m.missing_pieces());
        for (first, last) in runs(&missing) {
            if let Attempt::Retry(reason) = self
                .fetch_run_once(task, url, headers, first, last, on_piece)
                .await?
            {
                return Ok(Attempt::Retry(reason));
            }
        }
        if task.with_meta(|m| m.missing_pieces().is_empty()) {
            Ok(Attempt::Done)
        } else {
            Ok(Attempt::Retry("pieces still missing after a pass".into()))
        }
    }

    /// Pieces `first..=last` of a task whose shape is known, in one ranged
    /// GET, retried with backoff on transient failures. Lazy pulls fetch
    /// exactly the pieces readers touch this way.
    pub async fn fetch_run(
        &self,
        task: &Arc<StoredTask>,
        url: &str,
        caller_headers: &BTreeMap<String, String>,
        (first, last): (u32, u32),
        on_piece: &(dyn Fn(u32, u64) + Send + Sync),
    ) -> Result<(), TaskFailure> {
        let headers = Self::headers(caller_headers);
        with_retries(url, || async {
            Ok(
                match self
                    .fetch_run_once(task, url, &headers, first, last, on_piece)
                    .await?
                {
                    Attempt::Done => Ok(()),
                    Attempt::Retry(reason) => Err(reason),
                },
            )
        })
        .await
    }

    /// Learns a task's length without downloading it: a HEAD, else a
    /// one-byte range whose `Content-Range` tells the total.
    pub async fn learn_shape(
        &self,
        task: &Arc<StoredTask>,
        url: &str,
        caller_headers: &BTreeMap<String, String>,
    ) -> Result<u64, TaskFailure> {
        let headers = Self::headers(caller_headers);
        let length = with_retries(url, || self.probe_length(task, url, &headers)).await?;
        task.set_shape(Some(length), piece_length_for(Some(length)))
            .map_err(internal)?;
        Ok(length)
    }

    /// `Ok(Ok(length))`, `Ok(Err(transient reason))`, or a final failure.
    async fn probe_length(
        &self,
        task: &StoredTask,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<Result<u64, String>, TaskFailure> {
        let client = self.client_for(url);
        self.count_request(task);
        let head = match client
            .head(url)
            .headers(headers.clone())
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => return Ok(Err(e.to_string())),
        };
        match judge_status(head.status(), &head) {
            Some(Ok(Attempt::Retry(reason))) => return Ok(Err(reason)),
            // Some origins (signed URLs) refuse HEAD but serve GET: the
            // ranged GET below decides.
            Some(Err(_)) if !matches!(head.status().as_u16(), 401 | 404) => {}
            Some(Err(failure)) => return Err(failure),
            _ => {}
        }
        if head.status().is_success() {
            if let Some(length) = content_length(head.headers()) {
                return Ok(Ok(length));
            }
        }
        self.count_request(task);
        let resp = match client
            .get(url)
            .headers(headers.clone())
            .header(RANGE, "bytes=0-0")
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => return Ok(Err(e.to_string())),
        };
        match judge_status(resp.status(), &resp) {
            Some(Err(failure)) => return Err(failure),
            Some(Ok(Attempt::Retry(reason))) => return Ok(Err(reason)),
            _ => {}
        }
        // 206 names the total; a 200 (range ignored) is the whole body.
        let total = if resp.status() == StatusCode::PARTIAL_CONTENT {
            resp.headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, total)| total.parse::<u64>().ok())
        } else {
            content_length(resp.headers())
        };
        Ok(total.ok_or_else(|| format!("origin tells no length ({})", resp.status())))
    }

    async fn fetch_run_once(
        &self,
        task: &Arc<StoredTask>,
        url: &str,
        headers: &HeaderMap,
        first: u32,
        last: u32,
        on_piece: &(dyn Fn(u32, u64) + Send + Sync),
    ) -> Result<Attempt, TaskFailure> {
        let (content_length, piece_length) =
            task.with_meta(|m| (m.content_length.unwrap_or(0), m.piece_length));
        let start = first as u64 * piece_length as u64;
        let end = ((last as u64 + 1) * piece_length as u64).min(content_length);
        if start >= end {
            return Ok(Attempt::Done);
        }
        let range = format!("bytes={}-{}", start, end - 1);
        let resp = match self.send_get(task, url, headers, Some(range)).await {
            Ok(resp) => resp,
            Err(reason) => return Ok(Attempt::Retry(reason)),
        };
        let status = resp.status();
        if let Some(verdict) = judge_status(status, &resp) {
            return verdict;
        }
        // A 200 means the origin ignored the range: skip to `start`.
        let body_start = if status == StatusCode::PARTIAL_CONTENT {
            check_content_range(&resp, start, content_length)?;
            start
        } else {
            0
        };
        self.store_body_from(task, resp, body_start, start, end, on_piece)
            .await
    }

    async fn store_body(
        &self,
        task: &Arc<StoredTask>,
        resp: reqwest::Response,
        start: u64,
        content_length: Option<u64>,
        on_piece: &(dyn Fn(u32, u64) + Send + Sync),
    ) -> Result<Attempt, TaskFailure> {
        let end = content_length.unwrap_or(u64::MAX);
        self.store_body_from(task, resp, start, start, end, on_piece)
            .await
    }

    /// Streams `resp` (whose first byte is at `body_start`) into the pieces
    /// covering `[start, end)`; bytes before `start` are skipped.
    async fn store_body_from(
        &self,
        task: &Arc<StoredTask>,
        resp: reqwest::Response,
        body_start: u64,
        start: u64,
        end: u64,
        on_piece: &(dyn Fn(u32, u64) + Send + Sync),
    ) -> Result<Attempt, TaskFailure> {
        let piece_length = task.with_meta(|m| m.piece_length) as u64;
        let mut offset = body_start;
        let mut sink = PieceSink::new(task, (start / piece_length) as u32, piece_length, on_piece);
        let mut body = resp.bytes_stream();
        while offset < end {
            let chunk = match body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Ok(Attempt::Retry(format!("body interrupted: {e}"))),
                None => break,
            };
            let mut chunk: Bytes = chunk;
            if offset < start {
                let skip = ((start - offset) as usize).min(chunk.len());
                let _ = chunk.split_to(skip);
                offset += skip as u64;
            }
            chunk.truncate(((end - offset) as usize).min(chunk.len()));
            offset += chunk.len() as u64;
            sink.push(chunk).await?;
        }
        if end == u64::MAX {
            // Length unknown up front: the end of the body is the end.
            task.set_shape(Some(offset), piece_length as u32)
                .map_err(internal)?;
        } else if offset < end {
            return Ok(Attempt::Retry(format!(
                "body ended at {offset}, expected {end}"
            )));
        }
        sink.end().await?;
        let total = task.with_meta(|m| m.content_length.unwrap_or(offset));
        let pieces = piece_count(total, piece_length as u32);
        tracing::debug!(task = %task.id, total, pieces, "origin body stored");
        Ok(Attempt::Done)
    }
}

/// Cuts a body's bytes into pieces, each written to disk in chunks as it
/// comes and hashed on the way; a piece already stored is skipped.
struct PieceSink<'a> {
    task: &'a Arc<StoredTask>,
    piece_length: u64,
    index: u32,
    /// Bytes of the current piece seen so far.
    seen: u64,
    /// `None` while skipping a piece already stored.
    writer: Option<PieceWriter>,
    on_piece: &'a (dyn Fn(u32, u64) + Send + Sync),
}

impl<'a> PieceSink<'a> {
    fn new(
        task: &'a Arc<StoredTask>,
        first: u32,
        piece_length: u64,
        on_piece: &'a (dyn Fn(u32, u64) + Send + Sync),
    ) -> Self {
        PieceSink {
            task,
            piece_length,
            index: first,
            seen: 0,
            writer: None,
            on_piece,
        }
    }

    async fn push(&mut self, mut chunk: Bytes) -> Result<(), TaskFailure> {
        while !chunk.is_empty() {
            if self.seen == 0 {
                self.writer = self.task.begin_piece(self.index).await.map_err(internal)?;
            }
            let take = ((self.piece_length - self.seen) as usize).min(chunk.len());
            let part = chunk.split_to(take);
            self.seen += take as u64;
            if let Some(writer) = &mut self.writer {
                writer.push(&part).await.map_err(internal)?;
            }
            if self.seen == self.piece_length {
                self.finish_piece().await?;
            }
        }
        Ok(())
    }

    async fn finish_piece(&mut self) -> Result<(), TaskFailure> {
        if let Some(writer) = self.writer.take() {
            let len = writer.len();
            writer.finish().await.map_err(internal)?;
            (self.on_piece)(self.index, len);
        }
        self.index += 1;
        self.seen = 0;
        Ok(())
    }

    /// The body ended: a last piece shorter than a piece length is done
    /// too (its length must match the task's shape).
    async fn end(&mut self) -> Result<(), TaskFailure> {
        if self.seen > 0 {
            self.finish_piece().await?;
        }
        Ok(())
    }
}

/// `None`: the status allows reading the body. Otherwise the verdict:
/// 5xx and 429 retry, any other error status is final.
fn judge_status(
    status: StatusCode,
    resp: &reqwest::Response,
) -> Option<Result<Attempt, TaskFailure>> {
    if status.is_success() {
        return None;
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Some(Ok(Attempt::Retry(format!("origin answered {status}"))));
    }
    Some(Err(TaskFailure::Origin {
        status: status.as_u16(),
        message: format!("{} {}", status, resp.url()),
    }))
}

fn check_content_range(
    resp: &reqwest::Response,
    start: u64,
    content_length: u64,
) -> Result<(), TaskFailure> {
    let Some(value) = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    // bytes START-END/TOTAL
    let parsed = value
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .and_then(|(range, total)| Some((range.split_once('-')?.0.parse::<u64>().ok()?, total)));
    match parsed {
        Some((got_start, total)) if got_start == start && (total == "*" || total.parse() == Ok(content_length)) => Ok(()),
        _ => Err(TaskFailure::Internal {
            message: format!("origin answered Content-Range {value:?} for a range starting at {start}; the object changed?"),
        }),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Runs `attempt` until it succeeds, fails for good, or has failed
/// transiently `MAX_ATTEMPTS` times, backing off exponentially between
/// tries. `attempt` answers `Ok(Ok(value))`, `Ok(Err(transient reason))`
/// or `Err(final failure)`.
async fn with_retries<T, F, Fut>(url: &str, mut attempt: F) -> Result<T, TaskFailure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>, TaskFailure>>,
{
    let mut failures = 0;
    loop {
        let reason = match attempt().await? {
            Ok(value) => return Ok(value),
            Err(reason) => reason,
        };
        failures += 1;
        if failures >= MAX_ATTEMPTS {
            return Err(TaskFailure::Internal {
                message: format!("origin failed {failures} times, last: {reason}"),
            });
        }
        let backoff = FIRST_BACKOFF * 2u32.pow(failures - 1);
        tracing::warn!(url, attempt = failures, ?backoff, %reason, "origin request failed, retrying");
        tokio::time::sleep(backoff).await;
    }
}

/// Consecutive runs in a sorted list: [1,2,3,7,8] -> [(1,3),(7,8)].
pub fn runs(sorted: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &i in sorted {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == i => *last = i,
            _ => out.push((i, i)),
        }
    }
    out
}

fn internal(e: impl ToString) -> TaskFailure {
    TaskFailure::Internal {
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_with_their_own_tls_get_their_own_client() {
        use crate::mirror::config::{MirrorConfig, RegistryConfig};
        let mut mirror = MirrorConfig::default();
        let skip = RegistryConfig {
            insecure_skip_verify: true,
            ..Default::default()
        };
        mirror.registries.insert("docker.io".into(), skip.clone());
        mirror.registries.insert("Reg.Example:5443".into(), skip);
        mirror
            .registries
            .insert("plain.example".into(), RegistryConfig::default());
        let client = SourceClient::with_registry_tls(&mirror).unwrap();
        let mut hosts: Vec<&String> = client.per_host.keys().collect();
        hosts.sort();
        assert_eq!(hosts, ["reg.example:5443", "registry-1.docker.io"]);
        let own = client.client_for("https://reg.example:5443/v2/x/blobs/sha256:0");
        assert!(std::ptr::eq(own, &client.per_host["reg.example:5443"]));
        assert!(std::ptr::eq(
            client.client_for("https://plain.example/x"),
            &client.http
        ));
        assert!(std::ptr::eq(client.client_for("not a url"), &client.http));
        let missing_ca = RegistryConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        mirror.registries.insert("ca.example".into(), missing_ca);
        assert!(SourceClient::with_registry_tls(&mirror).is_err());
    }

    #[test]
    fn runs_of_missing_pieces() {
        assert_eq!(runs(&[1, 2, 3, 7, 8, 10]), vec![(1, 3), (7, 8), (10, 10)]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut caller = BTreeMap::new();
        caller.insert("Authorization".to_string(), "Bearer x".to_string());
        caller.insert("Range".to_string(), "bytes=0-1".to_string());
        caller.insert("Connection".to_string(), "close".to_string());
        let headers = SourceClient::headers(&caller);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["authorization"], "Bearer x");
    }
}

#[cfg(test)]
mod origin_tests {
    //! Against real HTTP servers on loopback: redirects, ranges, retries.
    use super::*;
    use crate::store::{Store, Watermarks};
    use axum::extract::State;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    async fn serve(addr: &str, app: axum::Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let bound = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        bound
    }

    fn task(dir: &std::path::Path) -> Arc<StoredTask> {
        let store = Store::open(dir, 1 << 30, Watermarks::default()).unwrap();
        store
            .get_or_create(&"c".repeat(64), "http://o", None)
            .unwrap()
    }

    #[tokio::test]
    async fn redirect_to_another_host_drops_authorization() {
        // Object storage on another host records whether it saw credentials.
        let seen: Arc<Mutex<Option<bool>>> = Arc::default();
        let storage = axum::Router::new()
            .route(
                "/blob",
                get(|State(seen): State<Arc<Mutex<Option<bool>>>>, headers: AxumHeaders| async move {
                    *seen.lock().unwrap() = Some(headers.contains_key("authorization"));
                    "payload"
                }),
            )
            .with_state(seen.clone());
        let storage_addr = serve("127.0.0.2:0", storage).await;
        let registry = axum::Router::new().route(
            "/v2/blob",
            get(move |headers: AxumHeaders| async move {
                if headers.get("authorization").is_none() {
                    return AxumStatus::UNAUTHORIZED.into_response();
                }
                Redirect::temporary(&format!("http://{storage_addr}/blob")).into_response()
            }),
        );
        let registry_addr = serve("127.0.0.1:0", registry).await;

        let dir = tempfile::tempdir().unwrap();
        let task = task(dir.path());
        let headers: BTreeMap<String, String> =
            [("Authorization".into(), "Bearer secret".into())].into();
        let client = SourceClient::new().unwrap();
        let length = client
            .fetch_missing(
                &task,
                &format!("http://{registry_addr}/v2/blob"),
                &headers,
                &|_, _| {},
            )
            .await
            .unwrap();
        assert_eq!(length, 7);
        assert_eq!(
            *seen.lock().unwrap(),
            Some(false),
            "credentials must not follow the redirect"
        );
        let (piece, _) = task.read_piece(0).await.unwrap();
        assert_eq!(&piece[..], b"payload");
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_client_errors_are_final() {
        let calls = Arc::new(AtomicU32::new(0));
        let app = axum::Router::new()
            .route(
                "/flaky",
                get(|State(calls): State<Arc<AtomicU32>>| async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        AxumStatus::SERVICE_UNAVAILABLE.into_response()
                    } else {
                        "finally".into_response()
                    }
                }),
            )
            .route("/gone", get(|| async { AxumStatus::NOT_FOUND }))
            .with_state(calls.clone());
        let addr = serve("127.0.0.1:0", app).await;
        let client = SourceClient::new().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let flaky = task(dir.path());
        let length = client
            .fetch_missing(
                &flaky,
                &format!("http://{addr}/flaky"),
                &BTreeMap::new(),
                &|_, _| {},
            )
            .await
            .unwrap();
        assert_eq!(length, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let dir = tempfile::tempdir().unwrap();
        let gone = task(dir.path());
        let err = client
            .fetch_missing(
                &gone,
                &format!("http://{addr}/gone"),
                &BTreeMap::new(),
                &|_, _| {},
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, TaskFailure::Origin { status: 404, .. }),
            "{err:?}"
        );
    }
}
