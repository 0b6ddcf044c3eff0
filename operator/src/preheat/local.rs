//! `dragonfly-operator preheat-local`: the controller's run of a Preheat
//! (validate → resolve → tick until finished), without Kubernetes. The
//! peers are named on the command line, credentials come from a docker
//! config file, and the final status is printed as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tracing::info;

use super::crd::{Phase, Preheat, PreheatSpec, PreheatStatus};
use super::credentials::Credentials;
use super::job::{Job, Pace};
use super::platform::Platform;
use super::status;
use super::targets::{self, Target};
use super::validate::validate;

/// Retries start at 1 s (the controller's at 5 s): nothing else waits here.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// A Preheat manifest (YAML or JSON). `spec.cluster`, `scope` and
    /// `pullSecrets` are not used: peers and credentials come from the flags.
    #[arg(long)]
    pub file: PathBuf,
    /// A dfdaemon as `PEER_URL,MIRROR_URL` (task API and registry mirror),
    /// e.g. `http://127.0.0.1:65002,http://127.0.0.1:65001`. Repeatable.
    #[arg(long = "dfdaemon", required = true)]
    pub dfdaemons: Vec<String>,
    /// Docker config JSON with registry credentials (`~/.docker/config.json` format).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// Platforms when the spec names none (default: this machine's).
    #[arg(long = "platform")]
    pub platforms: Vec<String>,
    /// Registries reached over plain HTTP, besides the spec's and loopback ones.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Give up (as Failed) after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Time between looks at the peers.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// An operator member certificate (ca.crt, tls.crt, tls.key) for
    /// dfdaemons whose peer ports speak mutual TLS.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Reads the file: a whole Preheat document, or just its spec.
fn read_spec(path: &PathBuf) -> anyhow::Result<PreheatSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(ph) = serde_yaml::from_str::<Preheat>(&text) {
        return Ok(ph.spec);
    }
    serde_yaml::from_str::<PreheatSpec>(&text)
        .with_context(|| format!("{} is neither a Preheat nor a Preheat spec", path.display()))
}

/// Runs the Preheat to its end; the status says how it ended.
pub async fn run(args: LocalArgs) -> anyhow::Result<PreheatStatus> {
    let spec = read_spec(&args.file)?;
    let tls = match &args.tls_dir {
        Some(dir) => Some(identity::MemberTls::load(dir).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let targets: Vec<Target> = args
        .dfdaemons
        .iter()
        .map(|a| targets::parse_local(a))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let credentials = match &args.docker_config {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            Credentials::from_docker_config(&bytes, &p.display().to_string())
                .map_err(anyhow::Error::msg)?
        }
        None => Credentials::default(),
    };
    let mut st = status::start(&spec, Some(1), &now());
    let validated = match validate(&spec) {
        Ok(v) => v,
        Err(message) => {
            status::fail(&mut st, "InvalidSpec", &message, None, &now());
            return Ok(st);
        }
    };
    let mut platforms = validated.platforms.clone();
    if platforms.is_empty() {
        for p in &args.platforms {
            platforms.push(Platform::parse(p).map_err(anyhow::Error::msg)?);
        }
    }
    if platforms.is_empty() {
        platforms.push(Platform::host());
    }
    let mut job = Job::new(
        (String::new(), Some(1)),
        &spec,
        &validated,
        &args.insecure_registries,
        credentials,
        Pace {
            poll: args.poll_interval,
            backoff_base: BACKOFF_BASE,
            backoff_max: BACKOFF_MAX,
            registry_timeout: REGISTRY_TIMEOUT,
        },
        tls.as_ref(),
    )
    .map_err(anyhow::Error::msg)?;

    let deadline = Instant::now() + args.timeout;
    while !st.phase.is_finished() {
        if Instant::now() >= deadline {
            let message = format!("did not finish within {:?}: {}", args.timeout, st.message);
            status::fail(&mut st, "Timeout", &message, None, &now());
            break;
        }
        let wait = job
            .step(&mut st, &platforms, Ok(targets.clone()), &now())
            .await;
        if let Some(wait) = wait {
            info!(blobs = %st.progress.blobs, bytes = %st.progress.bytes, message = %st.message, "preheating");
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(wait.min(left)).await;
        }
    }
    info!(phase = ?st.phase, message = %st.message, "preheat finished");
    Ok(st)
}

/// The JSON `preheat-local` prints.
pub fn report(st: &PreheatStatus) -> String {
    serde_json::to_string_pretty(&json!({ "status": st })).unwrap_or_default()
}

pub fn succeeded(st: &PreheatStatus) -> bool {
    st.phase == Phase::Succeeded
}
