//! The registry mirror with the real dfdaemon binary in front of a small
//! in-process OCI registry that counts what it serves: blobs come from the
//! registry once for a whole swarm, HEAD never downloads, ranges answer the
//! exact bytes, and the registry's own 401 reaches clients without
//! credentials even when the blob is cached.

use bytes::Bytes;
use dragonfly_e2e::origin::{random_bytes, sha256_hex};
use dragonfly_e2e::procs::{tasks, DaemonProc, DaemonSpec, SchedulerProc};
use dragonfly_e2e::registry::{basic, FakeRegistry, OCI_MANIFEST};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn ip(block: u8, last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, block, last))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

async fn daemon(
    name: &str,
    ip: IpAddr,
    dir: &Path,
    scheduler: Option<&SchedulerProc>,
) -> DaemonProc {
    let spec = DaemonSpec {
        name: name.to_string(),
        ip,
        scheduler: scheduler.map(|s| s.grpc),
        seed: false,
        data_dir: dir.join(name),
        extra_args: Vec::new(),
        peer_port: 0,
        admin_port: 0,
    };
    DaemonProc::start(spec, dir).await.expect("dfdaemon starts")
}

/// An image manifest naming one layer.
fn manifest_for(layer: &str, size: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{layer}","size":{size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{size}}}]}}"#
    ))
}

