//! The benchmark: the same image pulled by every host in five ways (straight
//! from the origin, through a pull-through cache, through this system cold,
//! through this system after one host, and in rollout waves), then the
//! fault matrix.

use std::path::PathBuf;
use std::time::Duration;

use super::cluster::{run_puller, Cluster};
use super::links::LinkSampler;
use super::report::{BenchReport, FaultReport, HostTime, ImageSize, ScenarioReport};
use super::rss::{program_peak_rss, RssFigures};
use super::waves::{wave_size, WaveReport};
use crate::netns::{HostSpec, NetHost, Topology};
use crate::procs::Proc;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub hosts: usize,
    pub layers: usize,
    pub layer_mib: usize,
    pub node_mbit: u32,
    pub origin_mbit: u32,
    pub seed: u64,
    pub scenarios: Vec<String>,
    pub faults: Vec<String>,
    /// Pull through dfdaemon's task API instead of its registry mirror.
    pub task_api: bool,
    /// dfdaemon's upload cap as a share of the node link (0: unlimited).
    pub upload_share: f64,
    /// Parents per scheduling answer (the scheduler's --max-parents).
    pub max_parents: usize,
    /// A dfdaemon YAML config for every node (flags still win).
    pub dfdaemon_config: Option<std::path::PathBuf>,
    /// Cluster identity in the swarm scenarios: on, off, or both in turn
    /// (each of c and d then runs without and with it, in one run).
    pub tls: TlsMode,
    pub work: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    On,
    Off,
    Both,
}

pub const ALL_FAULTS: &[&str] = &[
    "kill-parent",
    "freeze-parent",
    "kill-scheduler",
    "freeze-scheduler",
    "kill-seed",
    "restart-daemon",
    "corrupt-piece",
    "origin-5xx",
];

const PULL_TIMEOUT: Duration = Duration::from_secs(1800);

/// The P2P system of one scenario: scheduler, seed, one dfdaemon per node.
struct Swarm {
    scheduler: Proc,
    seed: Proc,
    daemons: Vec<Proc>,
}

impl Swarm {
    async fn start(cluster: &Cluster, nodes: &[&NetHost], run: &str) -> anyhow::Result<Swarm> {
        let scheduler = cluster.start_scheduler().await?;
        let seed = cluster
            .start_daemon(cluster.topo.host("seed")?, true, run)
            .await?;
        let mut daemons = Vec::new();
        for node in nodes {
            daemons.push(cluster.start_daemon(node, false, run).await?);
        }
        // One heartbeat so the scheduler knows every host before pulls start.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(Swarm {
            scheduler,
            seed,
            daemons,
        })
    }

    /// Peak RSS of every dfdaemon and the seed, read before they stop; a
    /// daemon that cannot be read (it died) is left out with a warning.
    fn peak_rss(&self) -> Option<RssFigures> {
        let read = |p: &Proc| match program_peak_rss(p.pid(), "dfdaemon") {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!("warning: no peak RSS for {}: {e:#}", p.name);
                None
            }
        };
        let seed = read(&self.seed);
        let mut peaks: Vec<u64> = self.daemons.iter().filter_map(read).collect();
        peaks.extend(seed);
        RssFigures::new(&peaks, seed)
    }
}

fn host_time(host: &NetHost, r: &super::pull::PullResult) -> HostTime {
    HostTime {
        host: host.name.clone(),
        seconds: r.seconds,
        ok: r.ok,
        corrupt_blobs: r.corrupt_blobs,
        retries: r.retries,
        error: r.error.clone(),
    }
}

