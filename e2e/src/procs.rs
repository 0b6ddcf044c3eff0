//! Starting, watching and stopping the real binaries (scheduler, dfdaemon,
//! dfget) on loopback addresses. Every process is killed by its PID when its
//! handle drops, so a failing test leaves nothing behind.

use anyhow::{bail, Context};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries: next to this executable
/// (or its parent, for test executables under `deps/`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the workspace binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// A port free on `ip` right now.
pub fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0))?;
    Ok(listener.local_addr()?.port())
}

/// `N` distinct ports free on `ip` right now: all held at once while they
/// are picked, so one process never gets the same port twice.
pub fn free_ports<const N: usize>(ip: IpAddr) -> anyhow::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = std::net::TcpListener::bind((ip, 0))?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: a frozen process (a hung node, a partition); its
    /// connections stay open and nothing answers.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a frozen process goes on where it stopped.
    pub fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }

    /// SIGTERM without waiting: what kubelet sends a pod being stopped.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Waits at most `timeout` for the process to exit; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL: a crash, as far as the process can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it does not exit within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `url` until it answers 200, for at most `timeout`.
pub async fn wait_ready(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(resp) = client.get(url).timeout(Duration::from_secs(1)).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} not ready after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test run's cluster CA: one per test process, written to a
/// directory named by the process id. Statics are never dropped, so each
/// test process removes what processes that are gone left behind.
pub fn test_ca() -> &'static (identity::Ca, PathBuf) {
    static CA: std::sync::OnceLock<(identity::Ca, PathBuf)> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_dead_test_cas(&tmp);
        let dir = tmp.join(format!("{TEST_CA_PREFIX}{}", std::process::id()));
        // A directory of an earlier process that had this id.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir for the test CA");
        let ca = identity::Ca::generate("dragonfly test CA", Duration::from_secs(7 * 86400))
            .expect("a test CA");
        ca.write(&dir).expect("writing the test CA");
        (ca, dir)
    })
}

const TEST_CA_PREFIX: &str = "dragonfly-test-ca-";

