//! dragonfly-bench: the multi-host benchmark and fault matrix in network
//! namespaces (`run`, as root), two loopback figures (`memory`: dfdaemon's
//! RSS while streaming a large blob to several readers; `loopback`: one
//! parent's throughput to one child against sha256sum), plus the small
//! programs `run` starts inside the namespaces: the origin registry, the
//! containerd-like puller, a GET probe.

use clap::{Parser, Subcommand};
use dragonfly_e2e::bench::image::{Image, REPOSITORY, TAG};
use dragonfly_e2e::bench::loopback::LoopbackConfig;
use dragonfly_e2e::bench::memory::MemoryConfig;
use dragonfly_e2e::bench::pull::PullTarget;
use dragonfly_e2e::bench::scenarios::{self, BenchConfig, ALL_FAULTS};
use dragonfly_e2e::registry::FakeRegistry;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dragonfly-bench",
    about = "Multi-host distribution benchmark and fault matrix in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark (needs root: namespaces, veth, tc).
    Run(RunArgs),
    /// dfdaemon's peak memory while it streams one large blob to several
    /// readers at once through its registry mirror (loopback, no root).
    Memory(MemoryArgs),
    /// One parent dfdaemon to one child on loopback: the child's throughput
    /// against sha256sum over the same blob, round by round (no root).
    Loopback(LoopbackArgs),
    /// Serve the generated image as an OCI registry (runs in the origin namespace).
    Origin(OriginArgs),
    /// Pull the image like containerd and print the result as JSON.
    Pull(PullArgs),
    /// GET a URL and print the body (probes inside namespaces).
    Get { url: String },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, default_value_t = 8)]
    hosts: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 128)]
    layer_mib: usize,
    #[arg(long, default_value_t = 100)]
    node_mbit: u32,
    #[arg(long, default_value_t = 100)]
    origin_mbit: u32,
    /// Scenarios to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
    scenarios: Vec<String>,
    /// Faults to inject (`all`, `none`, or a list).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    faults: Vec<String>,
    /// Pull through dfdaemon's task API rather than its registry mirror.
    #[arg(long)]
    task_api: bool,
    /// Cap dfdaemon uploads at this share of the node link (0: uncapped),
    /// as an operator sets `--upload-rate` below the NIC speed so uploads
    /// never queue up the node's own downloads.
    #[arg(long, default_value_t = 0.0)]
    upload_share: f64,
    /// Parents the scheduler offers per answer (the scheduler's default).
    #[arg(long, default_value_t = 8)]
    max_parents: usize,
    /// dfdaemon YAML config for every node, to compare tunings (the
    /// harness's own flags, e.g. addresses and data dirs, still win).
    #[arg(long)]
    dfdaemon_config: Option<PathBuf>,
    /// Cluster identity (mutual TLS between members) in the swarm
    /// scenarios: on, off, or both (c and d each run without, then with).
    #[arg(long, value_enum, default_value = "on")]
    tls: scenarios::TlsMode,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the JSON report and the PNG plot go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Keep data dirs and process logs here (default: a temp dir, removed).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct MemoryArgs {
    /// Size of the blob (generated as it is served; it costs disk only in
    /// dfdaemon's cache).
    #[arg(long, default_value_t = 1024)]
    blob_mib: u64,
    /// Readers downloading it at once.
    #[arg(long, default_value_t = 8)]
    readers: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Data dir and process logs (default: a temp dir, removed).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LoopbackArgs {
    #[arg(long, default_value_t = 1024)]
    blob_mib: u64,
    /// Children served one after the other, each timed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Data dirs and process logs (default: a temp dir, removed).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct OriginArgs {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    stats_listen: String,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    layers: usize,
    #[arg(long)]
    layer_mib: usize,
}

#[derive(clap::Args)]
struct PullArgs {
    #[arg(long)]
    base: String,
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long)]
    ns: Option<String>,
    #[arg(long)]
    task_api: Option<String>,
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    #[arg(long, default_value_t = 3)]
    attempts: u32,
}

async fn origin(args: OriginArgs) -> anyhow::Result<()> {
    let image = Image::generate(args.seed, args.layers, args.layer_mib << 20);
    let registry = FakeRegistry::start(&args.listen, None).await?;
    for layer in &image.layers {
        registry.push_blob(layer.clone());
    }
    registry.push_blob(image.config.clone());
    registry.push_manifest(REPOSITORY, TAG, image.manifest.clone());
    let (image_bytes, image_pieces) = (image.size(), image.pieces());
    drop(image);
    dragonfly_e2e::bench::cluster::serve_origin_stats(
        &args.stats_listen,
        registry,
        image_bytes,
        image_pieces,
    )
    .await
}