impl Cluster {
    /// Deletes a finished run's content stores (9 hosts x the image each):
    /// a full run would otherwise fill a small disk. Logs stay.
    fn discard_content(&self, run: &str) {
        let dir = self.work.join(run);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("warning: cannot remove {}: {e}", dir.display());
        }
    }

    /// Pulls on every host in `hosts` at once.
    async fn pull_all(
        &self,
        hosts: &[&NetHost],
        base_for: impl Fn(&NetHost) -> (String, Option<String>),
        task_api: bool,
    ) -> Vec<HostTime> {
        let mut jobs = Vec::new();
        for host in hosts {
            let (base, mirror_for) = base_for(host);
            let mut cmd = self.puller(host, &base, mirror_for.as_deref());
            if task_api {
                cmd.args(["--task-api", "http://127.0.0.1:65003"]);
            }
            jobs.push(async move { (*host, run_puller(cmd, PULL_TIMEOUT).await) });
        }
        futures::future::join_all(jobs)
            .await
            .into_iter()
            .map(|(host, r)| host_time(host, &r))
            .collect()
    }

    async fn peer_bytes(&self, hosts: &[&NetHost]) -> u64 {
        let mut total = 0;
        for host in hosts {
            total += self
                .daemon_metric(host, "dfdaemon_upload_bytes_total")
                .await;
        }
        total
    }
}

fn mirror_base(
    cluster: &Cluster,
    task_api: bool,
) -> impl Fn(&NetHost) -> (String, Option<String>) + '_ {
    move |_| {
        if task_api {
            (cluster.origin_url(), None)
        } else {
            (
                "http://127.0.0.1:65001".to_string(),
                Some(cluster.origin_url()),
            )
        }
    }
}

