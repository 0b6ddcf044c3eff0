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
    /// `image-proxy: http://127.0.0.1:65001`): absolute-URI requests and
    /// CONNECT tunnels.
    pub forward_proxy: bool,
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
            forward_proxy: true,
            proxy_rules: vec!["blobs/sha256.*".into()],
        }
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
