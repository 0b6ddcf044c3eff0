//! A node whose cache cannot store a byte (its disk above the high
//! watermark, nothing evictable) must not break pulls: the mirror answers a
//! 5xx before the status line commits to a body, so containerd moves on to
//! the registry. A 200 ending after 0 bytes fails the pull instead.

use dragonfly_e2e::origin::random_bytes;
use dragonfly_e2e::procs::{DaemonProc, DaemonSpec};
use dragonfly_e2e::registry::FakeRegistry;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_cannot_store_answers_5xx_not_an_empty_200() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let digest = registry.push_blob(random_bytes(3 * 1024 * 1024));
    // Watermarks any real disk is above: every piece write is refused.
    let spec = DaemonSpec {
        name: "full".into(),
        ip: IpAddr::V4(Ipv4Addr::new(127, 0, 8, 1)),
        scheduler: None,
        seed: false,
        data_dir: dir.path().join("full"),
        extra_args: ["--gc-high-watermark", "2", "--gc-low-watermark", "1"]
            .map(String::from)
            .to_vec(),
        peer_port: 0,
        admin_port: 0,
    };
    let daemon = DaemonProc::start(spec, dir.path())
        .await
        .expect("dfdaemon starts");
    let url = format!(
        "http://{}/v2/library/app/blobs/{digest}?ns={}",
        daemon.proxy,
        registry.host()
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let response = client.get(&url).send().await.expect("an answer");
    let status = response.status();
    let body = response.bytes().await.map(|b| b.len());
    println!("store refuses writes: {status}, body {body:?}");
    assert!(
        status.is_server_error(),
        "expected a 5xx containerd falls back from, got {status} with body {body:?}\n{}",
        daemon.proc.log_tail(20)
    );
}
