//! The `DragonflyCluster` custom resource (group `p2p.dragonfly.dev`, version `v1alpha1`).
//!
//! Defaults live in the schema (so `kubectl get -o yaml` shows them) and in
//! the `Default` impls (so the Rust side agrees with the API server), except
//! the image, which the operator resolves at reconcile time ([`DefaultImage`]).
//! Validation that a schema can express (ranges, enums, patterns) is here;
//! everything else is in `validate.rs` and surfaces as a condition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod pod_settings;
pub use pod_settings::{
    DaemonSetUpdateStrategySpec, PodDisruptionBudgetSpec, PodSettings, UpdateStrategyType,
};

pub const GROUP: &str = "p2p.dragonfly.dev";
pub const VERSION: &str = "v1alpha1";

/// A complete P2P distribution system: schedulers, seed peers and a dfdaemon on every node.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "p2p.dragonfly.dev",
    version = "v1alpha1",
    kind = "DragonflyCluster",
    plural = "dragonflyclusters",
    shortname = "dfc",
    category = "dragonfly",
    namespaced,
    status = "DragonflyClusterStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Schedulers","type":"string","jsonPath":".status.scheduler.summary"}"#,
    printcolumn = r#"{"name":"Seeds","type":"string","jsonPath":".status.seedPeer.summary"}"#,
    printcolumn = r#"{"name":"Daemons","type":"string","jsonPath":".status.dfdaemon.summary"}"#,
    printcolumn = r#"{"name":"Node-Problems","type":"integer","jsonPath":".status.nodesWithProblems"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DragonflyClusterSpec {
    /// Container image shared by the scheduler, seed peers and dfdaemons.
    #[serde(default)]
    pub image: ImageSpec,
    #[serde(default)]
    pub scheduler: SchedulerSpec,
    #[serde(default)]
    pub seed_peer: SeedPeerSpec,
    #[serde(default)]
    pub dfdaemon: DfdaemonSpec,
    /// Registries whose pulls go through the P2P mirror, as `HOST` (https) or a full
    /// `http(s)://HOST[:PORT]` URL. Empty means every registry (containerd `_default`).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub registries: Vec<String>,
    /// Per-registry connection settings for the mirror and seed peers: a CA
    /// bundle for a registry behind a private CA, skipping verification,
    /// plain HTTP. Each host must also be listed in `registries` (or
    /// `registries` is empty, which mirrors every registry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub registry_configs: Vec<RegistryConfigSpec>,
    #[serde(default)]
    pub containerd: ContainerdSpec,
    #[serde(default)]
    pub availability: AvailabilitySpec,
}

/// When the cluster counts as Available (and so Ready): a large fleet
/// always has a node booting or draining, which must not make the whole
/// cluster unhealthy to GitOps tools.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvailabilitySpec {
    /// dfdaemons that may be unready while the cluster stays Available: a
    /// number, or a percentage of the scheduled dfdaemons (rounded down).
    #[serde(default = "default_max_unavailable_daemons")]
    pub max_unavailable_daemons: IntOrString,
}

fn default_max_unavailable_daemons() -> IntOrString {
    IntOrString::String("10%".into())
}

impl Default for AvailabilitySpec {
    fn default() -> Self {
        Self {
            max_unavailable_daemons: default_max_unavailable_daemons(),
        }
    }
}

impl DragonflyClusterSpec {
    /// `registries` as dfdaemon and containerd are given them: a registry
    /// listed as a bare host whose `registryConfigs` entry says `plainHTTP`
    /// becomes `http://HOST`, so containerd's `server` and the mirror's
    /// upstream header agree on the scheme.
    pub fn effective_registries(&self) -> Vec<String> {
        self.registries
            .iter()
            .map(|r| {
                let plain = !r.contains("://")
                    && self.registry_configs.iter().any(|c| {
                        c.plain_http && c.host.eq_ignore_ascii_case(r.trim_end_matches('/'))
                    });
                if plain {
                    format!("http://{r}")
                } else {
                    r.clone()
                }
            })
            .collect()
    }
}

/// How dfdaemons and seed peers connect to one upstream registry.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegistryConfigSpec {
    /// The registry as `HOST[:PORT]`, exactly as in `registries` (without a scheme).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// PEM CA certificates trusted for this registry, in addition to the
    /// system roots. Mounted read-only into dfdaemon and seed-peer pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleSource>,
    /// Accept any certificate from this registry (test registries only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Talk plain HTTP to this registry (same as listing it as
    /// `http://HOST` in `registries`).
    #[serde(default, rename = "plainHTTP")]
    pub plain_http: bool,
}

