//! The node agent's ports as an attacker on the network meets them: every
//! test here plays a pod that can reach 65001/65002/40901 of a node and
//! tries what the trust model says it cannot do.

use dragonfly_e2e::origin::{random_bytes, sha256_hex, Origin};
use dragonfly_e2e::procs::{
    binary, dfget, free_port, member_dir, member_http, DaemonProc, DaemonSpec, Proc, SchedulerProc,
};
use dragonfly_e2e::registry::FakeRegistry;
use reqwest::StatusCode;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

fn ip(block: u8, last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, block, last))
}

fn spec(name: &str, ip: IpAddr, dir: &Path, extra: &[&str]) -> DaemonSpec {
    DaemonSpec {
        name: name.into(),
        ip,
        scheduler: None,
        seed: false,
        data_dir: dir.join(name),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        peer_port: 0,
        admin_port: 0,
    }
}

fn task_id_of(url: &str) -> String {
    node_agent::task_request::TaskRequest {
        url: url.into(),
        ..Default::default()
    }
    .own_task_id()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_cannot_write_files_read_content_or_manage_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(3 * MIB);
    let url = origin.add("private.bin", data.clone());
    let d = DaemonProc::start(spec("d", ip(70, 1), dir.path(), &[]), dir.path())
        .await
        .unwrap();
    // Even a cluster member (here the operator's certificate, which may
    // start downloads on a node) cannot do these.
    let http = member_http(identity::Role::Operator, "operator-0");
    let plain = reqwest::Client::new();
    let peer = d.peer_api();

    // A task that names an output file: today's root write anywhere.
    let target = dir.path().join("hosts.toml");
    let resp = http
        .post(format!("{peer}/api/v1/tasks"))
        .json(&serde_json::json!({ "url": url, "output": target }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body = resp.text().await.unwrap();
    assert!(body.contains("local task API"), "{body}");

    // The content is fetched through the local API (as dfget does)...
    let out = dir.path().join("out");
    let (code, stderr) = dfget(&url, &out, d.api, &[]).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    let id = task_id_of(&url);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!target.exists(), "a file was written for the network");

    // ...but the network can neither read it whole nor list, delete or
    // copy it out.
    let content = http
        .get(format!("{peer}/api/v1/tasks/{id}/content"))
        .send()
        .await
        .unwrap();
    assert!(content.status().is_client_error(), "{}", content.status());
    let list = http
        .get(format!("{peer}/api/v1/tasks"))
        .send()
        .await
        .unwrap();
    assert!(list.status().is_client_error(), "{}", list.status());
    let delete = http
        .delete(format!("{peer}/api/v1/tasks/{id}"))
        .send()
        .await
        .unwrap();
    assert!(delete.status().is_client_error(), "{}", delete.status());
    let local = plain
        .get(format!("{}/api/v1/tasks/{id}", d.task_api()))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), StatusCode::OK, "the task is still there");

    // Headers that could steer the origin request are refused.
    let resp = http
        .post(format!("{peer}/api/v1/tasks"))
        .json(&serde_json::json!({ "url": url, "headers": {"Host": "metadata.internal"} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // The progress a peer sees leaves out the URL's query (signatures).
    let signed = origin.add("signed.bin", random_bytes(MIB));
    let signed = format!("{signed}?X-Amz-Signature=secret");
    let (code, stderr) = dfget(&signed, &dir.path().join("signed"), d.api, &[])
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = http
        .get(format!("{peer}/api/v1/tasks/{}", task_id_of(&signed)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = status["url"].as_str().unwrap_or_default();
    assert!(!shown.contains("secret"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_cannot_attach_other_bytes_to_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let real = random_bytes(2 * MIB);
    let real_url = origin.add("real.bin", real.clone());
    let evil_url = origin.add("evil.bin", random_bytes(2 * MIB));
    let d = DaemonProc::start(spec("d", ip(70, 2), dir.path(), &[]), dir.path())
        .await
        .unwrap();
    let http = member_http(identity::Role::Operator, "operator-0");
    // The attacker's URL under the task id of the real one.
    let resp = http
        .post(format!("{}/api/v1/tasks", d.peer_api()))
        .json(&serde_json::json!({ "url": evil_url, "task_id": task_id_of(&real_url) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("does not belong"));
    let out = dir.path().join("out");
    let (code, stderr) = dfget(&real_url, &out, d.api, &[]).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sha256_hex(&std::fs::read(&out).unwrap()), sha256_hex(&real));
    // A task the network may start: its own id, no output. It runs.
    let resp = http
        .post(format!("{}/api/v1/tasks", d.peer_api()))
        .json(&serde_json::json!({ "url": evil_url, "task_id": task_id_of(&evil_url) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

/// Starts dfdaemon with exactly `args` (plus a data dir and free ports on
/// `ip`) and waits until it is ready or has exited. Returns the admin and
/// mirror addresses.
async fn raw_daemon(
    name: &str,
    ip: IpAddr,
    dir: &Path,
    args: &[String],
) -> (Proc, SocketAddr, SocketAddr) {
    let port = |ip| free_port(ip).unwrap();
    let admin = SocketAddr::new(ip, port(ip));
    let proxy = SocketAddr::new(ip, port(ip));
    let mut all = vec![
        "run".to_string(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--proxy-listen".into(),
        proxy.to_string(),
        "--peer-listen".into(),
        SocketAddr::new(ip, port(ip)).to_string(),
        "--admin-listen".into(),
        admin.to_string(),
    ];
    all.extend(args.iter().cloned());
    let mut proc = Proc::spawn(name, &binary("dfdaemon").unwrap(), &all, dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && proc.is_running() {
        let ready = reqwest::get(format!("http://{admin}/readyz")).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (proc, admin, proxy)
}

async fn exits_with(proc: &mut Proc, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!proc.is_running(), "daemon kept running");
    let log = proc.log_tail(20);
    assert!(log.contains(needle), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_api_stays_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    // Never on an address other hosts reach.
    let (mut open, _, _) = raw_daemon(
        "open",
        ip(70, 3),
        dir.path(),
        &["--api-listen".into(), "0.0.0.0:0".into()],
    )
    .await;
    exits_with(&mut open, "must stay on this host").await;

    // On a unix socket, dfget reaches it there...
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(2 * MIB);
    let url = origin.add("f.bin", data.clone());
    let socket = dir.path().join("run/api.sock");
    let api = vec![
        "--api-listen".to_string(),
        format!("unix:{}", socket.display()),
        "--allow-destination".into(),
        "127.0.0.0/8".into(),
    ];
    let (mut first, _, _) = raw_daemon("first", ip(70, 4), dir.path(), &api).await;
    assert!(first.is_running(), "{}", first.log_tail(20));
    let out = dir.path().join("out");
    let status = tokio::process::Command::new(binary("dfget").unwrap())
        .arg(&url)
        .arg("-O")
        .arg(&out)
        .arg("--daemon")
        .arg(format!("unix:{}", socket.display()))
        .arg("--no-direct")
        .arg("--quiet")
        .status()
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(sha256_hex(&std::fs::read(&out).unwrap()), sha256_hex(&data));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "socket mode {mode:o}");

    // ...and a second daemon cannot take the live socket over.
    let (mut second, _, _) = raw_daemon("second", ip(70, 5), dir.path(), &api).await;
    exits_with(&mut second, "in use by another running daemon").await;
    assert!(first.is_running());
    first.terminate(Duration::from_secs(10));
}

/// A TCP connection from `from` to `to`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closes `stream` within `within` (reads EOF or reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_cannot_take_a_port_away() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProc::start(
        spec(
            "d",
            ip(70, 6),
            dir.path(),
            &[
                "--max-connections-per-client",
                "8",
                "--max-connections",
                "64",
                "--header-timeout",
                "2s",
            ],
        ),
        dir.path(),
    )
    .await
    .unwrap();
    let attacker = ip(70, 100);
    for target in [d.admin, d.peer, d.proxy] {
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(connect_from(attacker, target).await);
        }
        // One more from the same address is turned away at once...
        let mut extra = connect_from(attacker, target).await;
        assert!(
            closed_within(&mut extra, Duration::from_secs(2)).await,
            "{target}: ninth connection kept"
        );
        // ...while another client is still served.
        let other = connect_from(ip(70, 101), target).await;
        drop(other);
        let health = reqwest::get(format!("http://{}/healthz", d.admin))
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        // A request trickling in is cut off at the header deadline, and
        // so are the idle connections.
        let mut slow = idle.pop().unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut slow, Duration::from_secs(6)).await);
        for mut conn in idle {
            assert!(closed_within(&mut conn, Duration::from_secs(6)).await);
        }
        assert!(started.elapsed() < Duration::from_secs(8));
    }
    let metrics = reqwest::get(format!("http://{}/metrics", d.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dfdaemon_connections_refused_total{listener=\"peer\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ranges_cannot_multiply_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let data = random_bytes(4 * MIB);
    let digest = registry.push_blob(data.clone());
    let d = DaemonProc::start(spec("d", ip(70, 7), dir.path(), &[]), dir.path())
        .await
        .unwrap();
    let url = format!(
        "http://{}/v2/app/blobs/{digest}?ns={}",
        d.proxy,
        registry.host()
    );
    let ranges = format!("bytes={}", vec!["0-"; 128].join(","));
    let resp = reqwest::Client::new()
        .get(&url)
        .header("Range", ranges)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), data.len(), "one merged range, not 128 copies");
    assert_eq!(sha256_hex(&body), sha256_hex(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_failing_its_digest_never_ends_as_a_clean_answer() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let good = random_bytes(3 * MIB);
    let digest = sha256_hex(&good);
    let mut bad = good.to_vec();
    bad[2 * MIB] ^= 1;
    registry.push_blob_as(&digest, bad.into());
    let d = DaemonProc::start(spec("d", ip(70, 8), dir.path(), &[]), dir.path())
        .await
        .unwrap();
    let url = format!(
        "http://{}/v2/app/blobs/{digest}?ns={}",
        d.proxy,
        registry.host()
    );
    let http = reqwest::Client::new();
    for attempt in 0..2 {
        let resp = http.get(&url).send().await.unwrap();
        if !resp.status().is_success() {
            continue;
        }
        // The body is cut before its announced end: containerd sees an
        // error and retries instead of committing the wrong layer.
        assert!(
            resp.bytes().await.is_err(),
            "attempt {attempt}: corrupt blob delivered whole"
        );
    }
    // The bad copy is gone: once the registry serves the right bytes, the
    // same request gets them.
    registry.push_blob_as(&digest, good.clone());
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sha256_hex(&resp.bytes().await.unwrap()), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_goes_to_loopback_or_link_local_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let url = origin.add("internal.bin", random_bytes(MIB));
    // A daemon with the default policy (the test helper allows loopback).
    let api = SocketAddr::new(ip(70, 9), free_port(ip(70, 9)).unwrap());
    let (mut d, _, mirror) = raw_daemon(
        "strict",
        ip(70, 9),
        dir.path(),
        &["--api-listen".into(), api.to_string()],
    )
    .await;
    assert!(d.is_running(), "{}", d.log_tail(20));
    let http = reqwest::Client::new();
    // Task URLs naming loopback or the metadata endpoint are refused up
    // front with a clear 400; so is a name that resolves to loopback.
    for target in [
        url.clone(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        url.replace("127.0.0.1", "localhost"),
    ] {
        let resp = http
            .post(format!("http://{api}/api/v1/tasks"))
            .json(&serde_json::json!({ "url": target }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        if target.contains("localhost") {
            // Names are checked as they resolve: the task fails, nothing
            // reaches the origin.
            continue;
        }
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target}: {body}");
        assert!(body.contains("not a destination"), "{body}");
    }
    // The mirror refuses a registry header naming this host's loopback.
    let resp = http
        .get(format!("http://{mirror}/v2/x/manifests/latest"))
        .header("X-Dragonfly-Registry", format!("http://{}", origin.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        origin.requests(),
        0,
        "a request reached the loopback origin"
    );
    d.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_serves_only_the_registries_it_mirrors() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let data = random_bytes(MIB);
    let digest = registry.push_blob(data.clone());
    // The attacker's registry, which would answer yes to any access check.
    let attacker = FakeRegistry::start("127.0.0.2:0", None).await.unwrap();
    let mirrored = format!("http://{}", registry.host());
    let d = DaemonProc::start(
        spec("d", ip(70, 10), dir.path(), &["--registry", &mirrored]),
        dir.path(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let blob = format!("http://{}/v2/app/blobs/{digest}", d.proxy);
    let ok = http
        .get(&blob)
        .header("X-Dragonfly-Registry", &mirrored)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(sha256_hex(&ok.bytes().await.unwrap()), digest);
    // The cached blob, asked for through another registry: refused before
    // anything reaches it.
    for naming in [
        (
            "X-Dragonfly-Registry",
            format!("http://{}", attacker.host()),
        ),
        ("X-Ignored", String::new()),
    ] {
        let url = if naming.1.is_empty() {
            format!("{blob}?ns={}", attacker.host())
        } else {
            blob.clone()
        };
        let resp = http
            .get(&url)
            .header(naming.0, &naming.1)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{naming:?}");
        assert!(resp.text().await.unwrap().contains("does not mirror"));
    }
    assert_eq!(
        attacker
            .stats()
            .blob_gets
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        attacker
            .stats()
            .blob_heads
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// A client of `tls` that accepts any member as the server.
fn https_with(tls: &identity::MemberTls) -> reqwest::Client {
    use identity::Role;
    let config = tls.client_config(&Role::ALL);
    reqwest::Client::builder()
        .use_preconfigured_tls((*config).clone())
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cluster_members_reach_the_peer_port() {
    use identity::{Ca, Identity, MemberTls, Role};
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProc::start(spec("d", ip(70, 20), dir.path(), &[]), dir.path())
        .await
        .unwrap();
    let unknown = format!("{}/api/v1/tasks/{}/shape", d.peer_api(), "a".repeat(64));
    // Plain HTTP: the port speaks TLS only.
    let plain = reqwest::Client::new()
        .get(unknown.replace("https://", "http://"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // TLS without a client certificate: the handshake fails.
    let anonymous = {
        let (ca, _) = dragonfly_e2e::procs::test_ca();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(
                rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .resolve(identity::MEMBER_DNS_NAME, d.peer)
            .build()
            .unwrap()
    };
    let by_name = format!(
        "https://{}:{}/api/v1/tasks/{}/shape",
        identity::MEMBER_DNS_NAME,
        d.peer.port(),
        "a".repeat(64)
    );
    let resp = anonymous
        .get(&by_name)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(resp.is_err(), "served without a certificate: {resp:?}");
    // A certificate of another CA, even naming a real role: refused.
    let other_ca = Ca::generate("someone else", Duration::from_secs(3600)).unwrap();
    let stranger = MemberTls::from_issued(
        &other_ca
            .issue(
                &Identity::new(Role::Node, "d").unwrap(),
                Duration::from_secs(3600),
            )
            .unwrap(),
    )
    .unwrap();
    let resp = https_with(&stranger)
        .get(&unknown)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(resp.is_err(), "served another CA's member: {resp:?}");
    // A member of this cluster but of a role that has no business here.
    let scheduler = MemberTls::load(&member_dir(Role::Scheduler, "s")).unwrap();
    let resp = https_with(&scheduler)
        .get(&unknown)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(resp.is_err(), "served a scheduler certificate: {resp:?}");
    // A node of this cluster is served (the task is unknown: 404), but may
    // not start downloads on another node; the operator may.
    let node = member_http(Role::Node, "other");
    let resp = node.get(&unknown).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let task = serde_json::json!({ "url": "http://127.0.0.1:1/x" });
    let resp = node
        .post(format!("{}/api/v1/tasks", d.peer_api()))
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let operator = member_http(Role::Operator, "op");
    let resp = operator
        .post(format!("{}/api/v1/tasks", d.peer_api()))
        .json(&task)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

/// A gRPC client to a scheduler holding `tls` (or plain, with None).
async fn scheduler_client(
    grpc: SocketAddr,
    tls: Option<&identity::MemberTls>,
) -> Result<proto::scheduler_client::SchedulerClient<tonic::transport::Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    let channel = match tls {
        Some(tls) => {
            endpoint
                .connect_with_connector(node_agent::scheduler_client::tls_connector(
                    tls,
                    &grpc.to_string(),
                ))
                .await
        }
        None => endpoint.connect().await,
    }
    .map_err(|e| e.to_string())?;
    Ok(proto::scheduler_client::SchedulerClient::new(channel))
}

fn announce(id: &str, kind: proto::HostType) -> proto::AnnounceHostRequest {
    proto::AnnounceHostRequest {
        host: Some(proto::Host {
            id: id.into(),
            hostname: id.into(),
            ip: "127.0.70.30".into(),
            peer_port: 1,
            proxy_port: 2,
            admin_port: 3,
            r#type: kind as i32,
            upload_capacity: 1,
            free_upload_slots: 1,
            labels: Default::default(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_speaks_to_the_scheduler_only_for_itself() {
    use identity::{MemberTls, Role};
    use proto::HostType;
    let dir = tempfile::tempdir().unwrap();
    let s = SchedulerProc::start(ip(70, 30), dir.path()).await.unwrap();
    // Without a certificate nothing gets through.
    let plain = match scheduler_client(s.grpc, None).await {
        Err(_) => None,
        Ok(mut c) => Some(c.announce_host(announce("n1", HostType::Normal)).await),
    };
    assert!(
        plain.as_ref().is_none_or(|answer| answer.is_err()),
        "a plain caller was answered: {plain:?}"
    );
    let node = MemberTls::load(&member_dir(Role::Node, "n1")).unwrap();
    let mut c = scheduler_client(s.grpc, Some(&node)).await.unwrap();
    // Itself: yes.
    c.announce_host(announce("n1", HostType::Normal))
        .await
        .unwrap();
    // Another host, or a seed: no.
    let other = c
        .announce_host(announce("n2", HostType::Normal))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other}");
    let seed = c
        .announce_host(announce("n1", HostType::Seed))
        .await
        .unwrap_err();
    assert_eq!(seed.code(), tonic::Code::PermissionDenied, "{seed}");
    // Calls in another host's name: no.
    let for_other = c
        .register_peer(proto::RegisterPeerRequest {
            task_id: "a".repeat(64),
            host_id: "n2".into(),
            url: "http://127.0.0.1:1/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        for_other.code(),
        tonic::Code::PermissionDenied,
        "{for_other}"
    );
    let leave_other = c
        .leave_host(proto::LeaveHostRequest {
            host_id: "n2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(leave_other.code(), tonic::Code::PermissionDenied);
    // A seed certificate announces a seed.
    let seed = MemberTls::load(&member_dir(Role::Seed, "seed-0")).unwrap();
    let mut c = scheduler_client(s.grpc, Some(&seed)).await.unwrap();
    c.announce_host(announce("seed-0", HostType::Seed))
        .await
        .unwrap();
    // The client side: a member that is not a scheduler cannot play one.
    let fake = DaemonProc::start(spec("fake", ip(70, 31), dir.path(), &[]), dir.path())
        .await
        .unwrap();
    let mut c = scheduler_client(fake.peer, Some(&node)).await;
    let answer = match &mut c {
        Ok(c) => Some(c.stat(proto::StatRequest::default()).await),
        Err(_) => None,
    };
    assert!(
        answer.as_ref().is_none_or(|a| a.is_err()),
        "a node's port passed for a scheduler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_must_be_the_host_the_scheduler_named() {
    use identity::{MemberTls, Role};
    use node_agent::peer_client::{PeerClient, PeerError};
    let dir = tempfile::tempdir().unwrap();
    let real = DaemonProc::start(spec("real", ip(70, 40), dir.path(), &[]), dir.path())
        .await
        .unwrap();
    let child = MemberTls::load(&member_dir(Role::Node, "child")).unwrap();
    let peers = PeerClient::new(Duration::from_secs(5), Some(&child)).unwrap();
    let task = "a".repeat(64);
    let base = real.peer.to_string();
    // Named as itself: served (the task is unknown here).
    let named = peers.shape(&base, "real", &task, Duration::ZERO).await;
    assert!(matches!(named, Err(PeerError::NotFound)), "{named:?}");
    // Named as another host: the answer is not taken.
    let impostor = peers.shape(&base, "victim", &task, Duration::ZERO).await;
    assert!(
        matches!(impostor, Err(PeerError::Impostor(_))),
        "{impostor:?}"
    );
    let piece = peers
        .piece(
            &base,
            "victim",
            &task,
            0,
            1024,
            node_agent::peer_client::HOLDER_ANSWER,
        )
        .await;
    assert!(matches!(piece, Err(PeerError::Impostor(_))), "{piece:?}");
    // A seed request (it may carry a caller's credentials) reaches seed
    // certificates only: a node never receives it.
    let request = node_agent::task_request::TaskRequest {
        url: "http://127.0.0.1:1/x".into(),
        headers: [("Authorization".to_string(), "Bearer secret".to_string())].into(),
        ..Default::default()
    };
    let sent = peers.trigger_seed(&base, "real", &request).await;
    assert!(matches!(sent, Err(PeerError::Connect(_))), "{sent:?}");
}

/// Rewrites a stopped daemon's copy of a task so every piece holds other
/// bytes and its metadata claims their digests: what a member that wants to
/// vouch for forged content serves.
fn forge_stored_task(data_dir: &Path, task_id: &str) {
    let dir = data_dir.join("tasks").join(task_id);
    let meta_path = dir.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    let mut data = std::fs::read(dir.join("data")).unwrap();
    let piece_length = meta["piece_length"].as_u64().unwrap() as usize;
    let mut digests = Vec::new();
    for piece in data.chunks_mut(piece_length) {
        for b in piece.iter_mut().step_by(4096) {
            *b = !*b;
        }
        digests.push(serde_json::json!(sha256_hex(piece)));
    }
    meta["digests"] = serde_json::Value::Array(digests);
    std::fs::write(dir.join("data"), &data).unwrap();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_vouch_for_forged_pieces() {
    use identity::{MemberTls, Role};
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(32 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("forged.bin", data);
    let task_id = task_id_of(&url);
    let scheduler = SchedulerProc::start(ip(71, 1), dir.path()).await.unwrap();
    let member = |name: &str, last: u8| {
        let mut s = spec(name, ip(71, last), dir.path(), &[]);
        s.scheduler = Some(scheduler.grpc);
        s
    };
    // The source reads the file from the origin; the rogue member copies it
    // from the source, then forges its copy and claims the forged digests.
    let source = DaemonProc::start(member("source", 10), dir.path())
        .await
        .unwrap();
    let rogue = DaemonProc::start(member("rogue", 11), dir.path())
        .await
        .unwrap();
    for (d, name) in [(&source, "source"), (&rogue, "rogue")] {
        let (code, err) = dfget(&url, &dir.path().join(format!("{name}.out")), d.api, &[])
            .await
            .unwrap();
        assert_eq!(code, 0, "{name}: {err}");
    }
    let mut rogue = rogue;
    rogue.proc.terminate(Duration::from_secs(5));
    forge_stored_task(&rogue.spec.data_dir, &task_id);
    let rogue = rogue.restart(dir.path()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Two nodes download the URL (no content digest to check it against)
    // while the rogue offers every piece.
    let children = [
        DaemonProc::start(member("child-1", 12), dir.path())
            .await
            .unwrap(),
        DaemonProc::start(member("child-2", 13), dir.path())
            .await
            .unwrap(),
    ];
    let mut jobs = Vec::new();
    for (i, c) in children.iter().enumerate() {
        let out = dir.path().join(format!("child-{i}.out"));
        let (url, api) = (url.clone(), c.api);
        jobs.push(tokio::spawn(async move {
            let result = dfget(&url, &out, api, &[]).await.unwrap();
            (result, std::fs::read(&out).unwrap_or_default())
        }));
    }
    for job in jobs {
        let ((code, err), bytes) = job.await.unwrap();
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            sha256_hex(&bytes),
            digest,
            "a child took the rogue's forged bytes"
        );
    }
    let forged_served: u64 = {
        let metrics = |d: &DaemonProc| {
            let url = format!("http://{}/metrics", d.admin);
            async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
        };
        let mut n = 0;
        for c in &children {
            let text = metrics(c).await;
            n += text
                .lines()
                .filter(|l| l.contains("peer_forged") && !l.starts_with('#'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
        n
    };
    assert!(
        forged_served > 0,
        "the rogue was never asked: the test proves nothing"
    );

    // Both children reported it: the scheduler sends nobody to it any more
    // (as the operator sees it).
    let operator = MemberTls::load(&member_dir(Role::Operator, "op")).unwrap();
    let mut c = scheduler_client(scheduler.grpc, Some(&operator))
        .await
        .unwrap();
    let stat = c
        .stat(proto::StatRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stat.quarantined, vec!["rogue".to_string()], "{stat:?}");
    let task = stat.tasks.iter().find(|t| t.task_id == task_id).unwrap();
    let length = 32 * MIB as u64;
    let pieces =
        wire::piece_length::piece_count(length, wire::piece_length::piece_length_for(Some(length)));
    assert_eq!(
        task.recorded_digests, pieces,
        "digests recorded from the source"
    );
    drop(rogue);
}

/// Polls the scheduler's view of a task until `reached` holds (10 s at most).
async fn await_stat(
    sched: &mut proto::scheduler_client::SchedulerClient<tonic::transport::Channel>,
    task_id: &str,
    what: &str,
    reached: impl Fn(&proto::TaskStat) -> bool,
) {
    for _ in 0..200 {
        let stat = sched
            .stat(proto::StatRequest {
                task_id: task_id.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        if stat.tasks.first().is_some_and(&reached) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not seen at the scheduler within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_slip_pieces_in_before_the_source_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    // The rogue member holds other bytes under the task of this URL (it
    // fetched them when the URL served them), with their own digests.
    let url = origin.add("moving.bin", random_bytes(32 * MIB));
    let first = SchedulerProc::start(ip(72, 1), dir.path()).await.unwrap();
    let mut rogue_spec = spec("rogue", ip(72, 11), dir.path(), &[]);
    rogue_spec.scheduler = Some(first.grpc);
    let mut rogue = DaemonProc::start(rogue_spec.clone(), dir.path())
        .await
        .unwrap();
    let (code, err) = dfget(&url, &dir.path().join("rogue.out"), rogue.api, &[])
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    rogue.proc.terminate(Duration::from_secs(5));
    drop(first);

    // Now the URL serves the real bytes, slowly; a fresh scheduler elects
    // the first node to ask as the source, and while it is downloading the
    // rogue joins, offering every piece.
    let data = random_bytes(32 * MIB);
    let digest = sha256_hex(&data);
    origin.add("moving.bin", data);
    origin.set_throttle(6 * MIB as u64);
    let scheduler = SchedulerProc::start(ip(72, 2), dir.path()).await.unwrap();
    let member = |name: &str, last: u8| {
        let mut s = spec(name, ip(72, last), dir.path(), &[]);
        s.scheduler = Some(scheduler.grpc);
        s
    };
    let source = DaemonProc::start(member("source", 10), dir.path())
        .await
        .unwrap();
    let fetch = |api: SocketAddr, name: &str| {
        let (url, out) = (url.clone(), dir.path().join(format!("{name}.out")));
        tokio::spawn(async move {
            let result = dfget(&url, &out, api, &[]).await.unwrap();
            (result, std::fs::read(&out).unwrap_or_default())
        })
    };
    let source_job = fetch(source.api, "source");
    let tls = identity::MemberTls::load(&member_dir(identity::Role::Operator, "op")).unwrap();
    let mut sched = scheduler_client(scheduler.grpc, Some(&tls)).await.unwrap();
    let task_id = task_id_of(&url);
    // Staged in order, each step seen at the scheduler: the source elected
    // and recording, then the rogue listed with every piece.
    await_stat(&mut sched, &task_id, "the source recording", |t| {
        t.source_host_id == "source" && t.recorded_digests > 0
    })
    .await;
    rogue_spec.scheduler = Some(scheduler.grpc);
    let rogue = DaemonProc::start(rogue_spec, dir.path()).await.unwrap();
    await_stat(
        &mut sched,
        &task_id,
        "the rogue offering every piece",
        |t| t.peers.iter().any(|p| p.host_id == "rogue" && p.complete),
    )
    .await;
    let child = DaemonProc::start(member("child", 12), dir.path())
        .await
        .unwrap();
    let ((code, err), bytes) = fetch(child.api, "child").await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        sha256_hex(&bytes),
        digest,
        "the child took the rogue's bytes"
    );
    let ((code, err), _) = source_job.await.unwrap();
    assert_eq!(code, 0, "{err}");
    let text = reqwest::get(format!("http://{}/metrics", child.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused: f64 = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.contains("peer_unverified") || l.contains("peer_forged"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        refused > 0.0,
        "the rogue was never asked: the test proves nothing\n{}",
        rogue.proc.log_tail(20)
    );
}

/// A registry scopes blobs to repositories: a caller allowed to read one
/// repository (a public one, anonymously) must not get a blob that is only
/// in another (a private layer), from this node's cache or from the swarm,
/// with the registry up or down. And what one node saw served without
/// credentials, a node that never read it may serve during an outage with
/// the default policy; nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_per_blob_and_public_content_survives_an_outage_cluster_wide() {
    use dragonfly_e2e::registry::basic;
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", Some(("alice", "s3cret")))
        .await
        .unwrap();
    let private = random_bytes(3 * MIB);
    let private_digest = registry.push_blob_to("private/app", private.clone());
    let public = random_bytes(MIB);
    let public_digest = registry.push_blob_to("public/base", public.clone());
    registry.make_public("public/base");
    let public_manifest = registry.push_manifest(
        "public/base",
        "v1",
        bytes::Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{{"digest":"{public_digest}","size":{}}}]}}"#,
            public.len()
        )),
    );
    let private_manifest = registry.push_manifest(
        "private/app",
        "v1",
        bytes::Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{{"digest":"{private_digest}","size":{}}}]}}"#,
            private.len()
        )),
    );
    let mirrored = format!("http://{}", registry.host());
    let scheduler = SchedulerProc::start(ip(72, 1), dir.path()).await.unwrap();
    let node = |name: &str, last: u8| {
        let mut s = spec(name, ip(72, last), dir.path(), &["--registry", &mirrored]);
        s.scheduler = Some(scheduler.grpc);
        s
    };
    let owner = DaemonProc::start(node("owner", 10), dir.path())
        .await
        .unwrap();
    let other = DaemonProc::start(node("other", 11), dir.path())
        .await
        .unwrap();
    let fresh = DaemonProc::start(node("fresh", 12), dir.path())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    // By tag, then by digest, as containerd asks (the digest is what the
    // swarm shares).
    let manifest_ref = |d: &DaemonProc, repo: &str, reference: &str, auth: Option<String>| {
        let mut req = http
            .get(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                d.proxy
            ))
            .header("X-Dragonfly-Registry", &mirrored)
            .header("Accept", dragonfly_e2e::registry::OCI_MANIFEST);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        req.send()
    };
    let manifest =
        |d: &DaemonProc, repo: &str, auth: Option<String>| manifest_ref(d, repo, "v1", auth);
    let get = |d: &DaemonProc, repo: &str, digest: &str, auth: Option<String>| {
        let mut req = http
            .get(format!("http://{}/v2/{repo}/blobs/{digest}", d.proxy))
            .header("X-Dragonfly-Registry", &mirrored);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        req.send()
    };
    // The owner reads its private layer with its credentials.
    let resp = get(
        &owner,
        "private/app",
        &private_digest,
        Some(basic("alice", "s3cret")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), private);
    let resp = manifest(&owner, "private/app", Some(basic("alice", "s3cret")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = manifest_ref(
        &owner,
        "private/app",
        &private_manifest,
        Some(basic("alice", "s3cret")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Anyone may read the public repository (the manifest's yes covers
    // its layer: no access check per blob)...
    let blob_heads = || {
        registry
            .stats()
            .blob_heads
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let heads_before = blob_heads();
    for d in [&owner, &other] {
        let resp = manifest(d, "public/base", None).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = manifest_ref(d, "public/base", &public_manifest, None)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = get(d, "public/base", &public_digest, None).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.unwrap(), public);
    }
    assert_eq!(
        blob_heads(),
        heads_before,
        "blobs a read manifest references need no access check"
    );
    // ...which gives no private layer asked for under its name: not from the
    // owner's cache, not through the swarm from another node.
    for (d, name) in [(&owner, "owner"), (&other, "other")] {
        let resp = get(d, "public/base", &private_digest, None).await.unwrap();
        let status = resp.status();
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{name}: the private layer under a public name"
        );
        assert_ne!(body, private, "{name}");
    }
    // With the registry down, the default offline policy serves the public
    // blob each node saw read anonymously, and still not the private one.
    registry.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (d, name) in [(&owner, "owner"), (&other, "other")] {
        let resp = get(d, "public/base", &public_digest, None).await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{name}: the public blob offline"
        );
        assert_eq!(resp.bytes().await.unwrap(), public, "{name}");
        let resp = get(d, "public/base", &private_digest, None).await.unwrap();
        let status = resp.status();
        let body = resp.bytes().await.unwrap();
        assert_ne!(status, StatusCode::OK, "{name}: the private layer offline");
        assert_ne!(body, private, "{name}");
    }
    // A node that never read anything: the public image (tag, manifest,
    // layer) comes from the cluster, which saw it served anonymously; the
    // private one does not, under its name or the public one.
    let resp = manifest(&fresh, "public/base", None).await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "fresh: the public manifest offline"
    );
    assert_eq!(sha256_hex(&resp.bytes().await.unwrap()), public_manifest);
    let resp = get(&fresh, "public/base", &public_digest, None)
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "fresh: the public layer offline"
    );
    assert_eq!(resp.bytes().await.unwrap(), public);
    let resp = manifest(&fresh, "private/app", None).await.unwrap();
    assert_ne!(
        resp.status(),
        StatusCode::OK,
        "fresh: the private manifest offline"
    );
    for repo in ["private/app", "public/base"] {
        let resp = get(&fresh, repo, &private_digest, None).await.unwrap();
        let status = resp.status();
        let body = resp.bytes().await.unwrap();
        assert_ne!(
            status,
            StatusCode::OK,
            "fresh: the private layer offline under {repo}"
        );
        assert_ne!(body, private);
    }
}

// ---- a compromised member: one valid node certificate --------------------

/// A gRPC client holding a member certificate of `role` named `name`.
async fn member_scheduler(
    grpc: SocketAddr,
    role: identity::Role,
    name: &str,
) -> proto::scheduler_client::SchedulerClient<tonic::transport::Channel> {
    let tls = identity::MemberTls::load(&member_dir(role, name)).unwrap();
    scheduler_client(grpc, Some(&tls)).await.unwrap()
}

/// The operator's view of the scheduler (everything).
async fn operator_stat(grpc: SocketAddr, task_id: &str) -> proto::StatResponse {
    member_scheduler(grpc, identity::Role::Operator, "op")
        .await
        .stat(proto::StatRequest {
            task_id: task_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Reads a daemon's stored piece digests of a task (its metadata).
fn stored_digests(data_dir: &Path, task_id: &str) -> Vec<String> {
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("tasks").join(task_id).join("meta.json")).unwrap(),
    )
    .unwrap();
    meta["digests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let hex = d.as_str().unwrap();
            if hex.starts_with("sha256:") {
                hex.to_string()
            } else {
                format!("sha256:{hex}")
            }
        })
        .collect()
}

/// A task complete on a node and on the seed (its source, its digests
/// recorded). Member b, holding forged bytes, reports the seed and the node
/// unreachable, registers without a seed, and reports its own digests:
/// before, it was elected the source, its digests replaced the record, an
/// honest node took b's bytes, and the honest copies were quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_take_over_a_finished_task_or_get_honest_members_quarantined() {
    use identity::Role;
    use proto::FailureReason;
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data = random_bytes(16 * MIB);
    let digest = sha256_hex(&data);
    let url = origin.add("takeover.bin", data);
    let task_id = task_id_of(&url);
    let scheduler = SchedulerProc::start(ip(74, 1), dir.path()).await.unwrap();
    let member = |name: &str, last: u8, seed: bool| {
        let mut s = spec(name, ip(74, last), dir.path(), &[]);
        s.scheduler = Some(scheduler.grpc);
        s.seed = seed;
        s
    };
    let seed = DaemonProc::start(member("seed", 10, true), dir.path())
        .await
        .unwrap();
    let a = DaemonProc::start(member("a", 11, false), dir.path())
        .await
        .unwrap();
    let b = DaemonProc::start(member("b", 12, false), dir.path())
        .await
        .unwrap();
    for (d, name) in [(&a, "a"), (&b, "b")] {
        let (code, err) = dfget(&url, &dir.path().join(format!("{name}.out")), d.api, &[])
            .await
            .unwrap();
        assert_eq!(code, 0, "{name}: {err}");
    }
    let length = 16 * MIB as u64;
    let piece_length = wire::piece_length::piece_length_for(Some(length));
    let pieces = wire::piece_length::piece_count(length, piece_length);
    let stat = operator_stat(scheduler.grpc, &task_id).await;
    let task = &stat.tasks[0];
    assert_eq!(task.source_host_id, "seed", "{stat:?}");
    assert_eq!(task.recorded_digests, pieces);
    let honest = stored_digests(&a.spec.data_dir, &task_id);
    // b's copy becomes forged bytes under digests of its own.
    let mut b = b;
    b.proc.terminate(Duration::from_secs(5));
    forge_stored_task(&b.spec.data_dir, &task_id);
    let forged = stored_digests(&b.spec.data_dir, &task_id);
    let _b = b.restart(dir.path()).await.unwrap();

    let mut attacker = member_scheduler(scheduler.grpc, Role::Node, "b").await;
    for parent in ["seed", "a"] {
        let answer = attacker
            .report_parent_failure(proto::ReportParentFailureRequest {
                task_id: task_id.clone(),
                host_id: "b".into(),
                parent_host_id: parent.into(),
                reason: FailureReason::Connect as i32,
                ..Default::default()
            })
            .await;
        eprintln!("b reports {parent} unreachable: {answer:?}");
    }
    let answer = attacker
        .register_peer(proto::RegisterPeerRequest {
            task_id: task_id.clone(),
            host_id: "b".into(),
            url: url.clone(),
            no_seed: true,
            ..Default::default()
        })
        .await;
    eprintln!("b registers without a seed: {answer:?}");
    // Twice, other digests each time: the honest digests would otherwise
    // pass for a superseded generation (stale, not forged).
    let zeros = vec![format!("sha256:{}", "0".repeat(64)); forged.len()];
    for digests in [&zeros, &forged] {
        let answer = attacker
            .report_pieces(proto::ReportPiecesRequest {
                task_id: task_id.clone(),
                host_id: "b".into(),
                shape: Some(proto::TaskShape {
                    content_length: length,
                    piece_length,
                    piece_count: pieces,
                    known: true,
                }),
                pieces: (0..pieces).collect(),
                complete: true,
                url: url.clone(),
                digests: digests
                    .iter()
                    .enumerate()
                    .map(|(i, d)| proto::PieceDigest {
                        index: i as u32,
                        digest: d.clone(),
                    })
                    .collect(),
                ..Default::default()
            })
            .await;
        eprintln!("b reports its own digests: {answer:?}");
    }
    // b accuses the honest holders, claiming what they really serve.
    for parent in ["seed", "a"] {
        let answer = attacker
            .report_parent_failure(proto::ReportParentFailureRequest {
                task_id: task_id.clone(),
                host_id: "b".into(),
                parent_host_id: parent.into(),
                reason: FailureReason::DigestMismatch as i32,
                piece: 0,
                claimed_digest: honest[0].clone(),
                ..Default::default()
            })
            .await;
        eprintln!("b accuses {parent}: {answer:?}");
    }
    let stat = operator_stat(scheduler.grpc, &task_id).await;
    eprintln!(
        "after b: source {:?}, elections {}",
        stat.tasks[0].source_host_id, stat.tasks[0].source_elections
    );

    // An honest node downloads the URL (no content digest to check).
    let c = DaemonProc::start(member("c", 13, false), dir.path())
        .await
        .unwrap();
    let out = dir.path().join("c.out");
    let (code, err) = dfget(&url, &out, c.api, &[]).await.unwrap();
    let got = std::fs::read(&out).unwrap_or_default();
    eprintln!(
        "c: exit {code}, content {} ({} bytes)",
        if sha256_hex(&got) == digest {
            "the origin's"
        } else {
            "FORGED by b"
        },
        got.len()
    );
    // c reports what fails the record it checks against; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stat = operator_stat(scheduler.grpc, "").await;
    eprintln!("quarantined: {:?}", stat.quarantined);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sha256_hex(&got), digest, "c took b's forged bytes");
    for honest in ["seed", "a"] {
        assert!(
            !stat.quarantined.iter().any(|q| q == honest),
            "{honest} quarantined on b's word: {:?}",
            stat.quarantined
        );
    }
    drop(seed);
}

/// Stat with a node's certificate: before, every host with its address and
/// every task's full URL, signed query included, with who holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sees_only_its_own_tasks() {
    use identity::Role;
    let dir = tempfile::tempdir().unwrap();
    let scheduler = SchedulerProc::start(ip(75, 1), dir.path()).await.unwrap();
    let signed = "http://127.0.0.1:1/private/blob?Expires=99&Signature=SECRETSIG";
    let mut victim = member_scheduler(scheduler.grpc, Role::Node, "victim").await;
    let mut host = announce("victim", proto::HostType::Normal);
    host.host.as_mut().unwrap().ip = "127.0.75.10".into();
    victim.announce_host(host).await.unwrap();
    victim
        .register_peer(proto::RegisterPeerRequest {
            task_id: "v".repeat(64),
            host_id: "victim".into(),
            url: signed.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut m = member_scheduler(scheduler.grpc, Role::Node, "m").await;
    let mut host = announce("m", proto::HostType::Normal);
    host.host.as_mut().unwrap().ip = "127.0.75.11".into();
    m.announce_host(host).await.unwrap();
    m.register_peer(proto::RegisterPeerRequest {
        task_id: "m".repeat(64),
        host_id: "m".into(),
        url: "http://127.0.0.1:1/mine?token=MYTOKEN".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let seen = m
        .stat(proto::StatRequest::default())
        .await
        .map(|r| r.into_inner());
    eprintln!("m's Stat: {seen:?}");
    let seen = seen.unwrap();
    let text = format!("{seen:?}");
    assert!(!text.contains("SECRETSIG"), "a signed query leaked: {text}");
    assert!(!text.contains("victim"), "another member's host: {text}");
    assert!(!text.contains("127.0.75.10"), "another member's address");
    assert_eq!(seen.tasks.len(), 1, "{text}");
    assert_eq!(seen.tasks[0].task_id, "m".repeat(64));
    assert!(!text.contains("MYTOKEN"), "URLs carry no query: {text}");
    // Asking for the victim's task by id shows nothing either.
    let by_id = m
        .stat(proto::StatRequest {
            task_id: "v".repeat(64),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(by_id.tasks.is_empty() && !format!("{by_id:?}").contains("victim"));
    // The operator sees everything, still without signed queries.
    let all = operator_stat(scheduler.grpc, "").await;
    assert_eq!(all.tasks.len(), 2);
    assert_eq!(all.hosts.len(), 2);
    assert!(!format!("{all:?}").contains("SECRETSIG"));
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// 1,500 ReportPieces for new tasks, each with an 8,000-character URL and a
/// 32 KiB bitmap: before, +62 MiB in under a second with nothing refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_take_the_scheduler_past_its_share_of_memory() {
    use identity::Role;
    let dir = tempfile::tempdir().unwrap();
    let scheduler = SchedulerProc::start(ip(76, 1), dir.path()).await.unwrap();
    let mut m = member_scheduler(scheduler.grpc, Role::Node, "m").await;
    let mut host = announce("m", proto::HostType::Normal);
    host.host.as_mut().unwrap().ip = "127.0.76.11".into();
    m.announce_host(host).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = scheduler.proc.pid();
    let before = rss_bytes(pid);
    let url = format!("http://127.0.0.1:1/{}", "x".repeat(7_970));
    let started = Instant::now();
    let (mut accepted, mut refused) = (0, 0);
    for n in 0..1_500u32 {
        let answer = m
            .report_pieces(proto::ReportPiecesRequest {
                task_id: format!("{n:064x}"),
                host_id: "m".into(),
                replace: true,
                bitmap: vec![0xff; 32 * 1024],
                url: url.clone(),
                ..Default::default()
            })
            .await;
        match answer {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_bytes(pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "scheduler RSS {} MiB -> {} MiB (+{:.1} MiB) in {:.2} s; {accepted} accepted, {refused} refused",
        before >> 20,
        after >> 20,
        grown as f64 / MIB as f64,
        took.as_secs_f64()
    );
    let share = scheduler::budget::MEMBER_SHARE_BYTES;
    assert!(
        grown <= share,
        "one member grew the scheduler by {grown} bytes, past its share of {share}"
    );
    assert!(refused > 0, "nothing refused");
    // The member's own work still goes through within its share.
    let mut host = announce("m", proto::HostType::Normal);
    host.host.as_mut().unwrap().ip = "127.0.76.11".into();
    m.announce_host(host).await.unwrap();
}
