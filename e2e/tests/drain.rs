//! SIGTERM drains: a blob streaming to containerd when kubelet stops the
//! pod runs to its last byte (within the shutdown grace), while new
//! connections are refused at once so new pulls move on to the registry.

use dragonfly_e2e::origin::{random_bytes, sha256_hex};
use dragonfly_e2e::procs::{DaemonProc, DaemonSpec};
use dragonfly_e2e::registry::FakeRegistry;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// Reads `url` slowly (about `pace` per MiB), sending SIGTERM to `daemon`
/// once the first MiB has arrived. Returns the body's sha256 and length, and
/// how long after SIGTERM the last byte came.
async fn slow_read_across_sigterm(
    daemon: &DaemonProc,
    url: &str,
    pace: Duration,
) -> anyhow::Result<(String, usize, Duration)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(90))
        .build()?;
    let response = client.get(url).send().await?.error_for_status()?;
    let mut body = response.bytes_stream();
    let mut hasher = Sha256::new();
    let (mut len, mut next_pause) = (0usize, MIB);
    let mut terminated_at = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        len += chunk.len();
        while len >= next_pause {
            if terminated_at.is_none() {
                daemon.proc.sigterm();
                terminated_at = Some(Instant::now());
            }
            tokio::time::sleep(pace).await;
            next_pause += MIB;
        }
    }
    let since = terminated_at.map(|t| t.elapsed()).unwrap_or_default();
    Ok((format!("sha256:{}", hex(&hasher.finalize())), len, since))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn start(dir: &std::path::Path, grace: &str) -> DaemonProc {
    let spec = DaemonSpec {
        name: "drain".into(),
        ip: IpAddr::V4(Ipv4Addr::new(127, 0, 7, 1)),
        scheduler: None,
        seed: false,
        data_dir: dir.join("drain"),
        extra_args: vec!["--shutdown-grace".into(), grace.into()],
        peer_port: 0,
        admin_port: 0,
    };
    DaemonProc::start(spec, dir).await.expect("dfdaemon starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_in_flight_at_sigterm_finishes_and_new_connections_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let data = random_bytes(48 * MIB);
    let digest = registry.push_blob(data.clone());
    registry.make_public("library/app");
    let mut daemon = start(dir.path(), "45s").await;
    let url = format!(
        "http://{}/v2/library/app/blobs/{digest}?ns={}",
        daemon.proxy,
        registry.host()
    );

    // 48 MiB at 200 ms a MiB: the stream outlives SIGTERM by about 9 s,
    // longer than any fixed few-second cut.
    let proxy = daemon.proxy;
    let refused = tokio::spawn(async move {
        // After SIGTERM the mirror's listener closes: a new pull must be
        // refused (containerd then goes to the registry), not hang.
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::net::TcpStream::connect(proxy).await.is_err()
    });
    let (sha, len, after) = slow_read_across_sigterm(&daemon, &url, Duration::from_millis(200))
        .await
        .unwrap_or_else(|e| panic!("the stream was cut: {e}\n{}", daemon.proc.log_tail(20)));
    assert_eq!(len, data.len(), "every byte of the blob");
    assert_eq!(sha, sha256_hex(&data), "the right bytes");
    assert!(
        after > Duration::from_secs(5),
        "the stream outlived SIGTERM by {after:?}: the test did not exercise the drain"
    );
    assert!(
        refused.await.unwrap(),
        "a new connection after SIGTERM was accepted"
    );
    assert!(
        daemon.proc.wait_exit(Duration::from_secs(20)),
        "dfdaemon did not exit once the stream was done: {}",
        daemon.proc.log_tail(20)
    );
    println!("drain: {len} bytes streamed, the last {after:?} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outliving_the_shutdown_grace_is_cut_then() {
    // The other side of the same bound: past the grace the daemon exits
    // rather than hang the node's shutdown.
    let dir = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::start("127.0.0.1:0", None).await.unwrap();
    let data = random_bytes(48 * MIB);
    let digest = registry.push_blob(data.clone());
    registry.make_public("library/app");
    let mut daemon = start(dir.path(), "2s").await;
    let url = format!(
        "http://{}/v2/library/app/blobs/{digest}?ns={}",
        daemon.proxy,
        registry.host()
    );
    let outcome = slow_read_across_sigterm(&daemon, &url, Duration::from_millis(200)).await;
    let complete = matches!(&outcome, Ok((_, len, _)) if *len == data.len());
    assert!(!complete, "a 9 s stream survived a 2 s shutdown grace");
    assert!(
        daemon.proc.wait_exit(Duration::from_secs(15)),
        "dfdaemon did not exit after its grace: {}",
        daemon.proc.log_tail(20)
    );
}
