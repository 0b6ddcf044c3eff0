//! containerd integration: `dfdaemon containerd apply|restore|check`, also
//! run by the daemon at start and stop when `containerd.enabled` is set.
//!
//! - apply: one hosts.toml per registry (or `_default`) under containerd's
//!   config_path, the local mirror first with `X-Dragonfly-Registry`, the
//!   upstream kept as `server`; originals backed up first.
//! - restore: originals back, byte for byte.
//! - check: reads containerd's config.toml and reports states that bypass
//!   the mirror. The legacy `registry.mirrors` table is only ever reported,
//!   never written.

pub mod apply;
pub mod check;
pub mod error;
pub mod hosts;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use error::ContainerdError;
pub use hosts::Registry;

/// The `containerd:` section of the dfdaemon config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct ContainerdConfig {
    /// Apply at start (and restore at stop when `restore_on_stop`).
    pub enabled: bool,
    /// containerd's registry `config_path` (the certs.d directory).
    pub config_path: PathBuf,
    /// containerd's config.toml, checked at start (never written).
    pub containerd_config: Option<PathBuf>,
    /// Registries to mirror: `HOST`, `http(s)://HOST[:PORT]` or `_default`.
    pub registries: Vec<String>,
    /// The mirror URL containerd uses (default: `http://127.0.0.1:PORT`
    /// with the proxy port, or the proxy address when bound to one IP).
    pub mirror: Option<String>,
    /// Put the original hosts.toml files back when the daemon stops, so a
    /// node without dfdaemon pulls straight from its registries.
    pub restore_on_stop: bool,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            enabled: false,
            config_path: PathBuf::from("/etc/containerd/certs.d"),
            containerd_config: None,
            registries: vec!["_default".into()],
            mirror: None,
            restore_on_stop: true,
        }
    }
}

impl ContainerdConfig {
    pub fn parsed_registries(&self) -> Result<Vec<Registry>, ContainerdError> {
        self.registries.iter().map(|r| Registry::parse(r)).collect()
    }

    pub fn mirror_url(&self, proxy: SocketAddr) -> String {
        if let Some(m) = &self.mirror {
            return m.trim_end_matches('/').to_string();
        }
        let ip = if proxy.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            match proxy.ip() {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            }
        };
        format!("http://{ip}:{}", proxy.port())
    }
}

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
                    apply::Applied::Unchanged(p) => println!("unchanged {}", p.display()),
                }
            }
            if let Some(config) = &t.containerd_config {
                return report(config, &t.config_path, false);
            }
            Ok(0)
        }
        Action::Restore(t) => {
            for done in apply::restore(&t.config_path, &parse_all(&t.registries)?)? {
                match done {
                    apply::Restored::Original(p) => println!("restored {}", p.display()),
                    apply::Restored::Removed(p) => println!("removed {}", p.display()),
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
            report(&config, &t.config_path, t.json)
        }
    }
}

fn parse_all(args: &[String]) -> Result<Vec<Registry>, ContainerdError> {
    args.iter().map(|r| Registry::parse(r)).collect()
}

fn report(config: &Path, config_path: &Path, json: bool) -> Result<u8, ContainerdError> {
    let report = check::check_file(config, Some(config_path))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if report.problems.is_empty() {
        println!(
            "{}: ok (config version {})",
            config.display(),
            report.config_version
        );
    } else {
        for p in &report.problems {
            println!("{}: {}: {}", config.display(), p.code, p.message);
        }
    }
    Ok(if report.problems.is_empty() { 0 } else { 1 })
}

/// At daemon start: write the hosts.toml files and check what containerd's
/// config would still bypass. Never fails: a node without the mirror still
/// pulls straight from its registries; the report says what went wrong.
pub fn on_start(config: &ContainerdConfig, proxy: SocketAddr) -> crate::node_report::NodeReport {
    use crate::node_report::{camel_code, NodeProblem, NodeReport};
    let mut report = NodeReport {
        configured: true,
        problems: Vec::new(),
    };
    let applied = config.parsed_registries().and_then(|registries| {
        let mirror = config.mirror_url(proxy);
        for done in apply::apply(&config.config_path, &registries, &mirror)? {
            if let apply::Applied::Written(p) = done {
                tracing::info!(path = %p.display(), %mirror, "containerd hosts.toml written");
            }
        }
        Ok(())
    });
    if let Err(e) = applied {
        tracing::error!(error = %e, "configuring containerd to use the mirror failed");
        report.configured = false;
        report.problems.push(NodeProblem {
            code: "ApplyFailed".into(),
            message: e.to_string(),
        });
    }
    if let Some(path) = &config.containerd_config {
        match check::check_file(path, Some(&config.config_path)) {
            Ok(found) => {
                for p in found.problems {
                    tracing::warn!(code = p.code, config = %path.display(), "{}", p.message);
                    report.problems.push(NodeProblem {
                        code: camel_code(p.code),
                        message: p.message,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check containerd config");
                report.problems.push(NodeProblem {
                    code: "ConfigUnreadable".into(),
                    message: e.to_string(),
                });
            }
        }
    }
    report
}

/// At daemon stop: restore the originals if configured to.
pub fn on_stop(config: &ContainerdConfig) -> Result<(), ContainerdError> {
    if !config.restore_on_stop {
        return Ok(());
    }
    let registries = config.parsed_registries()?;
    for done in apply::restore(&config.config_path, &registries)? {
        tracing::info!(?done, "containerd hosts.toml restored");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
