//! Lazy pulls through the mirror: three nodes replay what an eStargz
//! snapshotter sends (a `bytes=0-1` probe, HEAD, the footer and TOC near the
//! end, a multi-range GET, then the same small ranges everywhere) against a
//! registry that counts what it serves. The swarm must take each touched
//! piece from the registry once for all nodes, not the whole blob per node
//! and not one registry request per node per range.
//!
//! The clients send no `ns` and no custom header (as the stargz snapshotter
//! does), so the dfdaemons name the registry with `--default-registry`. A
//! small recording hop in front of the registry notes each request's method
//! and `Range`; bytes are counted by the registry itself.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use dragonfly_e2e::origin::random_bytes;
use dragonfly_e2e::procs::{task_status, DaemonProc, DaemonSpec, SchedulerProc};
use dragonfly_e2e::registry::FakeRegistry;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const BLOB_LEN: u64 = 48 * MIB;
/// The ranges every node asks for, 50 KB each.
const SHARED: [u64; 4] = [
    9 * MIB + 123,
    9 * MIB + 300_000,
    30 * MIB + 7,
    30 * MIB + 1_000_000,
];
const SHARED_LEN: u64 = 50_000;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 45, last))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// One request that reached the registry: method and byte span `[start, end)`
/// (the whole blob without `Range`).
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    start: u64,
    end: u64,
    range: Option<String>,
}

#[derive(Clone)]
struct Recorder {
    upstream: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    http: reqwest::Client,
}

/// A hop in front of the registry that records blob requests and relays
/// them unchanged.
async fn start_recorder(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let rec = Recorder {
        upstream,
        seen: Arc::default(),
        http: client(),
    };
    let seen = rec.seen.clone();
    let app = axum::Router::new().fallback(relay).with_state(rec);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

async fn relay(State(rec): State<Recorder>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let range = request
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if path.contains("/blobs/") {
        let (start, end) = range
            .as_deref()
            .and_then(|r| span(r, BLOB_LEN))
            .unwrap_or((0, BLOB_LEN));
        rec.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            start,
            end,
            range: range.clone(),
        });
    }
    let mut req = rec
        .http
        .request(method, format!("http://{}{path}", rec.upstream));
    for (name, value) in request.headers() {
        if name != "host" {
            req = req.header(name, value);
        }
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(e.to_string()))
                .unwrap()
        }
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        out = out.header(name.as_str(), value.as_bytes());
    }
    let body = resp.bytes().await.unwrap_or_default();
    out.body(Body::from(body)).unwrap()
}

/// `[start, end)` of a single `bytes=` range (suffix and open ranges too).
fn span(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (s, e) = spec.split_once('-')?;
    if s.is_empty() {
        let n: u64 = e.parse().ok()?;
        return Some((len.saturating_sub(n), len));
    }
    let s: u64 = s.parse().ok()?;
    let e = if e.is_empty() {
        len
    } else {
        e.parse::<u64>().ok()?.saturating_add(1).min(len)
    };
    Some((s, e))
}

