//! `dfdaemon run` flags. Each flag overrides the same setting of `--config`.

use bytesize::ByteSize;
use clap::Args;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::config::{ConfigError, DaemonConfig};

#[derive(Debug, Clone, Args, Default)]
pub struct RunArgs {
    /// YAML file with the same settings as the flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Scheduler addresses (`host:port`, comma separated or repeated), or a
    /// DNS name resolving to every replica.
    #[arg(long, value_delimiter = ',')]
    pub scheduler: Vec<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Content store quota, e.g. 20GiB.
    #[arg(long)]
    pub cache_size: Option<ByteSize>,
    /// GC starts when the cache passes this percentage of --cache-size or
    /// its filesystem this percentage used (1-99, default 90).
    #[arg(long, env = "DFDAEMON_GC_HIGH_WATERMARK", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub gc_high_watermark: Option<u8>,
    /// GC stops once both are at or below this percentage (default 70).
    #[arg(long, env = "DFDAEMON_GC_LOW_WATERMARK", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub gc_low_watermark: Option<u8>,
    /// Evict tasks not accessed for this long, e.g. 24h (0s: never).
    #[arg(long)]
    pub task_ttl: Option<humantime::Duration>,
    /// kubelet's root directory (or any path on its filesystem; in a pod,
    /// /etc/hosts), to tell whether the cache shares that filesystem
    /// (default /var/lib/kubelet).
    #[arg(long)]
    pub kubelet_root_dir: Option<PathBuf>,
    /// kubelet's hard eviction threshold: percent of the filesystem
    /// available (default 10, as nodefs.available<10%).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    pub kubelet_eviction_threshold: Option<u8>,
    #[arg(long)]
    pub proxy_listen: Option<SocketAddr>,
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Local task API: unix:/PATH (default unix:/run/dragonfly/dfdaemon.sock)
    /// or a loopback HOST:PORT.
    #[arg(long)]
    pub api_listen: Option<crate::api_address::ApiAddress>,
    /// Serve the forward proxy for this host (`host` or `host:port`,
    /// repeatable); without any, the forward proxy is off.
    #[arg(long = "forward-proxy-host")]
    pub forward_proxy_hosts: Vec<String>,
    /// A loopback or link-local network (CIDR) origin and registry requests
    /// may reach after all (repeatable); such addresses are refused otherwise.
    #[arg(long = "allow-destination")]
    pub allowed_destinations: Vec<String>,
    /// A registry this node mirrors (HOST, docker.io or URL; repeatable):
    /// the mirror refuses requests for any other upstream.
    #[arg(long = "registry")]
    pub mirrored_registries: Vec<String>,
    /// Open connections per listener.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Open connections per listener from one client address.
    #[arg(long)]
    pub max_connections_per_client: Option<usize>,
    /// Deadline for a request's headers (and idle keep-alive), e.g. 30s.
    #[arg(long)]
    pub header_timeout: Option<humantime::Duration>,
    #[arg(long, env = "DFDAEMON_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Run as a seed peer.
    #[arg(long)]
    pub seed: bool,
    #[arg(long, env = "DFDAEMON_HOSTNAME")]
    pub hostname: Option<String>,
    /// Location label `key=value` (repeatable), e.g. zone=eu-1a.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Concurrent piece uploads.
    #[arg(long)]
    pub upload_limit: Option<u32>,
    /// Upload bandwidth cap per second, e.g. 100MiB.
    #[arg(long)]
    pub upload_rate: Option<ByteSize>,
    #[arg(long)]
    pub heartbeat_interval: Option<humantime::Duration>,
    #[arg(long)]
    pub stall_timeout: Option<humantime::Duration>,
    #[arg(long)]
    pub piece_wait: Option<humantime::Duration>,
    #[arg(long)]
    pub piece_timeout: Option<humantime::Duration>,
    /// After SIGTERM, how long answers in flight may still stream; keep it
    /// under the pod's termination grace period.
    #[arg(long)]
    pub shutdown_grace: Option<humantime::Duration>,
    /// Mirror upstream for requests naming none (lazy-pull clients): a
    /// host or an http(s) URL.
    #[arg(long)]
    pub default_registry: Option<String>,
    /// What cached content the mirror serves while the registry cannot
    /// confirm the caller may read it.
    #[arg(long, value_enum)]
    pub offline_policy: Option<crate::mirror::config::OfflinePolicy>,
    /// Prefetch the rest of a blob in the background after its first range
    /// request (lazy pull).
    #[arg(long)]
    pub prefetch: bool,
    /// Pace of that background prefetch per second, e.g. 20MiB.
    #[arg(long)]
    pub prefetch_rate: Option<ByteSize>,
    /// Write containerd hosts.toml files at start and restore them at stop.
    #[arg(long)]
    pub containerd: bool,
    /// containerd's registry config_path (certs.d directory).
    #[arg(long)]
    pub containerd_config_path: Option<PathBuf>,
    /// containerd's config.toml, checked at start for settings that bypass
    /// the mirror (never written).
    #[arg(long)]
    pub containerd_config: Option<PathBuf>,
    /// Registry containerd should pull through the mirror (repeatable):
    /// HOST, http(s)://HOST[:PORT], docker.io or _default.
    #[arg(long = "containerd-registry")]
    pub containerd_registries: Vec<String>,
    #[command(flatten)]
    pub tls: identity::TlsSettings,
}