/// Where a CA bundle is: one key of a Secret or of a ConfigMap in the
/// cluster's namespace (exactly one of the two).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<KeyRef>,
}

/// One key of a Secret or ConfigMap in the cluster's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the PEM bundle.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Which kind of object a [`CaBundleSource`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleKind {
    Secret,
    ConfigMap,
}

impl CaBundleSource {
    /// The one reference set, if exactly one is.
    pub fn reference(&self) -> Option<(BundleKind, &KeyRef)> {
        match (&self.secret_ref, &self.config_map_ref) {
            (Some(r), None) => Some((BundleKind::Secret, r)),
            (None, Some(r)) => Some((BundleKind::ConfigMap, r)),
            _ => None,
        }
    }
}

/// The data-plane image. Repository and tag have no schema default on
/// purpose: a default frozen into the stored object at creation would pin
/// the data plane to the operator version that created it. Unset fields are
/// resolved at every reconcile from the running operator (see
/// [`DefaultImage`]), so upgrading the operator rolls the data plane.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Unset: the operator's data-plane repository (`DRAGONFLY_IMAGE_REPOSITORY`,
    /// else `dragonfly-p2p/dragonfly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub repository: Option<String>,
    /// Unset: the operator's data-plane tag (`DRAGONFLY_IMAGE_TAG`, else the
    /// operator's own version), so it follows operator upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub tag: Option<String>,
    /// `sha256:<64 hex>`: pins the image by content. Takes precedence over
    /// the tag (the reference becomes `repository@digest`). Unset: the
    /// operator's data-plane digest (`DRAGONFLY_IMAGE_DIGEST`) when `tag`
    /// is unset too, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: Option<String>,
    #[serde(default)]
    pub pull_policy: PullPolicy,
    #[serde(default)]
    pub pull_secrets: Vec<LocalObjectReference>,
}

impl ImageSpec {
    /// `repository:tag`, each taken from the spec when set, else from
    /// `defaults`; `repository@digest` when a digest applies: the spec's,
    /// else the operator's default one as long as the spec names no tag (a
    /// default digest pins the default tag, not a tag the user chose).
    pub fn reference(&self, defaults: &DefaultImage) -> String {
        let repository = self.repository.as_deref().unwrap_or(&defaults.repository);
        let digest = self.digest.as_deref().or(if self.tag.is_none() {
            defaults.digest.as_deref()
        } else {
            None
        });
        match digest {
            Some(d) => format!("{repository}@{d}"),
            None => format!(
                "{repository}:{}",
                self.tag.as_deref().unwrap_or(&defaults.tag)
            ),
        }
    }
}

/// The data-plane image the running operator stands for: what an unset
/// `spec.image.repository` / `spec.image.tag` means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultImage {
    pub repository: String,
    pub tag: String,
    /// `sha256:...`; when set, an unset `spec.image.tag` and `digest` mean this digest.
    pub digest: Option<String>,
}

pub const IMAGE_REPOSITORY_ENV: &str = "DRAGONFLY_IMAGE_REPOSITORY";
pub const IMAGE_TAG_ENV: &str = "DRAGONFLY_IMAGE_TAG";
pub const IMAGE_DIGEST_ENV: &str = "DRAGONFLY_IMAGE_DIGEST";

impl DefaultImage {
    /// Built into this binary: its own version.
    pub fn builtin() -> Self {
        Self {
            repository: default_repository(),
            tag: default_tag(),
            digest: None,
        }
    }

    /// From the operator Deployment's env (set by the chart and manifests),
    /// falling back to [`DefaultImage::builtin`] for unset or blank values.
    pub fn from_env() -> Self {
        Self::from_values(
            std::env::var(IMAGE_REPOSITORY_ENV).ok(),
            std::env::var(IMAGE_TAG_ENV).ok(),
        )
        .with_digest(std::env::var(IMAGE_DIGEST_ENV).ok())
    }

    /// A default digest (blank: none). A value that is not `sha256:<64 hex>`
    /// is ignored with a warning rather than rendered into every pod.
    pub fn with_digest(mut self, digest: Option<String>) -> Self {
        let digest = digest
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        self.digest = match digest {
            Some(d) if is_image_digest(&d) => Some(d),
            Some(d) => {
                tracing::warn!(digest = %d, "{IMAGE_DIGEST_ENV} is not sha256:<64 hex>; ignored");
                None
            }
            None => None,
        };
        self
    }

