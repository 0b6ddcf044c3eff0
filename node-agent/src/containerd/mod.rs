//! containerd integration: `dfdaemon containerd apply|restore|check`, also
//! run by the daemon at start and stop when `containerd.enabled` is set.
//!
//! - apply: one hosts.toml per registry (or `_default`) under containerd's
//!   config_path, the local mirror first with `X-Dragonfly-Registry`, the
//!   upstream kept as `server`; what was there backed up first.
//! - restore: what was there before the last apply back, byte for byte.
//! - check: reads containerd's config.toml and reports states that bypass
//!   the mirror. The legacy `registry.mirrors` table is only ever reported,
//!   never written.
//!
//! The daemon re-applies and re-checks periodically (`watch`).

pub mod apply;
pub mod check;
pub mod config;
pub mod error;
pub mod hosts;
pub mod watch;

use clap::{Args, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use config::ContainerdConfig;
pub use error::ContainerdError;
pub use hosts::Registry;

/// `dfdaemon containerd ...`
#[derive(Debug, Clone, Args)]
pub struct ContainerdArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Action {
    /// Write hosts.toml files pointing containerd at the mirror.
    Apply(Target),
    /// Put back what apply replaced.
    Restore(Target),
    /// Report containerd settings that bypass the mirror (exit 1 if any).
    Check(Target),
}

#[derive(Debug, Clone, Args)]
pub struct Target {
    /// containerd's registry config_path (certs.d directory).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub config_path: PathBuf,
    /// containerd's config.toml (checked, never written).
    #[arg(long)]
    pub containerd_config: Option<PathBuf>,
    /// Registry to mirror: HOST (https), http(s)://HOST[:PORT], docker.io or
    /// _default. Repeatable. apply defaults to _default; restore to all.
    #[arg(long = "registry")]
    pub registries: Vec<String>,
    /// The mirror containerd should use.
    #[arg(long, default_value = "http://127.0.0.1:65001")]
    pub mirror: String,
    /// Print the check report as JSON.
    #[arg(long)]
    pub json: bool,
    /// containerd's version on the node (`containerd --version`, or the
    /// Node's containerRuntimeVersion), for verdicts that depend on it.
    #[arg(long)]
    pub containerd_version: Option<String>,
}

/// Runs a `dfdaemon containerd` command; returns the process exit code.
pub fn run_cli(args: ContainerdArgs) -> Result<u8, ContainerdError> {
    match args.action {
        Action::Apply(t) => {
            let mut registries = parse_all(&t.registries)?;
            if registries.is_empty() {
                registries.push(Registry::parse("_default")?);
            }
            for done in apply::apply(&t.config_path, &registries, t.mirror.trim_end_matches('/'))? {
                match done {
                    apply::Applied::Written(p) => println!("wrote {}", p.display()),
                    apply::Applied::Readopted(p) => println!(
                        "wrote {} (another writer had changed it since the last apply: its version is the new original)",
                        p.display()
                    ),
                    apply::Applied::Unchanged(p) => println!("unchanged {}", p.display()),
                }
            }
            if let Some(config) = &t.containerd_config {
                return report(config, &t);
            }
            Ok(0)
        }
        Action::Restore(t) => {
            let mirror = t.mirror.trim_end_matches('/');
            for done in apply::restore(&t.config_path, &parse_all(&t.registries)?, mirror)? {
                match done {
                    apply::Restored::Original(p) => println!("restored {}", p.display()),
                    apply::Restored::Removed(p) => println!("removed {}", p.display()),
                    apply::Restored::KeptOtherWriter(p) => println!(
                        "kept {} as another writer left it (changed after the last apply), without the mirror",
                        p.display()
                    ),
                    apply::Restored::NothingToDo(r) => println!("nothing to restore for {r}"),
                }
            }
            Ok(0)
        }
        Action::Check(t) => {
            let config = t
                .containerd_config
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/containerd/config.toml"));
            report(&config, &t)
        }
    }
}

fn parse_all(args: &[String]) -> Result<Vec<Registry>, ContainerdError> {
    args.iter().map(|r| Registry::parse(r)).collect()
}

/// Prints the check; exit 0: nothing bypasses the mirror, 1: something
/// does, 2: it depends on containerd's version, which was not given.
fn report(config: &Path, t: &Target) -> Result<u8, ContainerdError> {
    let mut report = check::check_file(config, Some(&t.config_path))?;
    let version = t
        .containerd_version
        .clone()
        .or_else(installed_containerd_version);
    if let Some(version) = &version {
        report = report.for_runtime(version);
    }
    if t.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for p in &report.problems {
            if p.runtimes.is_all() {
                println!("{}: {}: {}", config.display(), p.code, p.message);
            } else {
                println!(
                    "{}: {} (on containerd {}): {}",
                    config.display(),
                    p.code,
                    p.runtimes,
                    p.message
                );
            }
        }
        for w in &report.warnings {
            println!("{}: warning: {}: {}", config.display(), w.code, w.message);
        }
        if report.problems.is_empty() {
            println!(
                "{}: ok (config version {})",
                config.display(),
                report.config_version
            );
        }
    }
    Ok(if report.problems.is_empty() {
        0
    } else if report.certain_problems().next().is_some() {
        1
    } else {
        if !t.json {
            println!("cannot tell without containerd's version: pass --containerd-version");
        }
        2
    })
}

/// `containerd --version` of the containerd on PATH, when there is one
/// (on the node; not inside dfdaemon's pod).
fn installed_containerd_version() -> Option<String> {
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()?;
    parse_containerd_version(&String::from_utf8_lossy(&out.stdout))
}

/// `containerd github.com/containerd/containerd/v2 v2.2.10 <rev>` -> `v2.2.10`.
fn parse_containerd_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|word| {
            let word = word.strip_prefix('v').unwrap_or(word);
            word.starts_with(|c: char| c.is_ascii_digit())
                && check::RuntimeVersion::parse(word).is_some()
        })
        .map(str::to_string)
}

/// At daemon start: writes the hosts.toml files and checks containerd's
/// config once, before the daemon reports ready; `watch::run` goes on.
pub fn on_start(
    config: &ContainerdConfig,
    proxy: SocketAddr,
    advertise: Option<IpAddr>,
) -> (watch::Watcher, crate::node_report::NodeReport) {
    let mut watcher = watch::Watcher::new(config.clone(), config.mirror_url(proxy, advertise));
    let report = watcher.pass(tokio::time::Instant::now());
    (watcher, report)
}

/// At daemon stop: restore what was there before, if configured to.
pub fn on_stop(
    config: &ContainerdConfig,
    proxy: SocketAddr,
    advertise: Option<IpAddr>,
) -> Result<(), ContainerdError> {
    if !config.restore_on_stop || watch::managed_distribution(config).is_some() {
        return Ok(());
    }
    let registries = config.parsed_registries()?;
    for done in apply::restore(
        &config.config_path,
        &registries,
        &config.mirror_url(proxy, advertise),
    )? {
        tracing::info!(?done, "containerd hosts.toml restored");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
