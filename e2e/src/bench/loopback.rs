//! One parent to one child on loopback, no shaping: a dfdaemon that holds
//! a blob serves it to a fresh dfdaemon (the scheduler names it as parent),
//! whose registry mirror streams it to a reader that hashes it. The child's
//! throughput is set against `sha256sum` over the parent's stored copy of
//! the same blob, page cache warm, measured in the same round. A second
//! baseline is a plain copy of the same bytes into a new file beside the
//! child's (what storing them costs by itself: on a virtual machine whose
//! memory goes back to the host when freed, filling fresh page cache is
//! about as slow as hashing).

use anyhow::{bail, Context};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::memory::{daemon_args, read_timeout};
use super::mirror_read::{client, read_blob};
use super::synthetic::{BlobServer, SyntheticBlob};
use crate::procs::{DaemonProc, DaemonSpec, SchedulerProc};

const MIB: u64 = 1 << 20;

pub struct LoopbackConfig {
    pub blob_mib: u64,
    pub rounds: usize,
    pub seed: u64,
    /// Data dirs and logs; the caller removes it.
    pub work: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub child_seconds: f64,
    pub child_mb_s: f64,
    pub sha256sum_seconds: f64,
    pub sha256sum_mb_s: f64,
    /// child / sha256sum throughput.
    pub ratio: f64,
    /// Copying the stored blob into a new file, in the same round.
    pub copy_seconds: f64,
    pub copy_mb_s: f64,
    /// child / copy throughput.
    pub copy_ratio: f64,
    /// Blob bytes the registry sent during the child's download (0: all
    /// of it came from the parent).
    pub origin_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoopbackReport {
    pub blob_bytes: u64,
    pub parent_seconds: f64,
    pub rounds: Vec<Round>,
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 21, last))
}

fn mb_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// Copies `from` into the new file `to` in 1 MiB reads and writes (no
/// sync, as the child stores pieces); its time. `to` is removed after.
pub async fn time_fresh_copy(from: &Path, to: &Path) -> anyhow::Result<f64> {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        use std::io::{Read, Write};
        let started = Instant::now();
        let mut input =
            std::fs::File::open(&from).with_context(|| format!("opening {}", from.display()))?;
        let mut output =
            std::fs::File::create(&to).with_context(|| format!("creating {}", to.display()))?;
        let mut buf = vec![0u8; MIB as usize];
        loop {
            let n = input.read(&mut buf).context("reading the stored blob")?;
            if n == 0 {
                break;
            }
            output.write_all(&buf[..n]).context("writing the copy")?;
        }
        drop(output);
        let seconds = started.elapsed().as_secs_f64();
        std::fs::remove_file(&to).with_context(|| format!("removing {}", to.display()))?;
        Ok(seconds)
    })
    .await?
}

/// Runs `sha256sum FILE`; its time, after checking the printed digest.
pub async fn time_sha256sum(file: &Path, digest: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = tokio::process::Command::new("sha256sum")
        .arg(file)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), out)
        .await
        .context("sha256sum took longer than 600 s")?
        .context("running sha256sum")?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "sha256sum {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let printed = String::from_utf8_lossy(&out.stdout);
    let hex = printed.split_whitespace().next().unwrap_or_default();
    if Some(hex) != digest.strip_prefix("sha256:") {
        bail!("sha256sum {} printed {hex}, not {digest}", file.display());
    }
    Ok(seconds)
}

fn spec(name: &str, ip: IpAddr, scheduler: &SchedulerProc, work: &Path, mib: u64) -> DaemonSpec {
    DaemonSpec {
        name: name.into(),
        ip,
        scheduler: Some(scheduler.grpc),
        seed: false,
        data_dir: work.join(name),
        extra_args: daemon_args(mib),
        peer_port: 0,
        admin_port: 0,
    }
}