    pub fn from_values(repository: Option<String>, tag: Option<String>) -> Self {
        let given = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let builtin = Self::builtin();
        Self {
            repository: given(repository).unwrap_or(builtin.repository),
            tag: given(tag).unwrap_or(builtin.tag),
            digest: None,
        }
    }
}

/// `sha256:` and 64 lowercase hex digits, as the schema's pattern says.
pub fn is_image_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Where a component's pods may run and what they may use.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, flatten)]
    pub pod: PodSettings,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerSpec {
    #[serde(default = "default_scheduler_replicas")]
    #[schemars(range(min = 1, max = 50))]
    pub replicas: i32,
    /// gRPC port for peers.
    #[serde(default = "default_scheduler_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,
    /// A PodDisruptionBudget while `replicas` > 1.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    #[serde(default, flatten)]
    pub placement: Placement,
}

impl Default for SchedulerSpec {
    fn default() -> Self {
        Self {
            replicas: default_scheduler_replicas(),
            port: default_scheduler_port(),
            admin_port: default_admin_port(),
            pod_disruption_budget: PodDisruptionBudgetSpec::default(),
            placement: Placement::default(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeedPeerSpec {
    /// Seed peers download from the origin first; without them a regular node does.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_seed_replicas")]
    #[schemars(range(min = 1, max = 50))]
    pub replicas: i32,
    #[serde(default)]
    pub storage: StorageSpec,
    /// Content cache quota, e.g. `40GiB`; keep it below the volume size.
    #[serde(default = "default_seed_cache_size")]
    pub cache_size: String,
    /// Upload bandwidth cap per seed peer, e.g. `1GiB` (per second). Empty: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_rate: Option<String>,
    /// A PodDisruptionBudget while `replicas` > 1.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    #[serde(default, flatten)]
    pub placement: Placement,
}

impl Default for SeedPeerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            replicas: default_seed_replicas(),
            storage: StorageSpec::default(),
            cache_size: default_seed_cache_size(),
            upload_rate: None,
            pod_disruption_budget: PodDisruptionBudgetSpec::default(),
            placement: Placement::default(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// PVC size per seed peer (a Kubernetes quantity such as `50Gi`).
    #[serde(default = "default_seed_volume")]
    pub size: String,
    /// Storage class of the PVCs; unset means the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_seed_volume(),
            storage_class_name: None,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DfdaemonSpec {
    /// Use the node's network namespace, for CNIs without hostPort support.
    #[serde(default)]
    pub host_network: bool,
    /// Registry mirror and HTTP proxy (hostPort).
    #[serde(default = "default_proxy_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub proxy_port: i32,
    /// Piece server for other peers (hostPort).
    #[serde(default = "default_peer_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub peer_port: i32,
    /// Health, readiness, metrics and `/server/ping`.
    #[serde(default = "default_dfdaemon_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,
    /// Host directory for cached content.
    #[serde(default = "default_data_dir")]
    #[schemars(regex(pattern = r"^/"))]
    pub data_dir: String,
    /// Content cache quota on each node, e.g. `20GiB`.
    #[serde(default = "default_cache_size")]
    pub cache_size: String,
    /// GC starts when the cache passes this percentage of `cacheSize`, or
    /// the filesystem holding it this percentage used (other writers
    /// included). Keep it below 100 minus kubelet's eviction threshold
    /// (`nodefs.available<10%`) when the cache shares kubelet's disk. Seed
    /// peers' volumes use the same watermarks.
    #[serde(default = "default_gc_high_watermark")]
    #[schemars(range(min = 1, max = 99))]
    pub gc_high_watermark: i32,
    /// GC stops once both are at or below this percentage; below `gcHighWatermark`.
    #[serde(default = "default_gc_low_watermark")]
    #[schemars(range(min = 1, max = 99))]
    pub gc_low_watermark: i32,
    /// Cached tasks not accessed for this long are evicted, e.g. `24h`; `0s` keeps them.
    #[serde(default = "default_task_ttl")]
    pub task_ttl: String,
    /// kubelet's hard eviction threshold on the nodes, as a percentage of
    /// the filesystem available (`nodefs.available`, kubelet's default 10):
    /// a node whose cache shares kubelet's disk and whose high watermark
    /// would leave less free reports a problem.
    #[serde(default = "default_kubelet_eviction_threshold")]
    #[schemars(range(min = 1, max = 99))]
    pub kubelet_eviction_threshold: i32,
    /// Concurrent uploads to other peers.
    #[serde(default = "default_upload_limit")]
    #[schemars(range(min = 1, max = 10000))]
    pub upload_limit: i32,
    /// Upload bandwidth cap per node, e.g. `100MiB` (per second). Empty: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_rate: Option<String>,
    /// Extra location labels (`zone=...`) passed to every dfdaemon.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Tolerations for the DaemonSet; defaults to tolerating every taint so every node gets one.
    #[serde(default = "default_tolerate_all")]
    pub tolerations: Vec<Toleration>,
    #[serde(default = "default_node_critical")]
    pub priority_class_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// How dfdaemon pods are replaced on a change; by default 10 % of the
    /// nodes at a time.
    #[serde(default)]
    pub update_strategy: DaemonSetUpdateStrategySpec,
    #[serde(default, flatten)]
    pub pod: PodSettings,
}

impl Default for DfdaemonSpec {
    fn default() -> Self {
        Self {
            host_network: false,
            proxy_port: default_proxy_port(),
            peer_port: default_peer_port(),
            admin_port: default_dfdaemon_admin_port(),
            data_dir: default_data_dir(),
            cache_size: default_cache_size(),
            gc_high_watermark: default_gc_high_watermark(),
            gc_low_watermark: default_gc_low_watermark(),
            task_ttl: default_task_ttl(),
            kubelet_eviction_threshold: default_kubelet_eviction_threshold(),
            upload_limit: default_upload_limit(),
            upload_rate: None,
            labels: BTreeMap::new(),
            tolerations: default_tolerate_all(),
            priority_class_name: default_node_critical(),
            resources: None,
            node_selector: BTreeMap::new(),
            update_strategy: DaemonSetUpdateStrategySpec::default(),
            pod: PodSettings::default(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerdSpec {
    /// containerd's registry `config_path` on the host, where `hosts.toml` files go.
    #[serde(default = "default_certs_d")]
    #[schemars(regex(pattern = r"^/"))]
    pub config_path: String,
    /// containerd's main config file on the host (read to detect settings that bypass mirrors).
    #[serde(default = "default_containerd_config")]
    #[schemars(regex(pattern = r"^/"))]
    pub config_file: String,
    /// Restore every node's mirror configuration when the cluster is deleted.
    #[serde(default = "default_true")]
    pub restore_on_delete: bool,
    /// How long deletion waits for every node to restore before giving up.
    #[serde(default = "default_cleanup_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub cleanup_timeout_seconds: i32,
}

impl Default for ContainerdSpec {
    fn default() -> Self {
        Self {
            config_path: default_certs_d(),
            config_file: default_containerd_config(),
            restore_on_delete: true,
            cleanup_timeout_seconds: default_cleanup_timeout(),
        }
    }
}

/// What the operator last saw; derived only from objects it applied and their pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DragonflyClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<ComponentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_peer: Option<ComponentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dfdaemon: Option<ComponentStatus>,
    /// Nodes whose dfdaemon reported the mirror configuration in place.
    #[serde(default)]
    pub nodes_configured: i32,
    /// Configured nodes whose containerd has really pulled through the
    /// mirror since their dfdaemon started.
    #[serde(default)]
    pub nodes_pulling_through_mirror: i32,
    #[serde(default)]
    pub nodes_with_problems: i32,
    /// Integration problems reported by dfdaemons, one entry per node (capped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_problems: Vec<NodeProblem>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub desired: i32,
    pub ready: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
}

impl ComponentStatus {
    pub fn new(desired: i32, ready: i32) -> Self {
        Self {
            desired,
            ready,
            summary: format!("{ready}/{desired}"),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeProblem {
    pub node: String,
    pub problems: Vec<ProblemReport>,
}

/// One problem as a dfdaemon reports it (see `nodes.rs` for the contract).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProblemReport {
    /// Stable machine-readable code, e.g. `NoConfigPath`.
    pub code: String,
    #[serde(default)]
    pub message: String,
}

fn default_true() -> bool {
    true
}
pub fn default_repository() -> String {
    "dragonfly-p2p/dragonfly".into()
}
pub fn default_tag() -> String {
    env!("CARGO_PKG_VERSION").into()
}
fn default_scheduler_replicas() -> i32 {
    3
}
fn default_scheduler_port() -> i32 {
    8002
}
fn default_admin_port() -> i32 {
    8000
}
fn default_seed_replicas() -> i32 {
    2
}
fn default_seed_cache_size() -> String {
    "40GiB".into()
}
fn default_seed_volume() -> String {
    "50Gi".into()
}
fn default_proxy_port() -> i32 {
    65001
}
fn default_peer_port() -> i32 {
    65002
}
fn default_dfdaemon_admin_port() -> i32 {
    40901
}
fn default_data_dir() -> String {
    "/var/lib/dragonfly".into()
}
fn default_cache_size() -> String {
    "20GiB".into()
}
fn default_gc_high_watermark() -> i32 {
    85
}
fn default_gc_low_watermark() -> i32 {
    70
}
fn default_kubelet_eviction_threshold() -> i32 {
    10
}

fn default_task_ttl() -> String {
    "24h".into()
}
fn default_upload_limit() -> i32 {
    50
}
fn default_tolerate_all() -> Vec<Toleration> {
    vec![Toleration {
        operator: Some("Exists".into()),
        ..Toleration::default()
    }]
}
fn default_node_critical() -> String {
    "system-node-critical".into()
}
fn default_ca_key() -> String {
    "ca.crt".into()
}
fn default_certs_d() -> String {
    "/etc/containerd/certs.d".into()
}
fn default_containerd_config() -> String {
    "/etc/containerd/config.toml".into()
}
fn default_cleanup_timeout() -> i32 {
    300
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_gets_documented_defaults() {
        let spec: DragonflyClusterSpec = serde_json::from_str("{}").expect("empty spec parses");
        assert_eq!(spec, DragonflyClusterSpec::default());
        assert_eq!(spec.scheduler.replicas, 3);
        assert_eq!(spec.dfdaemon.proxy_port, 65001);
        assert_eq!(spec.dfdaemon.priority_class_name, "system-node-critical");
        assert!(spec.seed_peer.enabled);
        assert_eq!(
            spec.image.tag, None,
            "the tag is resolved at reconcile time"
        );
    }

    #[test]
    fn generated_schema_has_no_image_default() {
        // A schema default would be stored in the object at create time and
        // pin the data plane to that operator version forever.
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(DragonflyCluster::crd()).expect("crd json");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        let image = &spec["image"];
        assert!(image.is_object(), "{spec}");
        assert!(
            image
                .get("default")
                .is_none_or(|d| d.get("tag").is_none() && d.get("repository").is_none()),
            "{image}"
        );
        for f in ["repository", "tag"] {
            assert_eq!(image["properties"][f].get("default"), None, "{f}: {image}");
        }
        assert_eq!(
            image["properties"]["digest"]["pattern"],
            "^sha256:[a-f0-9]{64}$"
        );
        // The pod settings are flattened into each component, as the older fields are.
        for c in ["scheduler", "seedPeer", "dfdaemon"] {
            let props = &spec[c]["properties"];
            for f in [
                "resources",
                "nodeSelector",
                "tolerations",
                "priorityClassName",
                "affinity",
                "podLabels",
                "podAnnotations",
                "extraEnv",
            ] {
                assert!(props[f].is_object(), "{c}.{f}");
            }
        }
        assert!(spec["scheduler"]["properties"]["podDisruptionBudget"].is_object());
        assert!(spec["dfdaemon"]["properties"]["updateStrategy"].is_object());
    }

    #[test]
    fn unset_image_fields_resolve_from_the_operator() {
        let defaults =
            DefaultImage::from_values(Some("mirror.example.com/df".into()), Some("1.2.3".into()));
        let mut image = ImageSpec::default();
        assert_eq!(image.reference(&defaults), "mirror.example.com/df:1.2.3");
        image.tag = Some("pinned".into());
        assert_eq!(image.reference(&defaults), "mirror.example.com/df:pinned");
        let builtin = DefaultImage::from_values(None, Some("  ".into()));
        assert_eq!(builtin, DefaultImage::builtin());
        assert_eq!(builtin.tag, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn flattened_placement_reads_top_level_fields() {
        let spec: DragonflyClusterSpec =
            serde_json::from_str(r#"{"scheduler":{"nodeSelector":{"a":"b"}}}"#).expect("parses");
        assert_eq!(
            spec.scheduler
                .placement
                .node_selector
                .get("a")
                .map(String::as_str),
            Some("b")
        );
    }
}
