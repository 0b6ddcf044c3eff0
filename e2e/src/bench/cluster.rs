//! The processes of one benchmark run, each in its host's namespace: the
//! origin registry, a pull-through cache, the scheduler, the seed and one
//! dfdaemon per node; plus running pullers and reading counters there.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::pull::PullResult;
use super::report::OriginTraffic;
use crate::netns::{NetHost, Topology};
use crate::procs::{binary, Proc};

pub const REGISTRY_PORT: u16 = 5000;
pub const STATS_PORT: u16 = 5001;
pub const CACHE_PORT: u16 = 5000;
pub const SCHEDULER_PORT: u16 = 8002;

pub struct Cluster {
    pub topo: Topology,
    /// dfdaemon upload cap in bytes per second (None: unlimited).
    pub upload_rate: Option<u64>,
    pub max_parents: usize,
    /// A dfdaemon YAML config every node starts with (tuning runs).
    pub dfdaemon_config: Option<PathBuf>,
    pub work: PathBuf,
    /// This executable (it also runs the origin, pullers and probes).
    pub bench: PathBuf,
    /// Whether the swarm started next runs with cluster identity (mutual
    /// TLS between members), and the CA that signs its certificates.
    pub tls: std::cell::Cell<bool>,
    pub ca: identity::Ca,
}

impl Cluster {
    /// `--tls-dir DIR` with a certificate for `name`, when TLS is on.
    fn tls_args(&self, role: identity::Role, name: &str) -> anyhow::Result<Vec<String>> {
        if !self.tls.get() {
            return Ok(Vec::new());
        }
        let dir = self.work.join("tls").join(format!("{role}-{name}"));
        let id = identity::Identity::new(role, name)?;
        self.ca
            .issue(&id, Duration::from_secs(86400))?
            .write(&dir)?;
        Ok(vec!["--tls-dir".into(), dir.display().to_string()])
    }