pub async fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    crate::netns::require_root()?;
    let mut specs = vec![
        HostSpec {
            name: "origin".into(),
            octet: 2,
            rate_mbit: Some(config.origin_mbit),
        },
        HostSpec {
            name: "scheduler".into(),
            octet: 3,
            rate_mbit: None,
        },
        HostSpec {
            name: "seed".into(),
            octet: 4,
            rate_mbit: Some(config.node_mbit),
        },
        HostSpec {
            name: "cache".into(),
            octet: 5,
            rate_mbit: Some(config.node_mbit),
        },
    ];
    for i in 0..config.hosts {
        specs.push(HostSpec {
            name: format!("n{}", i + 1),
            octet: 11 + i as u8,
            rate_mbit: Some(config.node_mbit),
        });
    }
    eprintln!("creating {} network namespaces...", specs.len() + 1);
    let topo = Topology::create("dfb", &specs)?;
    let upload_rate = (config.upload_share > 0.0)
        .then(|| (config.node_mbit as f64 * 1e6 / 8.0 * config.upload_share) as u64);
    let cluster = Cluster {
        topo,
        upload_rate,
        max_parents: config.max_parents,
        dfdaemon_config: config.dfdaemon_config.clone(),
        work: config.work.clone(),
        bench: std::env::current_exe()?,
        tls: std::cell::Cell::new(config.tls != TlsMode::Off),
        ca: identity::Ca::generate("dragonfly bench CA", Duration::from_secs(7 * 86400))?,
    };
    eprintln!(
        "generating and serving the image ({} x {} MiB)...",
        config.layers, config.layer_mib
    );
    let _origin = cluster
        .start_origin(config.seed, config.layers, config.layer_mib)
        .await?;
    let image = {
        let (bytes, pieces) = cluster.origin_image().await?;
        ImageSize { bytes, pieces }
    };
    let image_bytes = image.bytes;
    let link_bytes_per_s = config.node_mbit.min(config.origin_mbit) as f64 * 1e6 / 8.0;
    let t_star = image_bytes as f64 / link_bytes_per_s;
    let nodes: Vec<&NetHost> = cluster
        .topo
        .hosts
        .iter()
        .filter(|h| h.name.starts_with('n'))
        .collect();
    let mut report = BenchReport {
        hosts: config.hosts,
        layers: config.layers,
        layer_mib: config.layer_mib,
        node_mbit: config.node_mbit,
        origin_mbit: config.origin_mbit,
        upload_share: config.upload_share,
        scenarios: Vec::new(),
        faults: Vec::new(),
    };

    // The swarm scenarios run once per TLS setting asked for.
    let mut runs: Vec<(String, bool)> = Vec::new();
    for key in &config.scenarios {
        let swarm = matches!(key.as_str(), "c" | "d" | "e");
        match config.tls {
            TlsMode::Both if swarm => {
                runs.push((key.clone(), false));
                runs.push((key.clone(), true));
            }
            mode => runs.push((key.clone(), swarm && mode == TlsMode::On)),
        }
    }
    for (key, tls) in &runs {
        let key = key.clone();
        cluster.tls.set(*tls);
        let before = cluster.origin_traffic().await?;
        eprintln!("scenario {key}{}...", if *tls { " (mTLS)" } else { "" });
        let links = LinkSampler::start(
            cluster.topo.bridge_ns().to_string(),
            cluster
                .topo
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.bridge_veth.clone()))
                .collect(),
        );
        let mut rss = None;
        let mut waves = Vec::new();
        let (title, hosts, peer_bytes) = match key.as_str() {
            "a" => {
                let hosts = cluster
                    .pull_all(&nodes, |_| (cluster.origin_url(), None), false)
                    .await;
                ("direct from the origin", hosts, 0)
            }
            "b" => {
                let cache = cluster.start_cache().await?;
                let url = format!("http://{}:5000", cluster.topo.host("cache")?.ip);
                let hosts = cluster
                    .pull_all(&nodes, |_| (url.clone(), None), false)
                    .await;
                drop(cache);
                ("pull-through cache", hosts, 0)
            }
            "c" => {
                let swarm = Swarm::start(&cluster, &nodes, "c").await?;
                let hosts = cluster
                    .pull_all(
                        &nodes,
                        mirror_base(&cluster, config.task_api),
                        config.task_api,
                    )
                    .await;
                let mut all = nodes.clone();
                all.push(cluster.topo.host("seed")?);
                let peers = cluster.peer_bytes(&all).await;
                rss = swarm.peak_rss();
                drop(swarm);
                cluster.discard_content("c");
                ("dragonfly, all hosts at once", hosts, peers)
            }
            "d" => {
                let swarm = Swarm::start(&cluster, &nodes, "d").await?;
                let mut hosts = cluster
                    .pull_all(
                        &nodes[..1],
                        mirror_base(&cluster, config.task_api),
                        config.task_api,
                    )
                    .await;
                hosts.extend(
                    cluster
                        .pull_all(
                            &nodes[1..],
                            mirror_base(&cluster, config.task_api),
                            config.task_api,
                        )
                        .await,
                );
                let mut all = nodes.clone();
                all.push(cluster.topo.host("seed")?);
                let peers = cluster.peer_bytes(&all).await;
                rss = swarm.peak_rss();
                drop(swarm);
                cluster.discard_content("d");
                ("dragonfly, one host then the rest", hosts, peers)
            }
            "e" => {
                let swarm = Swarm::start(&cluster, &nodes, "e").await?;
                let mut hosts = Vec::new();
                for (i, wave) in nodes.chunks(wave_size(nodes.len())).enumerate() {
                    let times = cluster
                        .pull_all(
                            wave,
                            mirror_base(&cluster, config.task_api),
                            config.task_api,
                        )
                        .await;
                    let w = WaveReport::new(i + 1, &times, t_star);
                    eprintln!(
                        "  wave {} ({}): {:.1}s {:.2} T*",
                        w.wave,
                        w.hosts.join(","),
                        w.max_s,
                        w.max_over_t_star
                    );
                    waves.push(w);
                    hosts.extend(times);
                }
                let mut all = nodes.clone();
                all.push(cluster.topo.host("seed")?);
                let peers = cluster.peer_bytes(&all).await;
                rss = swarm.peak_rss();
                drop(swarm);
                cluster.discard_content("e");
                ("dragonfly, rollout waves of 20%", hosts, peers)
            }
            other => anyhow::bail!("unknown scenario {other:?} (a, b, c, d or e)"),
        };
        let origin = cluster.origin_traffic().await?.since(before);
        let links = links.finish().await;
        let (key, title) = match (config.tls, tls) {
            (TlsMode::Both, true) => (format!("{key}+tls"), format!("{title} (mTLS)")),
            (TlsMode::Both, false) => (key, format!("{title} (plain)")),
            _ => (key, title.to_string()),
        };
        let mut s = ScenarioReport::new(&key, &title, hosts, image, origin, peer_bytes, t_star);
        s.dfdaemon_rss = rss;
        s.waves = waves;
        match links {
            Ok(links) => s.links = Some(links),
            Err(e) => eprintln!("  link timeline lost: {e:#}"),
        }
        if let Some(direct) = report.scenarios.iter().find(|s| s.key == "a") {
            s.speedup_vs_direct = Some(direct.max_s / s.max_s.max(1e-9));
        }
        eprintln!(
            "  p50 {:.1}s max {:.1}s origin {:.2}x ({} blob GETs for {} pieces, {} HEADs, {} manifest requests) failed {}",
            s.p50_s,
            s.max_s,
            s.origin_ratio,
            s.origin.blob_gets,
            s.image_pieces,
            s.origin.blob_heads,
            s.origin.manifest_requests,
            s.failed_pulls
        );
        if let Some(links) = &s.links {
            eprint!(
                "  links (from the scenario's start):\n{}",
                links.summary(config.node_mbit.min(config.origin_mbit) as f64)
            );
        }
        report.scenarios.push(s);
    }

    cluster.tls.set(config.tls != TlsMode::Off);
    for fault in &config.faults {
        eprintln!("fault {fault}...");
        let r = run_fault(
            &cluster,
            &nodes,
            fault,
            image_bytes,
            t_star,
            config.task_api,
        )
        .await?;
        eprintln!(
            "  failed {} corrupt {} extra origin {} bytes",
            r.failed_pulls, r.corrupt_blobs, r.extra_origin_bytes
        );
        report.faults.push(r);
    }
    Ok(report)
}