impl RunArgs {
    /// The file's settings (or defaults) with every given flag applied.
    pub fn into_config(self) -> Result<DaemonConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => DaemonConfig::load(path)?,
            None => DaemonConfig::default(),
        };
        if !self.scheduler.is_empty() {
            config.scheduler = self.scheduler;
        }
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v.into(); } )* };
        }
        set!(
            data_dir,
            cache_size,
            gc_high_watermark,
            gc_low_watermark,
            kubelet_root_dir,
            kubelet_eviction_threshold,
            proxy_listen,
            peer_listen,
            admin_listen,
            api_listen,
            upload_limit,
            max_connections,
            max_connections_per_client
        );
        set!(
            heartbeat_interval,
            stall_timeout,
            piece_wait,
            piece_timeout,
            header_timeout,
            shutdown_grace,
            task_ttl
        );
        if self.advertise_ip.is_some() {
            config.advertise_ip = self.advertise_ip;
        }
        if self.upload_rate.is_some() {
            config.upload_rate = self.upload_rate;
        }
        if self.hostname.is_some() {
            config.hostname = self.hostname;
        }
        config.seed |= self.seed;
        if self.default_registry.is_some() {
            config.mirror.default_registry = self.default_registry;
        }
        if let Some(policy) = self.offline_policy {
            config.mirror.offline_policy = policy;
        }
        config.mirror.prefetch |= self.prefetch;
        if let Some(rate) = self.prefetch_rate {
            config.prefetch_rate = rate;
        }
        config.containerd.enabled |= self.containerd;
        if self.containerd_config.is_some() {
            config.containerd.containerd_config = self.containerd_config;
        }
        if let Some(path) = self.containerd_config_path {
            config.containerd.config_path = path;
        }
        if !self.mirrored_registries.is_empty() {
            config.mirror.mirrored_registries = self.mirrored_registries;
        }
        if !self.allowed_destinations.is_empty() {
            config.mirror.allowed_destinations = self.allowed_destinations;
        }
        if !self.forward_proxy_hosts.is_empty() {
            config.mirror.forward_proxy_hosts = self.forward_proxy_hosts;
        }
        if !self.containerd_registries.is_empty() {
            config.containerd.registries = self.containerd_registries;
        }
        config.tls = config.tls.overridden_by(self.tls);
        for label in self.labels {
            let (k, v) = label
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("label {label:?} is not key=value")))?;
            config.labels.insert(k.to_string(), v.to_string());
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "cache_size: 1GiB\nupload_limit: 3\nscheduler: [a:1]\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path),
            upload_limit: Some(9),
            labels: vec!["zone=z1".into()],
            ..Default::default()
        };
        let config = args.into_config().unwrap();
        assert_eq!(config.cache_size, ByteSize::gib(1));
        assert_eq!(config.upload_limit, 9);
        assert_eq!(config.scheduler, vec!["a:1".to_string()]);
        assert_eq!(config.labels["zone"], "z1");
        let bad = RunArgs {
            labels: vec!["novalue".into()],
            ..Default::default()
        };
        assert!(bad.into_config().is_err());
        let bad = RunArgs {
            gc_high_watermark: Some(60),
            gc_low_watermark: Some(70),
            ..Default::default()
        };
        let err = bad.into_config().unwrap_err().to_string();
        assert!(
            err.contains("gc_low_watermark (70) < gc_high_watermark (60)"),
            "{err}"
        );
    }
}