async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow::anyhow!("header {h:?} is not 'Name: value'"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let target = PullTarget {
        base: args.base,
        repository: REPOSITORY.into(),
        tag: TAG.into(),
        headers,
        ns: args.ns,
        concurrency: args.concurrency,
        attempts: args.attempts,
        task_api: args.task_api,
    };
    let result = target.pull().await;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn get(url: String) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let resp = client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?;
    print!("{}", resp.text().await?);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let faults: Vec<String> = match args.faults.as_slice() {
        [one] if one == "all" => ALL_FAULTS.iter().map(|s| s.to_string()).collect(),
        [one] if one == "none" => Vec::new(),
        list => list.to_vec(),
    };
    std::fs::create_dir_all(&args.out)?;
    let temp = tempfile::Builder::new()
        .prefix("dragonfly-bench-")
        .tempdir()?;
    let work = match &args.workdir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let config = BenchConfig {
        hosts: args.hosts,
        layers: args.layers,
        layer_mib: args.layer_mib,
        node_mbit: args.node_mbit,
        origin_mbit: args.origin_mbit,
        seed: args.seed,
        scenarios: args.scenarios,
        faults,
        task_api: args.task_api,
        upload_share: args.upload_share,
        max_parents: args.max_parents,
        dfdaemon_config: args.dfdaemon_config.clone(),
        tls: args.tls,
        work,
    };
    // Ctrl-C drops the run, which kills every process and deletes every
    // namespace on the way out.
    let report = tokio::select! {
        report = scenarios::run(config) => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; processes stopped and namespaces removed"),
    };
    let table = report.table();
    println!("{table}");
    let json = args.out.join("bench.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(args.out.join("bench.txt"), &table)?;
    let png = args.out.join("bench-cdf.png");
    dragonfly_e2e::bench::plot::cdf_png(&report, &png)?;
    println!(
        "wrote {}, {} and {}",
        json.display(),
        args.out.join("bench.txt").display(),
        png.display()
    );
    // A timeline lost is reported, not fatal: the figures above stand.
    for s in report.scenarios.iter().filter(|s| s.links.is_some()) {
        let png = args.out.join(format!("links-{}.png", s.key));
        match dragonfly_e2e::bench::plot::links_png(&report, s, &png) {
            Ok(()) => println!("wrote {}", png.display()),
            Err(e) => eprintln!("link plot of {}: {e:#}", s.key),
        }
    }
    let failed: usize = report
        .scenarios
        .iter()
        .map(|s| s.failed_pulls)
        .sum::<usize>()
        + report.faults.iter().map(|f| f.failed_pulls).sum::<usize>();
    let corrupt: u32 = report
        .scenarios
        .iter()
        .flat_map(|s| s.hosts.iter().map(|h| h.corrupt_blobs))
        .sum::<u32>()
        + report.faults.iter().map(|f| f.corrupt_blobs).sum::<u32>();
    if failed > 0 || corrupt > 0 {
        anyhow::bail!("{failed} failed pull(s), {corrupt} corrupt blob(s) delivered");
    }
    Ok(())
}

/// `dir`, or a temp dir removed when the guard drops.
fn work_dir(dir: Option<&PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Ok((dir.clone(), None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("dragonfly-bench-")
                .tempdir()?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

fn write_json(path: Option<&PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let (work, _temp) = work_dir(args.workdir.as_ref())?;
    let config = MemoryConfig {
        blob_mib: args.blob_mib,
        readers: args.readers,
        seed: args.seed,
        work,
    };
    // Ctrl-C drops the run, which stops every process it started.
    let report = tokio::select! {
        report = dragonfly_e2e::bench::memory::run(&config) => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; processes stopped"),
    };
    print!("{}", report.text());
    write_json(args.json.as_ref(), &report)?;
    if !report.errors.is_empty() {
        anyhow::bail!("{} reader(s) failed", report.errors.len());
    }
    Ok(())
}

async fn loopback(args: LoopbackArgs) -> anyhow::Result<()> {
    let (work, _temp) = work_dir(args.workdir.as_ref())?;
    let config = LoopbackConfig {
        blob_mib: args.blob_mib,
        rounds: args.rounds,
        seed: args.seed,
        work,
    };
    let report = tokio::select! {
        report = dragonfly_e2e::bench::loopback::run(&config) => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; processes stopped"),
    };
    print!("{}", report.text());
    write_json(args.json.as_ref(), &report)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Memory(args) => memory(args).await,
        Command::Loopback(args) => loopback(args).await,
        Command::Origin(args) => origin(args).await,
        Command::Pull(args) => pull(args).await,
        Command::Get { url } => get(url).await,
    }
}
