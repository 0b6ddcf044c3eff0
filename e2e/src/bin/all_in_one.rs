//! The all-in-one local cluster: a scheduler, a seed peer and several
//! dfdaemons on loopback addresses, plus a demo origin. Downloads the same
//! file through every daemon at once and shows where the bytes came from.
//! No Kubernetes, no root.

use clap::Parser;
use dragonfly_e2e::origin::{random_bytes, sha256_hex, Origin};
use dragonfly_e2e::procs::{dfget, tasks, DaemonProc, DaemonSpec, SchedulerProc};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "dragonfly-all-in-one",
    about = "Run a local P2P cluster on loopback and distribute a file through it"
)]
struct Args {
    /// Number of dfdaemons (besides the seed).
    #[arg(long, default_value_t = 4)]
    peers: u8,
    /// Size of the demo file in MiB.
    #[arg(long, default_value_t = 128)]
    size_mib: usize,
    /// Serve this file instead of random bytes.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Origin bandwidth per response in MiB/s (0: unlimited), to make the
    /// origin the bottleneck a real registry is.
    #[arg(long, default_value_t = 0)]
    origin_mibps: u64,
    /// Keep the cluster running after the demo until Ctrl-C.
    #[arg(long)]
    stay: bool,
    /// Where to put data dirs and logs (default: a temp dir, removed at exit).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

const MIB: u64 = 1024 * 1024;

fn loopback(block: u8, last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, block, last))
}

async fn demo(args: Args, dir: PathBuf) -> anyhow::Result<()> {
    let origin = Origin::start("127.0.0.1:0").await?;
    let data = match &args.file {
        Some(path) => bytes::Bytes::from(std::fs::read(path)?),
        None => random_bytes(args.size_mib * MIB as usize),
    };
    let size = data.len() as u64;
    let digest = sha256_hex(&data);
    let url = origin.add("demo.bin", data);
    origin.set_throttle(args.origin_mibps * MIB);
    println!("origin     {url}  ({} MiB, {digest})", size / MIB);

    let scheduler = SchedulerProc::start(loopback(9, 1), &dir).await?;
    println!(
        "scheduler  {}  (metrics http://{}/metrics)",
        scheduler.grpc, scheduler.admin
    );
    let spec = |name: String, ip: IpAddr, seed: bool| DaemonSpec {
        data_dir: dir.join(&name),
        name,
        ip,
        scheduler: Some(scheduler.grpc),
        seed,
        extra_args: Vec::new(),
        peer_port: 0,
        admin_port: 0,
    };
    let seed = DaemonProc::start(spec("seed".into(), loopback(9, 2), true), &dir).await?;
    println!(
        "seed peer  {}  (metrics http://{}/metrics)",
        seed.peer, seed.admin
    );
    let mut daemons = Vec::new();
    for i in 0..args.peers {
        let d =
            DaemonProc::start(spec(format!("peer-{i}"), loopback(9, 10 + i), false), &dir).await?;
        println!(
            "dfdaemon   {}  (metrics http://{}/metrics)",
            d.peer, d.admin
        );
        daemons.push(d);
    }
    // One heartbeat so the scheduler knows every host.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    println!(
        "\ndownloading through {} dfdaemons at once with dfget...",
        daemons.len()
    );
    let started = Instant::now();
    let mut jobs = Vec::new();
    for d in &daemons {
        let out = dir.join(format!("{}.out", d.spec.name));
        let (url, peer, name) = (url.clone(), d.api, d.spec.name.clone());
        let digest_arg = format!("--digest={digest}");
        jobs.push(tokio::spawn(async move {
            let result = dfget(&url, &out, peer, &[&digest_arg]).await;
            (name, started.elapsed(), out, result)
        }));
    }
    let mut failures = 0;
    for job in jobs {
        let (name, took, out, result) = job.await?;
        match result {
            Ok((0, _)) => {
                let ok = sha256_hex(&std::fs::read(&out)?) == digest;
                println!(
                    "  {name:<8} done in {:>6.2}s  digest {}",
                    took.as_secs_f64(),
                    if ok { "ok" } else { "MISMATCH" }
                );
                failures += usize::from(!ok);
            }
            Ok((code, stderr)) => {
                println!("  {name:<8} FAILED (exit {code}): {}", stderr.trim());
                failures += 1;
            }
            Err(e) => {
                println!("  {name:<8} FAILED: {e}");
                failures += 1;
            }
        }
    }
    let mut from_peers = 0;
    let mut from_origin = 0;
    for d in daemons.iter().chain(std::iter::once(&seed)) {
        for t in tasks(d).await? {
            from_peers += t["from_peers"].as_u64().unwrap_or(0);
            from_origin += t["from_origin"].as_u64().unwrap_or(0);
        }
    }
    let delivered = size * daemons.len() as u64;
    println!("\nsummary");
    println!(
        "  delivered          {:>8.1} MiB to {} daemons",
        delivered as f64 / MIB as f64,
        daemons.len()
    );
    println!(
        "  origin served      {:>8.1} MiB  (counted at the origin: {:.2}x the file, {} requests)",
        origin.bytes_served() as f64 / MIB as f64,
        origin.bytes_served() as f64 / size as f64,
        origin.requests()
    );
    println!(
        "  daemons from origin{:>8.1} MiB  (the seed, elected back-to-source)",
        from_origin as f64 / MIB as f64
    );
    println!(
        "  daemons from peers {:>8.1} MiB",
        from_peers as f64 / MIB as f64
    );
    println!(
        "  wall time          {:>8.2} s",
        started.elapsed().as_secs_f64()
    );
    if args.stay {
        println!(
            "\ncluster stays up; logs in {}; Ctrl-C to stop",
            dir.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    if failures > 0 {
        anyhow::bail!("{failures} download(s) failed; logs in {}", dir.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (dir, _temp) = match &args.workdir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("dragonfly-local-")
                .tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    // Every process handle lives inside `demo`; returning (or Ctrl-C
    // dropping the future) kills them by PID.
    tokio::select! {
        result = demo(args, dir) => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; stopping every process");
            Ok(())
        }
    }
}
