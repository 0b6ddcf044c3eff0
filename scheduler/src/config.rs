//! Settings: command-line flags and an optional `--config FILE` (YAML) with
//! the same settings under the long flag names; flags override the file,
//! the file overrides the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// gRPC address for peers.
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// How often hosts are told to heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Hosts silent this long are forgotten; unset means three heartbeat
    /// intervals, so one or two lost heartbeats are tolerated.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub host_ttl: Option<Duration>,
    /// Parents returned per scheduling answer. Eight rather than four: with
    /// four, every child of a swarm saw the same few best-ranked peers, whose
    /// uplinks carried 8-13 pieces at once while others idled 10-22 % of
    /// the time (8 hosts, all pulling at once).
    pub max_parents: usize,
    /// Tasks with no peers are forgotten after this long.
    #[serde(with = "humantime_serde")]
    pub task_idle_ttl: Duration,
    /// Tag -> digest answers reported by dfdaemons, and the objects they saw
    /// their registry serve without credentials, are handed out this long
    /// (to nodes serving an image while the registry is down).
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// The cluster identity: with it the gRPC port speaks mutual TLS with
    /// members only, and each member speaks for its own host only.
    pub tls: identity::TlsSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8002)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            heartbeat_interval: Duration::from_secs(5),
            host_ttl: None,
            max_parents: 8,
            task_idle_ttl: Duration::from_secs(600),
            tag_ttl: Duration::from_secs(24 * 3600),
            tls: Default::default(),
        }
    }
}

impl Config {
    pub fn host_ttl(&self) -> Duration {
        self.host_ttl.unwrap_or(self.heartbeat_interval * 3)
    }

    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // serde_yaml reads an empty document as null, not as an empty map.
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "heartbeat-interval must be > 0".into(),
            ));
        }
        if u32::try_from(self.heartbeat_interval.as_millis()).is_err() {
            return Err(ConfigError::Invalid(
                "heartbeat-interval is too long".into(),
            ));
        }
        if self.host_ttl() < self.heartbeat_interval {
            return Err(ConfigError::Invalid(
                "host-ttl must be at least one heartbeat-interval".into(),
            ));
        }
        if self.max_parents == 0 {
            return Err(ConfigError::Invalid("max-parents must be >= 1".into()));
        }
        self.tls
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("tls: {e}")))?;
        Ok(())
    }
}

/// Knows hosts, tasks and who holds which pieces; picks parents for every
/// downloading peer; elects the one back-to-source downloader per task.
#[derive(Debug, Default, Parser)]
#[command(name = "dragonfly-scheduler", version, about)]
pub struct Cli {
    /// YAML file with the same settings as the flags (keys are the long flag
    /// names); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:8002].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin listen address (/healthz, /readyz, /metrics) [default: 0.0.0.0:8000].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Heartbeat interval asked of hosts, e.g. 5s [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Forget hosts silent this long [default: 3 × heartbeat-interval].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub host_ttl: Option<Duration>,
    /// Parents per scheduling answer [default: 8].
    #[arg(long, value_name = "N")]
    pub max_parents: Option<usize>,
    /// Forget tasks without peers after this long [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub task_idle_ttl: Option<Duration>,
    /// Hand out reported tag -> digest answers, and anonymous reads, this
    /// long [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub tag_ttl: Option<Duration>,
    #[command(flatten)]
    pub tls: identity::TlsSettings,
}

impl Cli {
    /// Defaults, then the file, then the flags; validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.admin_listen {
            config.admin_listen = v;
        }
        if let Some(v) = self.heartbeat_interval {
            config.heartbeat_interval = v;
        }
        if let Some(v) = self.host_ttl {
            config.host_ttl = Some(v);
        }
        if let Some(v) = self.max_parents {
            config.max_parents = v;
        }
        if let Some(v) = self.task_idle_ttl {
            config.task_idle_ttl = v;
        }
        if let Some(v) = self.tag_ttl {
            config.tag_ttl = v;
        }
        config.tls = config.tls.overridden_by(self.tls.clone());
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = Cli::parse_from(["dragonfly-scheduler"]).load().unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8002");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:8000");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.host_ttl(), Duration::from_secs(15));
        assert_eq!(c.max_parents, 8);
        assert_eq!(c.task_idle_ttl, Duration::from_secs(600));
    }

    #[test]
    fn host_ttl_follows_heartbeat_unless_set() {
        let c = Cli::parse_from(["s", "--heartbeat-interval", "2s"])
            .load()
            .unwrap();
        assert_eq!(c.host_ttl(), Duration::from_secs(6));
        let c = Cli::parse_from(["s", "--heartbeat-interval", "2s", "--host-ttl", "1m"])
            .load()
            .unwrap();
        assert_eq!(c.host_ttl(), Duration::from_secs(60));
    }

    #[test]
    fn flags_override_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut file,
            b"listen: 127.0.0.1:9002\nadmin-listen: 127.0.0.1:9000\nheartbeat-interval: 1s\nmax-parents: 8\ntask-idle-ttl: 30s\n",
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let c = Cli::parse_from(["s", "--config", path, "--max-parents", "2"])
            .load()
            .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9002");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.host_ttl(), Duration::from_secs(3));
        assert_eq!(c.max_parents, 2);
        assert_eq!(c.task_idle_ttl, Duration::from_secs(30));
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::from_yaml("  \n", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(matches!(
            Config::from_yaml("listne: 1.2.3.4:5", Path::new("x")),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Cli::parse_from(["s", "--max-parents", "0"]).load(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Cli::parse_from(["s", "--heartbeat-interval", "10s", "--host-ttl", "1s"]).load(),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Cli {
                config: Some("/nonexistent/scheduler.yaml".into()),
                ..Default::default()
            }
            .load(),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = Config {
            host_ttl: Some(Duration::from_secs(20)),
            ..Config::default()
        };
        let text = serde_yaml::to_string(&c).unwrap();
        assert!(text.contains("admin-listen"), "{text}");
        assert_eq!(Config::from_yaml(&text, Path::new("x")).unwrap(), c);
    }
}