/// Removes test CA directories whose process no longer runs.
fn remove_dead_test_cas(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEST_CA_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A member certificate from the test CA, in the `--tls-dir` layout.
pub fn member_dir(role: identity::Role, name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let (ca, ca_dir) = test_ca();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = ca_dir.join(format!("{role}-{name}-{n}"));
    let id = identity::Identity::new(role, name).expect("a valid member name");
    ca.issue(&id, Duration::from_secs(86400))
        .and_then(|m| m.write(&dir))
        .expect("issuing a test member certificate");
    dir
}

/// An HTTPS client holding a member certificate of `role`, for calling peer
/// ports as that member would.
pub fn member_http(role: identity::Role, name: &str) -> reqwest::Client {
    let tls = identity::MemberTls::load(&member_dir(role, name)).expect("a test member");
    let config = tls.client_config(&[identity::Role::Node, identity::Role::Seed]);
    reqwest::Client::builder()
        .use_preconfigured_tls((*config).clone())
        .no_proxy()
        .build()
        .expect("an HTTPS client")
}

pub struct SchedulerProc {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl SchedulerProc {
    pub async fn start(ip: IpAddr, log_dir: &Path) -> anyhow::Result<SchedulerProc> {
        let [grpc, admin] = free_ports(ip)?;
        let (grpc, admin) = (SocketAddr::new(ip, grpc), SocketAddr::new(ip, admin));
        Self::start_at(grpc, admin, log_dir).await
    }

    pub async fn start_at(
        grpc: SocketAddr,
        admin: SocketAddr,
        log_dir: &Path,
    ) -> anyhow::Result<SchedulerProc> {
        let tls_dir = member_dir(
            identity::Role::Scheduler,
            &format!("scheduler-{}", grpc.port()),
        );
        let args = vec![
            "--listen".to_string(),
            grpc.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--heartbeat-interval".into(),
            "1s".into(),
            "--host-ttl".into(),
            "4s".into(),
            "--tls-dir".into(),
            tls_dir.display().to_string(),
        ];
        let proc = Proc::spawn("scheduler", &binary("dragonfly-scheduler")?, &args, log_dir)?;
        wait_ready(&format!("http://{admin}/readyz"), Duration::from_secs(20)).await?;
        Ok(SchedulerProc { proc, grpc, admin })
    }
}

/// How to start one dfdaemon.
#[derive(Clone)]
pub struct DaemonSpec {
    pub name: String,
    pub ip: IpAddr,
    pub scheduler: Option<SocketAddr>,
    pub seed: bool,
    pub data_dir: PathBuf,
    pub extra_args: Vec<String>,
    /// Fixed ports (so a restarted daemon keeps its address); 0 picks free ones.
    pub peer_port: u16,
    pub admin_port: u16,
}

pub struct DaemonProc {
    pub spec: DaemonSpec,
    pub proc: Proc,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
    /// The registry mirror (a fresh free port on every start).
    pub proxy: SocketAddr,
    /// The local task API (loopback; a fresh free port on every start).
    pub api: SocketAddr,
}

impl DaemonProc {
    pub async fn start(mut spec: DaemonSpec, log_dir: &Path) -> anyhow::Result<DaemonProc> {
        // Picked together, so no two listeners of one daemon share a port.
        let [peer_port, admin_port, proxy_port, api_port] = free_ports(spec.ip)?;
        if spec.peer_port == 0 {
            spec.peer_port = peer_port;
        }
        if spec.admin_port == 0 {
            spec.admin_port = admin_port;
        }
        let peer = SocketAddr::new(spec.ip, spec.peer_port);
        let admin = SocketAddr::new(spec.ip, spec.admin_port);
        let proxy = SocketAddr::new(spec.ip, proxy_port);
        let api = SocketAddr::new(spec.ip, api_port);
        let mut args = vec![
            "run".to_string(),
            "--data-dir".into(),
            spec.data_dir.display().to_string(),
            "--peer-listen".into(),
            peer.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--proxy-listen".into(),
            proxy.to_string(),
            "--api-listen".into(),
            api.to_string(),
            // The test origins and registries listen on loopback.
            "--allow-destination".into(),
            "127.0.0.0/8".into(),
            "--advertise-ip".into(),
            spec.ip.to_string(),
            "--hostname".into(),
            spec.name.clone(),
            "--heartbeat-interval".into(),
            "1s".into(),
        ];
        if !spec.extra_args.iter().any(|a| a == "--stall-timeout") {
            args.extend(["--stall-timeout".into(), "10s".into()]);
        }
        if let Some(scheduler) = spec.scheduler {
            args.push("--scheduler".into());
            args.push(scheduler.to_string());
        }
        if spec.seed {
            args.push("--seed".into());
        }
        // Every daemon is a cluster member named after its spec (its host
        // id), unless the test brings its own identity.
        if !spec.extra_args.iter().any(|a| a == "--tls-dir") {
            let role = if spec.seed {
                identity::Role::Seed
            } else {
                identity::Role::Node
            };
            args.push("--tls-dir".into());
            args.push(member_dir(role, &spec.name).display().to_string());
        }
        if !spec.extra_args.iter().any(|a| a == "--cache-size") {
            args.extend(["--cache-size".into(), "4GiB".into()]);
        }
        args.extend(spec.extra_args.iter().cloned());
        let proc = Proc::spawn(&spec.name, &binary("dfdaemon")?, &args, log_dir)?;
        wait_ready(&format!("http://{admin}/readyz"), Duration::from_secs(20))
            .await
            .with_context(|| format!("{} did not start: {}", spec.name, proc.log_tail(20)))?;
        Ok(DaemonProc {
            spec,
            proc,
            peer,
            admin,
            proxy,
            api,
        })
    }

    /// Starts the same daemon again (same data dir, address and ports).
    pub async fn restart(self, log_dir: &Path) -> anyhow::Result<DaemonProc> {
        let spec = self.spec.clone();
        drop(self);
        DaemonProc::start(spec, log_dir).await
    }

    /// The local task API, as dfget on the daemon's host reaches it.
    pub fn task_api(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The peer port, as other members (with `member_http`) reach it.
    pub fn peer_api(&self) -> String {
        format!("https://{}", self.peer)
    }
}

/// Runs dfget against `daemon` and returns its exit code and stderr.
pub async fn dfget(
    url: &str,
    output: &Path,
    daemon: SocketAddr,
    extra: &[&str],
) -> anyhow::Result<(i32, String)> {
    let bin = binary("dfget")?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg(url)
        .arg("-O")
        .arg(output)
        .arg("--daemon")
        .arg(daemon.to_string())
        .arg("--quiet")
        .args(extra)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .context("dfget took longer than 300 s")??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A task's status from a daemon's task API.
pub async fn task_status(daemon: &DaemonProc, task_id: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}/api/v1/tasks/{task_id}", daemon.task_api());
    Ok(reqwest::Client::new().get(url).send().await?.json().await?)
}

/// Every task a daemon holds.
pub async fn tasks(daemon: &DaemonProc) -> anyhow::Result<Vec<serde_json::Value>> {
    let url = format!("{}/api/v1/tasks", daemon.task_api());
    Ok(reqwest::Client::new().get(url).send().await?.json().await?)
}