    pub fn spawn_in(
        &self,
        host: &NetHost,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<Proc> {
        let args = self
            .topo
            .exec_args(host, &program.display().to_string(), args);
        Proc::spawn(name, Path::new("ip"), &args, &self.work)
    }

    /// GET `url` from inside `host`'s namespace; the body on success.
    pub async fn get(&self, host: &NetHost, url: &str) -> anyhow::Result<String> {
        let out = tokio::process::Command::new("ip")
            .args(self.topo.exec_args(
                host,
                &self.bench.display().to_string(),
                &["get".into(), url.into()],
            ))
            .kill_on_drop(true)
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "GET {url} in {}: {}",
                host.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn wait_ready(
        &self,
        host: &NetHost,
        url: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get(host, url).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{url} in {} not ready after {timeout:?}", host.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn start_origin(
        &self,
        seed: u64,
        layers: usize,
        layer_mib: usize,
    ) -> anyhow::Result<Proc> {
        let host = self.topo.host("origin")?;
        let args = vec![
            "origin".to_string(),
            "--listen".into(),
            format!("{}:{REGISTRY_PORT}", host.ip),
            "--stats-listen".into(),
            format!("{}:{STATS_PORT}", host.ip),
            "--seed".into(),
            seed.to_string(),
            "--layers".into(),
            layers.to_string(),
            "--layer-mib".into(),
            layer_mib.to_string(),
        ];
        let proc = self.spawn_in(host, "origin", &self.bench, &args)?;
        self.wait_ready(host, &self.stats_url(), Duration::from_secs(120))
            .await?;
        Ok(proc)
    }

    pub fn origin_url(&self) -> String {
        let ip = self
            .topo
            .host("origin")
            .map(|h| h.ip.to_string())
            .unwrap_or_default();
        format!("http://{ip}:{REGISTRY_PORT}")
    }

    fn stats_url(&self) -> String {
        let ip = self
            .topo
            .host("origin")
            .map(|h| h.ip.to_string())
            .unwrap_or_default();
        format!("http://{ip}:{STATS_PORT}/stats")
    }

    /// What the origin has served so far, counted by the origin.
    pub async fn origin_traffic(&self) -> anyhow::Result<OriginTraffic> {
        let host = self.topo.host("origin")?;
        let body = self.get(host, &self.stats_url()).await?;
        serde_json::from_str(&body).context("origin stats unreadable")
    }

    /// The image as the origin serves it: bytes to pull and the pieces
    /// dfdaemon cuts them into.
    pub async fn origin_image(&self) -> anyhow::Result<(u64, u64)> {
        let host = self.topo.host("origin")?;
        let body = self.get(host, &self.stats_url()).await?;
        let stats: serde_json::Value = serde_json::from_str(&body)?;
        let field = |name: &str| {
            stats[name]
                .as_u64()
                .with_context(|| format!("origin stats without {name}"))
        };
        Ok((field("image_bytes")?, field("image_pieces")?))
    }

    /// Makes the origin answer 5xx to `share` of blob requests for `seconds`.
    pub async fn origin_fault(&self, share: f64, seconds: u64) -> anyhow::Result<()> {
        let host = self.topo.host("origin")?;
        let ip = host.ip;
        self.get(
            host,
            &format!("http://{ip}:{STATS_PORT}/fault?share={share}&seconds={seconds}"),
        )
        .await
        .map(|_| ())
    }

    /// A distribution registry in pull-through cache mode in front of the origin.
    pub async fn start_cache(&self) -> anyhow::Result<Proc> {
        let host = self.topo.host("cache")?;
        let dir = self.work.join("cache-storage");
        std::fs::create_dir_all(&dir)?;
        let config = self.work.join("cache.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}:{CACHE_PORT}\nproxy:\n  remoteurl: {}\n",
                dir.display(),
                host.ip,
                self.origin_url()
            ),
        )?;
        let registry = which("docker-registry")?;
        let proc = self.spawn_in(
            host,
            "cache",
            &registry,
            &["serve".into(), config.display().to_string()],
        )?;
        self.wait_ready(
            host,
            &format!("http://{}:{CACHE_PORT}/v2/", host.ip),
            Duration::from_secs(30),
        )
        .await?;
        Ok(proc)
    }

    pub async fn start_scheduler(&self) -> anyhow::Result<Proc> {
        let host = self.topo.host("scheduler")?;
        let args = vec![
            "--listen".to_string(),
            format!("{}:{SCHEDULER_PORT}", host.ip),
            "--admin-listen".into(),
            format!("{}:8000", host.ip),
            "--heartbeat-interval".into(),
            "1s".into(),
            "--host-ttl".into(),
            "4s".into(),
            "--max-parents".into(),
            self.max_parents.to_string(),
        ];
        let mut args = args;
        args.extend(self.tls_args(identity::Role::Scheduler, "scheduler")?);
        let proc = self.spawn_in(host, "scheduler", &binary("dragonfly-scheduler")?, &args)?;
        self.wait_ready(
            host,
            &format!("http://{}:8000/readyz", host.ip),
            Duration::from_secs(30),
        )
        .await?;
        Ok(proc)
    }

    /// A dfdaemon on `host`, with its data under the run's work dir.
    pub async fn start_daemon(
        &self,
        host: &NetHost,
        seed: bool,
        run: &str,
    ) -> anyhow::Result<Proc> {
        let scheduler = self.topo.host("scheduler")?.ip;
        let data = self.work.join(run).join(&host.name);
        let mut args = vec![
            "run".to_string(),
            "--scheduler".into(),
            format!("{scheduler}:{SCHEDULER_PORT}"),
            "--data-dir".into(),
            data.display().to_string(),
            "--proxy-listen".into(),
            "0.0.0.0:65001".into(),
            "--peer-listen".into(),
            "0.0.0.0:65002".into(),
            "--admin-listen".into(),
            "0.0.0.0:40901".into(),
            // Each host's own loopback (its network namespace), where the
            // puller runs.
            "--api-listen".into(),
            "127.0.0.1:65003".into(),
            "--advertise-ip".into(),
            host.ip.to_string(),
            "--hostname".into(),
            host.name.clone(),
            "--heartbeat-interval".into(),
            "1s".into(),
            "--cache-size".into(),
            "8GiB".into(),
        ];
        if seed {
            args.push("--seed".into());
        }
        let role = if seed {
            identity::Role::Seed
        } else {
            identity::Role::Node
        };
        args.extend(self.tls_args(role, &host.name)?);
        if let Some(config) = &self.dfdaemon_config {
            args.push("--config".into());
            args.push(config.display().to_string());
        }
        if let Some(rate) = self.upload_rate {
            args.push("--upload-rate".into());
            args.push(format!("{}KiB", rate / 1024));
        }
        let name = format!("{run}-{}", host.name);
        let proc = self.spawn_in(host, &name, &binary("dfdaemon")?, &args)?;
        self.wait_ready(
            host,
            "http://127.0.0.1:40901/readyz",
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("{name}: {}", proc.log_tail(10)))?;
        Ok(proc)
    }

    /// A metric's value summed over its label sets, read in `host`'s namespace.
    pub async fn daemon_metric(&self, host: &NetHost, metric: &str) -> u64 {
        let Ok(text) = self.get(host, "http://127.0.0.1:40901/metrics").await else {
            return 0;
        };
        text.lines()
            .filter(|l| {
                l.starts_with(metric)
                    && (l[metric.len()..].starts_with(' ') || l[metric.len()..].starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Runs the puller in `host`'s namespace against `base`.
    pub fn puller(
        &self,
        host: &NetHost,
        base: &str,
        mirror_for: Option<&str>,
    ) -> tokio::process::Command {
        let mut args = vec!["pull".to_string(), "--base".into(), base.into()];
        if let Some(upstream) = mirror_for {
            args.push("--header".into());
            args.push(format!("X-Dragonfly-Registry: {upstream}"));
            args.push("--ns".into());
            args.push(upstream.trim_start_matches("http://").to_string());
        }
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(
            self.topo
                .exec_args(host, &self.bench.display().to_string(), &args),
        )
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        cmd
    }
}

/// Runs a prepared puller and reads its result.
pub async fn run_puller(mut cmd: tokio::process::Command, timeout: Duration) -> PullResult {
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return PullResult {
                error: Some(format!("puller did not run: {e}")),
                ..Default::default()
            }
        }
        Err(_) => {
            return PullResult {
                error: Some(format!("pull took longer than {timeout:?}")),
                ..Default::default()
            }
        }
    };
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| PullResult {
        error: Some(format!(
            "puller output unreadable ({e}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        ..Default::default()
    })
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.exists())
        .with_context(|| format!("{program} not found on PATH (apt-get install docker-registry)"))
}

/// The origin's counters over HTTP, next to the registry: `/stats` (blob
/// bytes and requests by kind, counted by the registry, and the image's
/// size) and `/fault` (answer 503 to a share of blob requests for a while).
pub async fn serve_origin_stats(
    listen: &str,
    registry: crate::registry::FakeRegistry,
    image_bytes: u64,
    image_pieces: u64,
) -> anyhow::Result<()> {
    use axum::extract::{Query, State};
    use axum::routing::get;
    use std::sync::Arc;

    #[derive(serde::Deserialize)]
    struct FaultQuery {
        share: f64,
        seconds: u64,
    }
    let registry = Arc::new(registry);
    let app = axum::Router::new()
        .route(
            "/stats",
            get(
                move |State(r): State<Arc<crate::registry::FakeRegistry>>| async move {
                    let stats = r.stats();
                    let count = |c: &std::sync::atomic::AtomicU64| {
                        c.load(std::sync::atomic::Ordering::SeqCst)
                    };
                    axum::Json(serde_json::json!({
                        "blob_bytes": count(&stats.blob_bytes),
                        "blob_gets": count(&stats.blob_gets),
                        "blob_heads": count(&stats.blob_heads),
                        "manifest_requests": count(&stats.manifest_requests),
                        "image_bytes": image_bytes,
                        "image_pieces": image_pieces,
                    }))
                },
            ),
        )
        .route(
            "/fault",
            get(
                |State(r): State<Arc<crate::registry::FakeRegistry>>,
                 Query(q): Query<FaultQuery>| async move {
                    r.inject_errors(q.share, Duration::from_secs(q.seconds));
                    "ok"
                },
            ),
        )
        .with_state(registry);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