/// Damages a recorded piece on the seed, waiting (bounded) until its
/// metadata records one.
async fn corrupt_seed_piece(cluster: &Cluster, run: &str) -> anyhow::Result<String> {
    let mut last_error = None;
    for _ in 0..50 {
        match try_corrupt_seed_piece(cluster, run) {
            Ok(done) => return Ok(done),
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no piece to damage")))
}

/// The most recently recorded piece of the seed's largest task, damaged on disk.
fn try_corrupt_seed_piece(cluster: &Cluster, run: &str) -> anyhow::Result<String> {
    let tasks = cluster.work.join(run).join("seed").join("tasks");
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(&tasks)? {
        let dir = entry?.path();
        let len = std::fs::metadata(dir.join("data"))
            .map(|m| m.len())
            .unwrap_or(0);
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, dir));
        }
    }
    let (_, dir) = best.ok_or_else(|| anyhow::anyhow!("seed holds no task yet"))?;
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?)?;
    let piece_length = meta["piece_length"].as_u64().unwrap_or(0);
    let last = meta["digests"]
        .as_array()
        .and_then(|d| d.iter().rposition(|x| !x.is_null()))
        .ok_or_else(|| anyhow::anyhow!("seed has no recorded piece yet"))? as u64;
    let offset = last * piece_length + 1000;
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("data"))?;
    let mut buf = [0u8; 256];
    file.read_exact_at(&mut buf, offset)?;
    for b in &mut buf {
        *b ^= 0xa5;
    }
    file.write_all_at(&buf, offset)?;
    Ok(format!(
        "piece {last} of {}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
}

/// The node uploading the most right now: someone's parent.
async fn busiest_uploader(cluster: &Cluster, nodes: &[&NetHost]) -> (usize, u64) {
    let mut best = (0, 0);
    for (i, node) in nodes.iter().enumerate() {
        let up = cluster
            .daemon_metric(node, "dfdaemon_upload_bytes_total")
            .await;
        if up >= best.1 {
            best = (i, up);
        }
    }
    best
}

async fn run_fault(
    cluster: &Cluster,
    nodes: &[&NetHost],
    fault: &str,
    image_bytes: u64,
    t_star: f64,
    task_api: bool,
) -> anyhow::Result<FaultReport> {
    let run = format!("fault-{fault}");
    let mut swarm = Swarm::start(cluster, nodes, &run).await?;
    let before = cluster.origin_traffic().await?;
    let pulls = cluster.pull_all(nodes, mirror_base(cluster, task_api), task_api);
    let trigger = Duration::from_secs_f64(t_star * 0.4);
    let inject = async {
        tokio::time::sleep(trigger).await;
        let description: anyhow::Result<(String, Option<String>)> = async {
            Ok(match fault {
                "kill-parent" => {
                    let best = busiest_uploader(cluster, nodes).await;
                    swarm.daemons[best.0].kill();
                    (
                        format!(
                            "killed {} (uploaded {} MiB)",
                            nodes[best.0].name,
                            best.1 >> 20
                        ),
                        Some(nodes[best.0].name.clone()),
                    )
                }
                "freeze-parent" => {
                    let (i, up) = busiest_uploader(cluster, nodes).await;
                    swarm.daemons[i].freeze();
                    // Frozen well past the others' pulls (so no kill frees
                    // them), then killed so its own pull ends too.
                    let frozen_for = Duration::from_secs_f64((t_star * 2.0).max(20.0));
                    tokio::time::sleep(frozen_for).await;
                    swarm.daemons[i].kill();
                    (
                        format!(
                            "froze {} (uploaded {} MiB; connections open, no answers) for {:.0} s, then killed it",
                            nodes[i].name,
                            up >> 20,
                            frozen_for.as_secs_f64()
                        ),
                        Some(nodes[i].name.clone()),
                    )
                }
                "kill-scheduler" => {
                    swarm.scheduler.kill();
                    ("killed the scheduler".into(), None)
                }
                "freeze-scheduler" => {
                    // A scheduler that hangs (a long pause, an overloaded
                    // node): calls to it wait out their timeouts.
                    let frozen_for = Duration::from_secs_f64((t_star * 0.3).max(5.0));
                    swarm.scheduler.freeze();
                    tokio::time::sleep(frozen_for).await;
                    swarm.scheduler.thaw();
                    (
                        format!("froze the scheduler for {:.0} s", frozen_for.as_secs_f64()),
                        None,
                    )
                }
                "kill-seed" => {
                    swarm.seed.kill();
                    ("killed the seed peer".into(), None)
                }
                "restart-daemon" => {
                    let victim = nodes.len() / 2;
                    swarm.daemons[victim].kill();
                    swarm.daemons[victim] =
                        cluster.start_daemon(nodes[victim], false, &run).await?;
                    (format!("restarted {}'s dfdaemon", nodes[victim].name), None)
                }
                "corrupt-piece" => (
                    format!(
                        "damaged {} on the seed",
                        corrupt_seed_piece(cluster, &run).await?
                    ),
                    None,
                ),
                "origin-5xx" => {
                    cluster
                        .origin_fault(0.5, (t_star * 0.3).ceil() as u64)
                        .await?;
                    (
                        "origin answered 503 to half the blob requests for 0.3 T*".into(),
                        None,
                    )
                }
                other => anyhow::bail!("unknown fault {other:?}"),
            })
        }
        .await;
        description
    };
    let (hosts, injected) = tokio::join!(pulls, inject);
    // A fault that could not be injected is reported, not fatal to the run.
    let (description, excluded) =
        injected.unwrap_or_else(|e| (format!("NOT INJECTED: {e:#}"), None));
    let origin = cluster.origin_traffic().await?.since(before);
    // The killed host cannot finish its own pull; everyone else must.
    let hosts: Vec<HostTime> = hosts
        .into_iter()
        .filter(|h| Some(&h.host) != excluded.as_ref())
        .collect();
    drop(swarm);
    cluster.discard_content(&run);
    Ok(FaultReport {
        fault: fault.to_string(),
        description,
        failed_pulls: hosts.iter().filter(|h| !h.ok).count(),
        corrupt_blobs: hosts.iter().map(|h| h.corrupt_blobs).sum(),
        retries: hosts.iter().map(|h| h.retries).sum(),
        extra_origin_bytes: origin.blob_bytes as i64 - image_bytes as i64,
        origin_blob_gets: origin.blob_gets,
        max_s: hosts.iter().map(|h| h.seconds).fold(0.0, f64::max),
        errors: hosts.iter().filter_map(|h| h.error.clone()).collect(),
    })
}
