//! The cache quota is a hard limit, and a full disk heals: real dfdaemons,
//! real files, the bytes on disk measured.

use dragonfly_e2e::origin::{random_bytes, sha256_hex, Origin};
use dragonfly_e2e::procs::{dfget, DaemonProc, DaemonSpec};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 71, last))
}

fn spec(name: &str, ip: IpAddr, data_dir: &Path, extra: &[&str]) -> DaemonSpec {
    DaemonSpec {
        name: name.into(),
        ip,
        scheduler: None,
        seed: false,
        data_dir: data_dir.to_path_buf(),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        peer_port: 0,
        admin_port: 0,
    }
}

/// Bytes the task files really occupy (allocated blocks, as `du` counts).
fn bytes_on_disk(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.join("tasks")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() == "data" {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_never_grows_past_its_quota() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    let data_dir = dir.path().join("data");
    let d = DaemonProc::start(
        spec("d", ip(1), &data_dir, &["--cache-size", "8MiB"]),
        dir.path(),
    )
    .await
    .unwrap();
    let mut peak = 0;
    // Three 5 MiB files one after another: each needs the one before
    // evicted, at once, not at the next collection a minute later.
    for n in 0..3 {
        let data = random_bytes(5 * MIB);
        let url = origin.add(&format!("f{n}.bin"), data.clone());
        let out = dir.path().join(format!("out{n}"));
        let (code, stderr) = dfget(&url, &out, d.api, &["--no-direct"]).await.unwrap();
        assert_eq!(code, 0, "file {n}: {stderr}");
        assert_eq!(sha256_hex(&std::fs::read(&out).unwrap()), sha256_hex(&data));
        peak = peak.max(bytes_on_disk(&data_dir));
    }
    assert!(
        peak <= 8 * MIB as u64,
        "{peak} bytes on disk for an 8 MiB quota"
    );
    // Content larger than the quota cannot be cached: a clear failure,
    // and the quota still holds.
    let big = origin.add("big.bin", random_bytes(12 * MIB));
    let (code, stderr) = dfget(&big, &dir.path().join("big"), d.api, &["--no-direct"])
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(stderr.contains("quota"), "{stderr}");
    assert!(bytes_on_disk(&data_dir) <= 8 * MIB as u64);
}

/// Mounts a tmpfs of `mib` MiB at `at` for the test's lifetime.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: usize) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("small-disk");
    // A real full disk needs a small filesystem: a tmpfs (root only; the
    // test command runs this suite as root).
    let Some(_disk) = Tmpfs::mount(&data_dir, 12) else {
        eprintln!("SKIPPED a_full_disk_is_reported_and_heals: mounting a tmpfs needs root");
        return;
    };
    let origin = Origin::start("127.0.0.1:0").await.unwrap();
    // The quota is larger than the disk: only ENOSPC can stop the writes.
    let d = DaemonProc::start(
        spec("d", ip(2), &data_dir, &["--cache-size", "1GiB"]),
        dir.path(),
    )
    .await
    .unwrap();
    let first = origin.add("first.bin", random_bytes(7 * MIB));
    let (code, stderr) = dfget(&first, &dir.path().join("first"), d.api, &["--no-direct"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    // The second file does not fit next to the first.
    let data = random_bytes(7 * MIB);
    let second = origin.add("second.bin", data.clone());
    let out = dir.path().join("second");
    let (code, _) = dfget(&second, &out, d.api, &["--no-direct"]).await.unwrap();
    let readyz = format!("http://{}/readyz", d.admin);
    if code != 0 {
        // The disk filled: the collector evicts the first file and
        // readiness comes back; the same download then succeeds.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, stderr) = dfget(&second, &out, d.api, &["--no-direct"]).await.unwrap();
            if code == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "never recovered: {stderr}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert_eq!(sha256_hex(&std::fs::read(&out).unwrap()), sha256_hex(&data));
    let status = reqwest::get(&readyz).await.unwrap().status();
    assert_eq!(status, reqwest::StatusCode::OK);
    let log = d.proc.log_tail(200);
    assert!(
        log.contains("evicted from cache"),
        "the full disk was not relieved by eviction: {log}"
    );
}