/// (Content-Range, bytes) of each part of a multipart/byteranges body.
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    // The body may start with the delimiter without its leading CRLF.
    let first = format!("--{boundary}");
    let owned;
    if rest.starts_with(first.as_bytes()) {
        owned = [b"\r\n".as_slice(), rest].concat();
        rest = &owned;
    }
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("part headers end");
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let content_range = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-range")
                    .then(|| v.trim().to_string())
            })
            .expect("part content range");
        let data_start = head_end + 4;
        let next = find(&rest[data_start..], delimiter.as_bytes()).expect("next delimiter");
        parts.push((content_range, rest[data_start..data_start + next].to_vec()));
        rest = &rest[data_start + next..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What one node asks for, as `[start, end)` spans (for the touched pieces).
fn sequence_spans(len: u64) -> Vec<(u64, u64)> {
    let mut spans = vec![
        (0, 2),
        (len - 51, len),
        (len - 600_000, len - 51),
        (1000, 2000),
        (20 * MIB + 5, 20 * MIB + 5001),
        (len - 10_000, len - 9000),
    ];
    spans.extend(SHARED.iter().map(|&s| (s, s + SHARED_LEN)));
    spans
}

/// Replays the eStargz-like sequence through `proxy`; checks every byte.
async fn replay(node: usize, proxy: SocketAddr, url_path: String, data: Bytes) -> Vec<String> {
    let http = client();
    let len = data.len() as u64;
    let url = format!("http://{proxy}{url_path}");
    let mut log = Vec::new();
    let get = |range: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let started = Instant::now();
            let resp = http
                .get(&url)
                .header("Range", &range)
                .send()
                .await
                .unwrap_or_else(|e| panic!("node {node} {range}: {e}"));
            (resp, started)
        }
    };
    let single = |resp: reqwest::Response, range: String, (s, e): (u64, u64)| {
        let data = data.clone();
        async move {
            assert_eq!(
                resp.status(),
                StatusCode::PARTIAL_CONTENT,
                "node {node} {range}"
            );
            assert_eq!(
                header(resp.headers(), "content-range"),
                format!("bytes {}-{}/{len}", s, e - 1),
                "node {node} {range}"
            );
            let body = resp.bytes().await.expect("body");
            assert!(
                body[..] == data[s as usize..e as usize],
                "node {node} {range}: bytes differ from the blob"
            );
        }
    };

    // 1. The probe.
    let (resp, t) = get("bytes=0-1".into()).await;
    single(resp, "bytes=0-1".into(), (0, 2)).await;
    log.push(format!("probe {:?}", t.elapsed()));
    // 2. HEAD.
    let t = Instant::now();
    let head = http.head(&url).send().await.expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK, "node {node} HEAD");
    assert_eq!(header(head.headers(), "content-length"), len.to_string());
    log.push(format!("head {:?}", t.elapsed()));
    // 3. Footer and TOC near the end.
    for (range, s, e) in [
        ("bytes=-51".to_string(), len - 51, len),
        (
            format!("bytes={}-{}", len - 600_000, len - 52),
            len - 600_000,
            len - 51,
        ),
    ] {
        let (resp, t) = get(range.clone()).await;
        single(resp, range.clone(), (s, e)).await;
        log.push(format!("{range} {:?}", t.elapsed()));
    }
    // 4. A multi-range GET.
    let parts_want = [
        (1000u64, 2000u64),
        (20 * MIB + 5, 20 * MIB + 5001),
        (len - 10_000, len - 9000),
    ];
    let multi = format!(
        "bytes={}",
        parts_want
            .iter()
            .map(|(s, e)| format!("{s}-{}", e - 1))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (resp, t) = get(multi.clone()).await;
    assert_eq!(
        resp.status(),
        StatusCode::PARTIAL_CONTENT,
        "node {node} {multi}"
    );
    let content_type = header(resp.headers(), "content-type").to_string();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("node {node}: multipart content type, got {content_type:?}"))
        .to_string();
    let body = resp.bytes().await.expect("multipart body");
    let parts = parse_multipart(&body, &boundary);
    assert_eq!(parts.len(), parts_want.len(), "node {node}: parts");
    for ((content_range, bytes), (s, e)) in parts.iter().zip(parts_want) {
        assert_eq!(content_range, &format!("bytes {}-{}/{len}", s, e - 1));
        assert!(
            bytes[..] == data[s as usize..e as usize],
            "node {node} part {s}-{e}: bytes differ"
        );
    }
    log.push(format!("multi {:?}", t.elapsed()));
    // 5. The same 50 KB ranges on every node.
    for s in SHARED {
        let range = format!("bytes={s}-{}", s + SHARED_LEN - 1);
        let (resp, t) = get(range.clone()).await;
        single(resp, range.clone(), (s, s + SHARED_LEN)).await;
        log.push(format!("{range} {:?}", t.elapsed()));
    }
    log
}

