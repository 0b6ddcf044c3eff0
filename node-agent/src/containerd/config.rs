//! The `containerd:` section of dfdaemon's config.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::error::ContainerdError;
use super::hosts::Registry;

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
    /// How often the hosts.toml files are re-applied and containerd's
    /// config re-checked while the daemon runs.
    #[serde(with = "humantime_serde")]
    pub recheck_interval: std::time::Duration,
    /// containerd's version on this node (e.g. `2.2.10`), for verdicts that
    /// depend on it; unknown: such problems name the versions they hold for.
    pub runtime_version: Option<String>,
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
            recheck_interval: std::time::Duration::from_secs(10),
            runtime_version: None,
        }
    }
}

impl ContainerdConfig {
    pub fn parsed_registries(&self) -> Result<Vec<Registry>, ContainerdError> {
        self.registries.iter().map(|r| Registry::parse(r)).collect()
    }

    /// The mirror URL written into hosts.toml: the one configured, else
    /// the proxy's own address when it is bound to one, else the node's
    /// advertised address (what every CNI's hostPort covers, unlike
    /// 127.0.0.1, which only portmap with `snat` forwards), else loopback.
    pub fn mirror_url(&self, proxy: SocketAddr, advertise: Option<IpAddr>) -> String {
        if let Some(m) = &self.mirror {
            return m.trim_end_matches('/').to_string();
        }
        let ip = match (proxy.ip().is_unspecified(), advertise) {
            (false, _) => proxy.ip(),
            (true, Some(node)) if !node.is_unspecified() => node,
            (true, _) => IpAddr::from([127, 0, 0, 1]),
        };
        match ip {
            IpAddr::V6(v6) => format!("http://[{v6}]:{}", proxy.port()),
            v4 => format!("http://{v4}:{}", proxy.port()),
        }
    }
}