fn blob_url(d: &DaemonProc, repo: &str, digest: &str, registry: &FakeRegistry) -> String {
    format!(
        "http://{}/v2/{repo}/blobs/{digest}?ns={}",
        d.proxy,
        registry.host()
    )
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_pulls_a_blob_from_the_registry_once() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let data = random_bytes(20 * MIB);
    let digest = registry.push_blob(data.clone());
    let manifest = manifest_for(&digest, data.len());
    registry.push_manifest("library/app", "v1", manifest.clone());

    let scheduler = SchedulerProc::start(ip(31, 1), dir.path()).await.unwrap();
    let mut daemons = Vec::new();
    for i in 0..3 {
        daemons.push(
            daemon(
                &format!("node-{i}"),
                ip(31, 10 + i),
                dir.path(),
                Some(&scheduler),
            )
            .await,
        );
    }
    // One heartbeat so the scheduler knows every host.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut jobs = Vec::new();
    for (i, d) in daemons.iter().enumerate() {
        let http = client();
        let proxy = d.proxy;
        let host = registry.host();
        let digest = digest.clone();
        jobs.push(tokio::spawn(async move {
            // Node 0 names the upstream the way hosts.toml does, the others
            // the way containerd's ns parameter does.
            let (query, registry_header) = if i == 0 {
                (String::new(), Some(format!("http://{host}")))
            } else {
                (format!("?ns={host}"), None)
            };
            let with_header = |req: reqwest::RequestBuilder| match &registry_header {
                Some(h) => req.header("X-Dragonfly-Registry", h),
                None => req,
            };
            let m =
                with_header(http.get(format!("http://{proxy}/v2/library/app/manifests/v1{query}")))
                    .header("Accept", OCI_MANIFEST)
                    .send()
                    .await
                    .expect("manifest request");
            assert_eq!(m.status(), StatusCode::OK);
            let m_body = m.bytes().await.expect("manifest body");
            let b = with_header(http.get(format!(
                "http://{proxy}/v2/library/app/blobs/{digest}{query}"
            )))
            .send()
            .await
            .expect("blob request");
            assert_eq!(b.status(), StatusCode::OK);
            assert_eq!(header(b.headers(), "docker-content-digest"), digest);
            assert_eq!(header(b.headers(), "accept-ranges"), "bytes");
            let length: u64 = header(b.headers(), "content-length")
                .parse()
                .expect("length");
            let body = b.bytes().await.expect("blob body");
            (m_body, length, body)
        }));
    }
    for job in jobs {
        let (m_body, length, body) = job.await.expect("pull");
        assert_eq!(m_body, manifest);
        assert_eq!(length, data.len() as u64);
        assert_eq!(sha256_hex(&body), digest, "blob bytes differ");
    }
    let served = registry.blob_bytes();
    for d in &daemons {
        eprintln!("--- {} ---\n{}", d.spec.name, d.proc.log_tail(15));
    }
    assert_eq!(
        served,
        data.len() as u64,
        "the registry served {served} blob bytes for a {} byte blob pulled by 3 nodes",
        data.len()
    );
    // Pulling again is served from the node's store.
    let again = client()
        .get(blob_url(&daemons[1], "library/app", &digest, &registry))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(sha256_hex(&again.bytes().await.unwrap()), digest);
    assert_eq!(registry.blob_bytes(), data.len() as u64);

    // Every whole blob served is counted by its source, once its download
    // has finished (the count may trail the last byte by a moment).
    let mut served = std::collections::BTreeMap::<String, u64>::new();
    for _ in 0..50 {
        served.clear();
        for d in &daemons {
            let text = client()
                .get(format!("http://{}/metrics", d.admin))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            for line in text.lines() {
                if let Some(rest) =
                    line.strip_prefix("dfdaemon_mirror_blobs_served_total{source=\"")
                {
                    let (source, count) = rest.split_once("\"} ").unwrap();
                    *served.entry(source.to_string()).or_default() += count.parse::<u64>().unwrap();
                }
            }
        }
        if served.values().sum::<u64>() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served.values().sum::<u64>(), 4, "{served:?}");
    assert_eq!(served.get("local"), Some(&1), "{served:?}");
    assert!(
        served.contains_key("origin") || served.contains_key("mixed"),
        "{served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_ranges_bad_input_loop_guard_and_outage() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let data = random_bytes(9 * MIB + 123);
    let len = data.len() as u64;
    let digest = registry.push_blob(data.clone());
    let manifest = manifest_for(&digest, data.len());
    registry.push_manifest("lazy/app", "v1", manifest.clone());
    let node = daemon("node", ip(32, 10), dir.path(), None).await;
    let http = client();
    let url = blob_url(&node, "lazy/app", &digest, &registry);

    // HEAD answers the length and digest without downloading.
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(head.headers(), "content-length"), len.to_string());
    assert_eq!(header(head.headers(), "docker-content-digest"), digest);
    assert_eq!(registry.blob_bytes(), 0, "HEAD downloaded the blob");
    assert!(
        tasks(&node).await.unwrap().is_empty(),
        "HEAD started a task"
    );

    // eStargz-style sequence: a 2-byte probe, single ranges, a multi-range.
    let get_range = |range: &'static str| http.get(&url).header("Range", range).send();
    let probe = get_range("bytes=0-1").await.unwrap();
    assert_eq!(probe.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(probe.headers(), "content-range"),
        format!("bytes 0-1/{len}")
    );
    assert_eq!(probe.bytes().await.unwrap(), data.slice(0..2));
    for (range, start, end) in [
        ("bytes=4194000-4194999", 4_194_000u64, 4_195_000u64),
        ("bytes=-100", len - 100, len),
        ("bytes=9437000-", 9_437_000, len),
        ("bytes=5-99999999999", 5, len),
    ] {
        let resp = get_range(range).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(resp.headers(), "content-range"),
            format!("bytes {}-{}/{len}", start, end - 1)
        );
        assert_eq!(
            header(resp.headers(), "content-length"),
            (end - start).to_string()
        );
        assert_eq!(
            resp.bytes().await.unwrap(),
            data.slice(start as usize..end as usize),
            "{range}"
        );
    }
    let multi = get_range("bytes=10-19,4194300-4194309,-5").await.unwrap();
    assert_eq!(multi.status(), StatusCode::PARTIAL_CONTENT);
    let content_type = header(multi.headers(), "content-type").to_string();
    let declared: usize = header(multi.headers(), "content-length").parse().unwrap();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart content type")
        .to_string();
    let body = multi.bytes().await.unwrap();
    assert_eq!(body.len(), declared);
    let parts = parse_multipart(&body, &boundary);
    let expected = [(10u64, 20u64), (4_194_300, 4_194_310), (len - 5, len)];
    assert_eq!(parts.len(), expected.len());
    for ((content_range, bytes), (s, e)) in parts.iter().zip(expected) {
        assert_eq!(content_range, &format!("bytes {}-{}/{len}", s, e - 1));
        assert_eq!(bytes[..], data[s as usize..e as usize]);
    }
    // Past the end, inverted, garbage, too many parts: all 416, as the
    // distribution spec's conformance suite expects.
    let resp = get_range("bytes=99999999-").await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(resp.headers(), "content-range"),
        format!("bytes */{len}")
    );
    for bad in ["bytes=5-2", "bytes=x-y", "lines=1-2"] {
        assert_eq!(
            get_range(bad).await.unwrap().status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{bad}"
        );
    }
    let many = format!("bytes={}", vec!["0-0"; 129].join(","));
    let resp = http.get(&url).header("Range", many).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // All of that downloaded the blob from the registry once.
    assert_eq!(registry.blob_bytes(), len);

    // Malformed requests get 4xx, quickly.
    let proxy = node.proxy;
    let ns = registry.host();
    for (path, status) in [
        (
            format!("/v2/UPPER/manifests/v1?ns={ns}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v2/a/..%2fb/manifests/v1?ns={ns}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v2/lazy/app/blobs/sha256:zz?ns={ns}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v2/lazy/app/manifests/sha256:abc?ns={ns}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v2/lazy/app/tags/list?ns={ns}"),
            StatusCode::NOT_FOUND,
        ),
        (
            "/v2/lazy/app/manifests/v1?ns=user@host".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v2/lazy/app/manifests/v1".to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/v2/lazy/app/blobs/{}?ns={ns}", sha256_hex(b"absent")),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let resp = http
            .get(format!("http://{proxy}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }
    // Oversized headers are refused by the HTTP layer, never buffered.
    let huge = "x".repeat(512 * 1024);
    match http
        .get(format!("http://{proxy}/v2/lazy/app/manifests/v1?ns={ns}"))
        .header("X-Padding", huge)
        .send()
        .await
    {
        Ok(resp) => assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.is_request() || e.is_connect(), "{e}"),
    }
    let post = http
        .post(format!("http://{proxy}/v2/lazy/app/blobs/uploads/?ns={ns}"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    // A request that already went through a dfdaemon is relayed to the
    // registry, not served from P2P.
    let relayed = http
        .get(&url)
        .header("X-Dragonfly-Via", "another-dfdaemon")
        .send()
        .await
        .unwrap();
    assert_eq!(relayed.status(), StatusCode::OK);
    assert_eq!(sha256_hex(&relayed.bytes().await.unwrap()), digest);
    assert_eq!(registry.blob_bytes(), 2 * len);

    // Outage: the manifest seen before and the cached blob still serve.
    let manifest_url = format!("http://{proxy}/v2/lazy/app/manifests/v1?ns={ns}");
    let m = http
        .get(&manifest_url)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    // By digest, the manifest is a P2P task of its own, checked against it.
    let manifest_digest = sha256_hex(&manifest);
    let by_digest = format!("http://{proxy}/v2/lazy/app/manifests/{manifest_digest}?ns={ns}");
    let m = http.get(&by_digest).send().await.unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    assert_eq!(header(m.headers(), "content-type"), OCI_MANIFEST);
    assert_eq!(
        header(m.headers(), "docker-content-digest"),
        manifest_digest
    );
    assert_eq!(m.bytes().await.unwrap(), manifest);
    let held = tasks(&node).await.unwrap();
    assert!(
        held.iter()
            .any(|t| t["task_id"] == manifest_digest.trim_start_matches("sha256:")),
        "manifest by digest is not a task: {held:?}"
    );
    registry.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = http.get(&by_digest).send().await.unwrap();
    assert_eq!(
        m.status(),
        StatusCode::OK,
        "manifest by digest during the outage"
    );
    assert_eq!(m.bytes().await.unwrap(), manifest);
    let m = http
        .get(&manifest_url)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(
        m.status(),
        StatusCode::OK,
        "cached manifest during the outage"
    );
    assert_eq!(m.bytes().await.unwrap(), manifest);
    let b = http.get(&url).send().await.unwrap();
    assert_eq!(b.status(), StatusCode::OK, "cached blob during the outage");
    assert_eq!(sha256_hex(&b.bytes().await.unwrap()), digest);
    // Something never seen fails fast with 5xx so containerd moves on.
    let started = std::time::Instant::now();
    let missing = http
        .get(format!("http://{proxy}/v2/lazy/app/manifests/v2?ns={ns}"))
        .send()
        .await
        .unwrap();
    assert!(missing.status().is_server_error(), "{}", missing.status());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// (Content-Range, bytes) of each part of a multipart/byteranges body.
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("part headers end");
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let content_range = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .expect("part content range")
            .to_string();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_auth_passes_through_and_guards_cached_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", Some(("alice", "s3cret")))
        .await
        .unwrap();
    let data = random_bytes(5 * MIB);
    let digest = registry.push_blob(data.clone());
    registry.push_manifest("private/app", "v1", manifest_for(&digest, data.len()));
    let node = daemon("node", ip(33, 10), dir.path(), None).await;
    let http = client();
    let creds = basic("alice", "s3cret");
    let ns = registry.host();
    let proxy = node.proxy;
    let url = blob_url(&node, "private/app", &digest, &registry);

    // Without credentials: the registry's own challenge, unchanged.
    for path in ["/v2/", "/v2/private/app/manifests/v1"] {
        let resp = http
            .get(format!("http://{proxy}{path}?ns={ns}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            header(resp.headers(), WWW_AUTHENTICATE.as_str()),
            "Basic realm=\"fake-registry\""
        );
    }
    // With them: the manifest and the blob.
    let m = http
        .get(format!(
            "http://{proxy}/v2/private/app/manifests/v1?ns={ns}"
        ))
        .header("Authorization", &creds)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    let b = http
        .get(&url)
        .header("Authorization", &creds)
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), StatusCode::OK);
    assert_eq!(sha256_hex(&b.bytes().await.unwrap()), digest);
    assert_eq!(registry.blob_bytes(), data.len() as u64);

    // The blob is now cached on this node; a caller without (or with wrong)
    // credentials still gets the registry's 401 and no bytes.
    let unauthorized_before = registry.stats().unauthorized.load(Ordering::SeqCst);
    for auth in [None, Some(basic("alice", "wrong"))] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let mut req = http.request(method.clone(), &url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} with {auth:?}"
            );
            assert_eq!(
                header(resp.headers(), WWW_AUTHENTICATE.as_str()),
                "Basic realm=\"fake-registry\""
            );
            assert!(resp.bytes().await.unwrap().is_empty());
        }
    }
    assert!(registry.stats().unauthorized.load(Ordering::SeqCst) >= unauthorized_before + 4);
    assert_eq!(registry.blob_bytes(), data.len() as u64);
    // A range for an unauthorised caller is refused the same way.
    let resp = http
        .get(&url)
        .header("Range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The rightful caller is served again, from the cache.
    let b = http
        .get(&url)
        .header("Authorization", &creds)
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(b.headers(), CONTENT_RANGE.as_str()),
        format!("bytes 0-9/{}", data.len())
    );
    assert_eq!(header(b.headers(), CONTENT_LENGTH.as_str()), "10");
    assert_eq!(
        header(b.headers(), CONTENT_TYPE.as_str()),
        "application/octet-stream"
    );
    assert_eq!(b.bytes().await.unwrap(), data.slice(0..10));
    assert_eq!(registry.blob_bytes(), data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_mode_shares_blobs_and_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let data = random_bytes(6 * MIB);
    let digest = registry.push_blob(data.clone());
    let manifest = manifest_for(&digest, data.len());
    registry.push_manifest("proxied/app", "v1", manifest.clone());
    let spec = DaemonSpec {
        name: "node".into(),
        ip: ip(34, 10),
        scheduler: None,
        seed: false,
        data_dir: dir.path().join("node"),
        // The forward proxy serves the listed hosts only.
        extra_args: vec!["--forward-proxy-host".into(), "127.0.0.1".into()],
        peer_port: 0,
        admin_port: 0,
    };
    let node = DaemonProc::start(spec, dir.path()).await.unwrap();
    let via_proxy = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", node.proxy)).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let base = format!("http://{}", registry.host());

    // A blob URL matches the default rule: it goes through P2P, keyed by
    // its digest, and a second GET is served from the node's store.
    for _ in 0..2 {
        let b = via_proxy
            .get(format!("{base}/v2/proxied/app/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(b.status(), StatusCode::OK);
        assert_eq!(sha256_hex(&b.bytes().await.unwrap()), digest);
    }
    assert_eq!(registry.blob_bytes(), data.len() as u64);
    let held = tasks(&node).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["task_id"], digest.trim_start_matches("sha256:"));

    // Anything else passes straight through, status and headers intact.
    let manifests_before = registry.stats().manifest_requests.load(Ordering::SeqCst);
    let m = via_proxy
        .get(format!("{base}/v2/proxied/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    assert_eq!(header(m.headers(), "content-type"), OCI_MANIFEST);
    assert_eq!(m.bytes().await.unwrap(), manifest);
    let missing = via_proxy
        .get(format!("{base}/v2/proxied/app/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        registry.stats().manifest_requests.load(Ordering::SeqCst),
        manifests_before + 2
    );
    assert_eq!(tasks(&node).await.unwrap().len(), 1);

    // CONNECT opens a tunnel; an unreachable target is a 502, not a hang.
    let mut tcp = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    let host = registry.host();
    tcp.write_all(format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "proxy closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(
        format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{}"), "{answer}");
    let dead = format!(
        "127.0.0.1:{}",
        dragonfly_e2e::procs::free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap_or(1)
    );
    let mut tcp = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {dead} HTTP/1.1\r\nHost: {dead}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 502");

    // Hosts that are not listed are refused, tunnel or plain request.
    let other = format!(
        "127.0.0.2:{}",
        registry.host().rsplit(':').next().unwrap_or("1")
    );
    let mut tcp = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 403");
    let refused = via_proxy
        .get(format!("http://{other}/v2/proxied/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}