pub async fn run(config: &LoopbackConfig) -> anyhow::Result<LoopbackReport> {
    let blob = SyntheticBlob {
        seed: config.seed,
        len: config.blob_mib * MIB,
    };
    eprintln!("hashing the {} MiB blob...", config.blob_mib);
    let digest = tokio::task::spawn_blocking(move || blob.digest()).await?;
    let server = BlobServer::start("127.0.0.1:0", blob, digest.clone()).await?;
    let scheduler = SchedulerProc::start(loopback(1), &config.work).await?;
    let parent_spec = spec(
        "parent",
        loopback(2),
        &scheduler,
        &config.work,
        config.blob_mib,
    );
    let parent = DaemonProc::start(parent_spec, &config.work).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let http = client()?;
    let timeout = read_timeout(blob.len);
    eprintln!("the parent downloads the blob from the registry...");
    let first = read_blob(&http, parent.proxy, &server.host(), &digest, timeout)
        .await
        .with_context(|| format!("parent: {}", parent.proc.log_tail(10)))?;
    let stored = parent
        .spec
        .data_dir
        .join("tasks")
        .join(digest.trim_start_matches("sha256:"))
        .join("data");
    let len = std::fs::metadata(&stored)
        .with_context(|| format!("the parent's copy {}", stored.display()))?
        .len();
    if len != blob.len {
        bail!("{} holds {len} bytes, not {}", stored.display(), blob.len);
    }
    // Warm the page cache for sha256sum (the parent serves from it too).
    time_sha256sum(&stored, &digest).await?;

    let mut rounds = Vec::new();
    for round in 0..config.rounds {
        let name = format!("child-{}", round + 1);
        let child_spec = spec(
            &name,
            loopback(10 + round as u8),
            &scheduler,
            &config.work,
            config.blob_mib,
        );
        let data_dir = child_spec.data_dir.clone();
        let mut child = DaemonProc::start(child_spec, &config.work).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = server.bytes_served();
        let read = read_blob(&http, child.proxy, &server.host(), &digest, timeout)
            .await
            .with_context(|| format!("{name}: {}", child.proc.log_tail(10)))?;
        let origin_bytes = server.bytes_served() - before;
        child.proc.terminate(Duration::from_secs(5));
        drop(child);
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("removing {}", data_dir.display()))?;
        let sha_seconds = time_sha256sum(&stored, &digest).await?;
        let copy_seconds = time_fresh_copy(&stored, &config.work.join("copy")).await?;
        let r = Round {
            child_seconds: read.seconds,
            child_mb_s: mb_s(read.bytes, read.seconds),
            sha256sum_seconds: sha_seconds,
            sha256sum_mb_s: mb_s(len, sha_seconds),
            ratio: mb_s(read.bytes, read.seconds) / mb_s(len, sha_seconds),
            copy_seconds,
            copy_mb_s: mb_s(len, copy_seconds),
            copy_ratio: mb_s(read.bytes, read.seconds) / mb_s(len, copy_seconds),
            origin_bytes,
        };
        eprintln!("  {}", r.text(round + 1));
        rounds.push(r);
        // The stopped child leaves the scheduler's view (host TTL 4 s)
        // before the next one asks for parents.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(LoopbackReport {
        blob_bytes: blob.len,
        parent_seconds: first.seconds,
        rounds,
    })
}

impl Round {
    fn text(&self, n: usize) -> String {
        format!(
            "round {n}: child {:.0} MB/s ({:.2} s), sha256sum {:.0} MB/s ({:.2} s), ratio {:.2}; copy to a new file {:.0} MB/s ({:.2} s), child/copy {:.2}; origin {} bytes",
            self.child_mb_s,
            self.child_seconds,
            self.sha256sum_mb_s,
            self.sha256sum_seconds,
            self.ratio,
            self.copy_mb_s,
            self.copy_seconds,
            self.copy_ratio,
            self.origin_bytes
        )
    }
}

impl LoopbackReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "blob {:.0} MiB, one parent dfdaemon to one child on loopback (MB = 10^6 bytes); the parent fetched it in {:.2} s\n",
            self.blob_bytes as f64 / MIB as f64,
            self.parent_seconds
        );
        for (i, r) in self.rounds.iter().enumerate() {
            out.push_str(&r.text(i + 1));
            out.push('\n');
        }
        out
    }
}
