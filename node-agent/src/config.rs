//! dfdaemon settings: a YAML file (`--config`) with documented defaults, and
//! flags that override it.

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct DaemonConfig {
    /// Scheduler addresses (`host:port`); a name resolving to many addresses
    /// reaches every replica. Empty: download straight from the origin.
    pub scheduler: Vec<String>,
    pub data_dir: PathBuf,
    /// Content store quota.
    pub cache_size: ByteSize,
    /// Garbage collection starts when the cache passes this percentage of
    /// its quota, or the filesystem holding it this percentage used
    /// (other writers included)...
    pub gc_high_watermark: u8,
    /// ...and stops once both are at or below this percentage.
    pub gc_low_watermark: u8,
    /// Tasks not accessed for this long are evicted even under the
    /// watermarks; 0 keeps them.
    #[serde(with = "humantime_serde")]
    pub task_ttl: Duration,
    /// kubelet's root directory: when the cache shares its filesystem and
    /// the high watermark leaves less free than kubelet's eviction
    /// threshold, the node report says so. Absent: not a kubelet node.
    pub kubelet_root_dir: PathBuf,
    /// kubelet's hard eviction threshold, percent of the filesystem
    /// available (`nodefs.available<10%` by default).
    pub kubelet_eviction_threshold: u8,
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    pub proxy_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The local task API (dfget): `unix:/PATH` or a loopback `host:port`.
    pub api_listen: crate::api_address::ApiAddress,
    /// Open connections per listener, in all...
    pub max_connections: usize,
    /// ...and from one client address.
    pub max_connections_per_client: usize,
    /// A request's headers must arrive within this; also how long an idle
    /// keep-alive connection stays open.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Address other peers reach this one at (default: the peer-listen
    /// address when it is specific, else the host's address).
    pub advertise_ip: Option<IpAddr>,
    /// Run as a seed peer: preferred back-to-source downloader.
    pub seed: bool,
    pub hostname: Option<String>,
    /// Location labels (zone, region, rack) used to prefer nearby parents.
    pub labels: BTreeMap<String, String>,
    /// Concurrent piece uploads to other peers.
    pub upload_limit: u32,
    /// Upload bandwidth cap in bytes per second (none: unlimited).
    pub upload_rate: Option<ByteSize>,
    /// How long the piece server waits for a piece that is still arriving.
    #[serde(with = "humantime_serde")]
    pub piece_wait: Duration,
    /// Whole-piece fetch timeout from a parent (includes `piece_wait`).
    #[serde(with = "humantime_serde")]
    pub piece_timeout: Duration,
    /// Pieces fetched in parallel per task from complete parents and
    /// seeds, and as many again from parents still downloading.
    pub concurrent_pieces: usize,
    /// Pieces fetched in parallel from one parent.
    pub concurrent_pieces_per_parent: usize,
    /// Without any progress from peers for this long, go to the origin.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub parent_refresh: Duration,
    /// Background prefetch of a lazily read task (the rest of a blob after
    /// its first range) is paced to this many bytes per second.
    pub prefetch_rate: ByteSize,
    /// A lazy run with nothing left to fetch waits this long for more
    /// wants before it ends (a new want starts another run).
    #[serde(with = "humantime_serde")]
    pub lazy_linger: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Query parameters ignored when deriving a URL's task id.
    pub filtered_query_params: Vec<String>,
    /// The registry mirror on `proxy_listen`.
    pub mirror: crate::mirror::config::MirrorConfig,
    /// Writing containerd's hosts.toml files at start, restoring at stop.
    pub containerd: crate::containerd::ContainerdConfig,
    /// The cluster identity (`dir`, `bootstrap`...): with it the peer port
    /// serves cluster members only, over mutual TLS, and the host id is the
    /// certificate's name.
    pub tls: identity::TlsSettings,
    /// After SIGTERM, how long answers in flight (a blob streaming to
    /// containerd) may take to finish; keep it under the pod's grace period.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            scheduler: Vec::new(),
            data_dir: PathBuf::from("/var/lib/dragonfly"),
            cache_size: ByteSize::gib(20),
            gc_high_watermark: 90,
            gc_low_watermark: 70,
            task_ttl: Duration::from_secs(24 * 3600),
            kubelet_root_dir: PathBuf::from("/var/lib/kubelet"),
            kubelet_eviction_threshold: 10,
            gc_interval: Duration::from_secs(60),
            proxy_listen: SocketAddr::from(([0, 0, 0, 0], 65001)),
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 65002)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 40901)),
            api_listen: Default::default(),
            max_connections: 1024,
            max_connections_per_client: 256,
            header_timeout: Duration::from_secs(30),
            advertise_ip: None,
            seed: false,
            hostname: None,
            labels: BTreeMap::new(),
            upload_limit: 32,
            upload_rate: None,
            piece_wait: Duration::from_secs(30),
            piece_timeout: Duration::from_secs(60),
            // Few pieces at a time, each arriving fast, so it can be
            // forwarded sooner; more only split the same link, fewer leave
            // it idle between answers (four 512 KiB pieces: the slowest of
            // eight nodes at 1.20-1.25 T*, six: 1.18-1.20; three 1 MiB
            // pieces 1.26, two 1.53). Peers still downloading get a budget
            // of their own on top.
            concurrent_pieces: 6,
            concurrent_pieces_per_parent: 2,
            stall_timeout: Duration::from_secs(30),
            parent_refresh: Duration::from_millis(200),
            prefetch_rate: ByteSize::mib(20),
            lazy_linger: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            filtered_query_params: crate::task_id::default_filtered(),
            mirror: Default::default(),
            containerd: Default::default(),
            tls: Default::default(),
            // The DaemonSet's grace period is 60 s: restoring containerd's
            // files and leaving the scheduler come first.
            shutdown_grace: Duration::from_secs(45),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl DaemonConfig {
    /// The GC watermarks as shares (0..1).
    pub fn watermarks(&self) -> crate::store::Watermarks {
        crate::store::Watermarks {
            high: f64::from(self.gc_high_watermark) / 100.0,
            low: f64::from(self.gc_low_watermark) / 100.0,
        }
    }

    pub fn serve_limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            header_timeout: self.header_timeout,
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let (low, high) = (self.gc_low_watermark, self.gc_high_watermark);
        if !(1..=99).contains(&low) || !(1..=99).contains(&high) || low >= high {
            return Err(ConfigError::Invalid(format!(
                "gc watermarks are percentages with 1 <= gc_low_watermark ({low}) < gc_high_watermark ({high}) <= 99"
            )));
        }
        if !(1..=99).contains(&self.kubelet_eviction_threshold) {
            return Err(ConfigError::Invalid(format!(
                "kubelet_eviction_threshold is a percentage of the filesystem available, 1 to 99, not {}",
                self.kubelet_eviction_threshold
            )));
        }
        if self.upload_limit == 0 {
            return Err(ConfigError::Invalid(
                "upload_limit must be at least 1".into(),
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            return Err(ConfigError::Invalid(
                "max_connections settings must be at least 1".into(),
            ));
        }
        if self.header_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "header_timeout must be more than 0".into(),
            ));
        }
        if self.concurrent_pieces == 0 || self.concurrent_pieces_per_parent == 0 {
            return Err(ConfigError::Invalid(
                "concurrent_pieces settings must be at least 1".into(),
            ));
        }
        if self.piece_timeout <= self.piece_wait {
            return Err(ConfigError::Invalid(
                "piece_timeout must exceed piece_wait".into(),
            ));
        }
        // Mirror and containerd settings fail here, at load, rather than
        // when the first pull needs them.
        if let Err(e) = regex::RegexSet::new(&self.mirror.proxy_rules) {
            return Err(ConfigError::Invalid(format!("mirror.proxy_rules: {e}")));
        }
        crate::destination::DestinationPolicy::new(&self.mirror.allowed_destinations)
            .map_err(|e| ConfigError::Invalid(format!("mirror.allowed_destinations: {e}")))?;
        for entry in &self.mirror.mirrored_registries {
            crate::mirror::upstream::parse_registry(entry, &self.mirror)
                .map_err(|e| ConfigError::Invalid(format!("mirror.mirrored_registries: {e}")))?;
        }
        if let Some(default) = &self.mirror.default_registry {
            crate::mirror::upstream::parse_registry(default, &self.mirror)
                .map_err(|e| ConfigError::Invalid(format!("mirror.default_registry: {e}")))?;
        }
        self.containerd
            .parsed_registries()
            .map_err(|e| ConfigError::Invalid(format!("containerd.registries: {e}")))?;
        self.tls
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("tls: {e}")))?;
        Ok(())
    }

    /// The IP other peers should use for this host.
    pub fn advertised_ip(&self) -> IpAddr {
        if let Some(ip) = self.advertise_ip {
            return ip;
        }
        if !self.peer_listen.ip().is_unspecified() {
            return self.peer_listen.ip();
        }
        // The first non-loopback address the host name resolves to.
        use std::net::ToSocketAddrs;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        (hostname.trim(), 0)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.find(|a| !a.ip().is_loopback()))
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_human_units() {
        let yaml = "scheduler: [\"sched:8002\"]\ncache_size: 20GiB\npiece_wait: 10s\npiece_timeout: 20s\nlabels: {zone: a}\n";
        let config: DaemonConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(config.cache_size, ByteSize::gib(20));
        assert_eq!(config.piece_wait, Duration::from_secs(10));
        assert_eq!(config.labels["zone"], "a");
        config.validate().unwrap();
    }

    #[test]
    fn mirror_and_containerd_sections() {
        let yaml = r#"
mirror:
  default_registry: docker.io
  registries:
    registry.internal:5000: {plain_http: true}
    secure.internal: {ca_file: /etc/ssl/internal.pem}
  manifest_cache_ttl: 5m
  auth_check_ttl: 30s
  offline_policy: credentials
  proxy_rules: ["blobs/sha256.*", "\\.tar\\.gz$"]
containerd:
  enabled: true
  config_path: /etc/containerd/certs.d
  registries: [docker.io, "http://registry.internal:5000"]
"#;
        let config: DaemonConfig = serde_yaml::from_str(yaml).unwrap();
        config.validate().unwrap();
        assert_eq!(config.mirror.manifest_cache_ttl, Duration::from_secs(300));
        assert_eq!(
            config.mirror.offline_policy,
            crate::mirror::config::OfflinePolicy::Credentials
        );
        assert_eq!(
            config.mirror.registries["registry.internal:5000"].plain_http,
            Some(true)
        );
        assert!(config.containerd.enabled);
        assert_eq!(config.containerd.parsed_registries().unwrap().len(), 2);
        for bad in [
            "mirror: {default_registri: x}",
            "containerd: {enable: true}",
            "mirror: {offline_policy: sometimes}",
        ] {
            assert!(serde_yaml::from_str::<DaemonConfig>(bad).is_err(), "{bad}");
        }
        for bad in [
            "mirror: {proxy_rules: ['(']}",
            "mirror: {default_registry: 'ftp://x'}",
            "containerd: {registries: ['a/b']}",
        ] {
            let config: DaemonConfig = serde_yaml::from_str(bad).unwrap();
            assert!(config.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(serde_yaml::from_str::<DaemonConfig>("cache_sise: 1GiB").is_err());
        for (low, high, threshold) in [
            (95, 90, 10),
            (90, 90, 10),
            (0, 90, 10),
            (70, 100, 10),
            (70, 90, 0),
        ] {
            let config = DaemonConfig {
                gc_low_watermark: low,
                gc_high_watermark: high,
                kubelet_eviction_threshold: threshold,
                ..Default::default()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains("watermark") || err.contains("kubelet"),
                "{err}"
            );
        }
        // A share written as before (0.9) is refused, not read as 0 %.
        assert!(serde_yaml::from_str::<DaemonConfig>("gc_high_watermark: 0.9").is_err());
        let config: DaemonConfig =
            serde_yaml::from_str("gc_high_watermark: 85\ngc_low_watermark: 60\ntask_ttl: 0s")
                .unwrap();
        config.validate().unwrap();
        assert!(config.task_ttl.is_zero());
        assert!((config.watermarks().high - 0.85).abs() < 1e-9);
    }
}