fn spec(
    name: &str,
    ip: IpAddr,
    dir: &Path,
    scheduler: &SchedulerProc,
    seed: bool,
    registry: &str,
) -> DaemonSpec {
    DaemonSpec {
        name: name.to_string(),
        ip,
        scheduler: Some(scheduler.grpc),
        seed,
        data_dir: dir.join(name),
        extra_args: vec!["--default-registry".into(), registry.to_string()],
        peer_port: 0,
        admin_port: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estargz_ranges_from_three_nodes_take_each_piece_from_the_registry_once() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let data = random_bytes(BLOB_LEN as usize);
    let digest = registry.push_blob(data.clone());
    let (recorder, seen) = start_recorder(registry.addr).await;
    let upstream = format!("http://{recorder}");

    let scheduler = SchedulerProc::start(ip(1), dir.path()).await.unwrap();
    let seed = DaemonProc::start(
        spec("seed", ip(2), dir.path(), &scheduler, true, &upstream),
        dir.path(),
    )
    .await
    .expect("seed starts");
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        nodes.push(
            DaemonProc::start(
                spec(
                    &format!("node-{i}"),
                    ip(10 + i),
                    dir.path(),
                    &scheduler,
                    false,
                    &upstream,
                ),
                dir.path(),
            )
            .await
            .expect("dfdaemon starts"),
        );
    }
    // One heartbeat so the scheduler knows every host.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let path = format!("/v2/lazy/estargz/blobs/{digest}");
    let started = Instant::now();
    let mut jobs = Vec::new();
    for (i, d) in nodes.iter().enumerate() {
        jobs.push(tokio::spawn(replay(i, d.proxy, path.clone(), data.clone())));
    }
    let mut failures = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        match job.await {
            Ok(log) => eprintln!("node {i}: {}", log.join(", ")),
            Err(e) => failures.push(format!("node {i}: {e}")),
        }
    }
    if !failures.is_empty() {
        for d in nodes.iter().chain([&seed]) {
            eprintln!("--- {} ---\n{}", d.spec.name, d.proc.log_tail(30));
        }
        panic!("replays failed: {failures:?}");
    }
    eprintln!("3 replays in {:?}", started.elapsed());

    // Background downloads may still run: wait until the registry is quiet.
    let mut last = u64::MAX;
    for _ in 0..40 {
        let now = registry.blob_bytes();
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Piece length as the swarm recorded it for the task.
    let mut piece_length = 0u64;
    for d in nodes.iter().chain([&seed]) {
        if let Ok(status) = task_status(d, digest.trim_start_matches("sha256:")).await {
            if let Some(pl) = status["piece_length"].as_u64().filter(|&p| p > 0) {
                piece_length = pl;
                break;
            }
        }
    }
    assert!(piece_length > 0, "no node reports the task's piece length");
    let touched: BTreeSet<u64> = sequence_spans(BLOB_LEN)
        .into_iter()
        .flat_map(|(s, e)| s / piece_length..=(e - 1) / piece_length)
        .collect();
    let touched_bytes: u64 = touched
        .iter()
        .map(|p| piece_length.min(BLOB_LEN - p * piece_length))
        .sum();

    let served = registry.blob_bytes();
    let seen = seen.lock().unwrap().clone();
    let gets: Vec<&Seen> = seen.iter().filter(|s| s.method == "GET").collect();
    let heads = seen.len() - gets.len();
    eprintln!(
        "blob {BLOB_LEN} bytes, piece length {piece_length}: touched pieces {touched:?} = {touched_bytes} bytes; \
         registry served {served} blob bytes in {} GETs (+{heads} HEADs)",
        gets.len()
    );
    for s in &seen {
        eprintln!(
            "  registry saw {} {:?} ({} bytes)",
            s.method,
            s.range,
            s.end - s.start
        );
    }
    // A shared range may straddle two pieces; each piece must cost at
    // most one GET.
    let per_shared: Vec<usize> = SHARED
        .iter()
        .map(|&a| {
            (a / piece_length..=(a + SHARED_LEN - 1) / piece_length)
                .map(|p| {
                    let (start, end) = (p * piece_length, (p + 1) * piece_length);
                    gets.iter()
                        .filter(|g| g.start < end && start < g.end)
                        .count()
                })
                .max()
                .unwrap_or(0)
        })
        .collect();
    eprintln!("most registry GETs for one piece of each shared 50 KB range: {per_shared:?}");

    if served > touched_bytes || per_shared.iter().any(|&n| n > 1) {
        for d in nodes.iter().chain([&seed]) {
            eprintln!("--- {} ---\n{}", d.spec.name, d.proc.log_tail(40));
        }
        eprintln!("--- scheduler ---\n{}", scheduler.proc.log_tail(40));
    }
    if std::env::var_os("E2E_KEEP").is_some() {
        eprintln!("logs kept in {}", dir.keep().display());
    }
    assert!(
        served <= touched_bytes,
        "the registry served {served} blob bytes for reads touching {} pieces ({touched_bytes} bytes) on 3 nodes",
        touched.len()
    );
    for (a, n) in SHARED.iter().zip(&per_shared) {
        assert!(
            *n <= 1,
            "a piece of the 50 KB range at {a}, read by all 3 nodes, cost {n} registry requests"
        );
    }
}
