//! Mirror settings (the `mirror:` section of the dfdaemon config).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct MirrorConfig {
    /// Upstream for requests that name none (no `X-Dragonfly-Registry`
    /// header, no `ns` parameter), as lazy-pull clients send them: a host
    /// (`registry.example.com`, `docker.io`) or a URL with its scheme.
    pub default_registry: Option<String>,
    /// Per-registry TLS and scheme settings, keyed by `host[:port]`.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// How long a tag's manifest may be served from memory while the
    /// upstream is unreachable. Manifests by digest never go stale.
    #[serde(with = "humantime_serde")]
    pub manifest_cache_ttl: Duration,
    /// How long an upstream "yes, these credentials may read this
    /// repository" is trusted before blobs are served without asking again.
    #[serde(with = "humantime_serde")]
    pub auth_check_ttl: Duration,
    /// What cached blobs may be served when the upstream cannot be asked.
    pub offline_policy: OfflinePolicy,
    /// Connecting to an upstream registry.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Until an upstream's response headers arrive; then the mirror answers
    /// with an error so containerd tries its next host.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// After a blob's first range request, fetch the rest of it in the
    /// background at `prefetch_rate` (per request: `X-Dragonfly-Prefetch:
    /// true|false`).
    pub prefetch: bool,
    /// A range read that gets no new bytes for this long is answered with
    /// an error, so a lazy-pull client (nydusd) falls back to the registry
    /// well before its own timeout.
    #[serde(with = "humantime_serde")]
    pub range_timeout: Duration,
    /// Forward HTTP proxy on the same port (a runtime configured with
    /// `image-proxy: http://127.0.0.1:65001`), for these hosts only
    /// (`host`, any port, or `host:port`): absolute-URI requests and
    /// CONNECT tunnels. Empty (the default): no forward proxy, so the port
    /// is never an open relay into the cluster network.
    pub forward_proxy_hosts: Vec<String>,
    /// Networks (CIDR) that origin and registry requests, and the
    /// redirects they follow, may reach although they are loopback,
    /// link-local or otherwise this host's own (e.g. a registry on the
    /// node's localhost). Everything else is reachable; those never are
    /// unless listed.
    pub allowed_destinations: Vec<String>,
    /// The registries this node mirrors (`HOST`, `docker.io` or a URL):
    /// requests naming any other upstream are refused, so a caller cannot
    /// point the mirror (and its access checks) at a registry of its own.
    /// Empty: any registry (a warning at start).
    pub mirrored_registries: Vec<String>,
    /// Regexes over the full URL: matching GETs of a forward-proxied request
    /// go through P2P, everything else passes straight through.
    pub proxy_rules: Vec<String>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            default_registry: None,
            registries: BTreeMap::new(),
            manifest_cache_ttl: Duration::from_secs(600),
            auth_check_ttl: Duration::from_secs(60),
            offline_policy: OfflinePolicy::default(),
            connect_timeout: Duration::from_secs(3),
            upstream_timeout: Duration::from_secs(20),
            prefetch: false,
            range_timeout: Duration::from_secs(4),
            forward_proxy_hosts: Vec::new(),
            allowed_destinations: Vec::new(),
            mirrored_registries: Vec::new(),
            proxy_rules: vec!["blobs/sha256.*".into()],
        }
    }
}

impl MirrorConfig {
    /// The destination policy these settings give (an invalid entry, which
    /// `DaemonConfig::validate` reports at load, allows nothing extra).
    pub fn destinations(&self) -> std::sync::Arc<crate::destination::DestinationPolicy> {
        std::sync::Arc::new(
            crate::destination::DestinationPolicy::new(&self.allowed_destinations)
                .unwrap_or_default(),
        )
    }

    /// Whether the forward proxy may reach `host` on `port`.
    pub fn forward_proxy_allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.forward_proxy_hosts.iter().any(|allowed| {
            let (allowed_host, allowed_port) = match allowed.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(':') && p.parse::<u16>().is_ok() => {
                    (h, p.parse::<u16>().ok())
                }
                _ => (allowed.as_str(), None),
            };
            let allowed_host = allowed_host.trim_start_matches('[').trim_end_matches(']');
            allowed_host.eq_ignore_ascii_case(host) && allowed_port.is_none_or(|p| p == port)
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct RegistryConfig {
    /// Talk plain HTTP to this registry. Default: HTTPS, except loopback
    /// hosts (localhost, 127.0.0.0/8, ::1), which containerd also reaches
    /// over plain HTTP.
    pub plain_http: Option<bool>,
    /// Extra PEM CA bundle trusted for this registry.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (test registries only).
    pub insecure_skip_verify: bool,
}

/// Which cached content is served while the upstream cannot confirm that
/// the caller may read it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OfflinePolicy {
    /// Nothing: every blob needs a live upstream check.
    Deny,
    /// Content of repositories the upstream served without credentials.
    #[default]
    Anonymous,
    /// Also content the same credentials were allowed to read before.
    Credentials,
    /// Anything the cluster holds (registries without private content):
    /// lets a node that never reached the registry pull during an outage.
    Any,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_proxy_reaches_listed_hosts_only() {
        let none = MirrorConfig::default();
        assert!(!none.forward_proxy_allows("registry.example.com", 443));
        let some = MirrorConfig {
            forward_proxy_hosts: vec!["registry.example.com".into(), "10.0.0.5:5000".into()],
            ..Default::default()
        };
        assert!(some.forward_proxy_allows("registry.example.com", 443));
        assert!(some.forward_proxy_allows("REGISTRY.example.com", 80));
        assert!(some.forward_proxy_allows("10.0.0.5", 5000));
        assert!(!some.forward_proxy_allows("10.0.0.5", 22));
        assert!(!some.forward_proxy_allows("169.254.169.254", 80));
        assert!(!some.forward_proxy_allows("registry.example.com.evil", 443));
    }
}
