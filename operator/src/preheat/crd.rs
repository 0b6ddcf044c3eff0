//! The `Preheat` custom resource (group `p2p.dragonfly.dev`, version `v1alpha1`,
//! short name `ph`): images and files warmed into a `DragonflyCluster` before
//! anyone pulls them.
//!
//! The spec says what and where; the status is the whole record of a run:
//! what each image resolved to (so a restarted operator never resolves a tag
//! twice for one generation), progress, and why it failed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Warm images (by tag or digest) and files into a DragonflyCluster, so the
/// first real pull on any node already comes from peers.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "p2p.dragonfly.dev",
    version = "v1alpha1",
    kind = "Preheat",
    plural = "preheats",
    shortname = "ph",
    category = "dragonfly",
    namespaced,
    status = "PreheatStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Blobs","type":"string","jsonPath":".status.progress.blobs"}"#,
    printcolumn = r#"{"name":"Bytes","type":"string","jsonPath":".status.progress.bytes"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","priority":1,"jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PreheatSpec {
    /// Name of the DragonflyCluster, in this namespace, whose peers download.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
    /// Image references by tag or digest, e.g. `registry.example.com/app:v1`,
    /// `docker.io/library/busybox@sha256:...` (`busybox` means `docker.io/library/busybox:latest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub images: Vec<String>,
    /// Plain files, downloaded whole by URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub urls: Vec<UrlSource>,
    /// `os/arch[/variant]` (e.g. `linux/amd64`, `linux/arm64`). Empty: the
    /// platforms of the nodes the cluster's dfdaemons run on. Only image
    /// indexes are filtered; a single-platform image is taken as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub platforms: Vec<String>,
    /// Which peers download.
    #[serde(default)]
    pub scope: Scope,
    /// With `scope: NodeSelector`: the labels of the nodes whose dfdaemons download.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// `kubernetes.io/dockerconfigjson` Secrets in this namespace with
    /// credentials for private registries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub pull_secrets: Vec<LocalObjectReference>,
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback hosts and
    /// the cluster's `http://` registries are plain HTTP already.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub insecure_registries: Vec<String>,
    /// Failed attempts in a row (registry or peer unreachable, download
    /// failed) before the Preheat gives up as Failed.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: i32,
    /// Delete the Preheat this many seconds after it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

/// A file to preheat.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    /// `http(s)://...`
    #[schemars(length(min = 1, max = 4096))]
    pub url: String,
    /// Expected `sha256:<hex>` of the content: checked, and then the same
    /// file behind any URL is one task in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub digest: Option<String>,
}

/// Which peers download. Every download goes through the scheduler, so the
/// origin serves each blob once whatever the scope.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Scope {
    /// One seed peer (the same one for the whole run while it stays ready).
    #[default]
    OneSeedPeer,
    AllSeedPeers,
    /// The dfdaemon on every node.
    AllNodes,
    /// The dfdaemons on the nodes matching `nodeSelector`.
    NodeSelector,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PreheatStatus {
    /// The generation this status describes; a finished Preheat runs again
    /// only when its spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: Phase,
    /// What is happening, or exactly what failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default)]
    pub progress: Progress,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<UrlStatus>,
    /// A bounded sample of the blobs: at most 20, failed ones first, then
    /// those retrying, in progress, pending, and finished. Counts and totals
    /// for every blob are in `progress` and per image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<BlobStatus>,
    /// How many blobs `blobs` leaves out.
    #[serde(default)]
    pub blobs_omitted: i32,
    /// The peers (pod names) downloading; for `OneSeedPeer` the chosen one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Failed attempts in a row; reset whenever progress is made.
    #[serde(default)]
    pub retries: i32,
    /// `Resolved`, `Complete`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Downloads are counted per peer: 3 blobs on 2 peers are 6.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub blobs_done: i32,
    pub blobs_total: i32,
    pub bytes_done: i64,
    pub bytes_total: i64,
    /// `done/total`, for `kubectl get`.
    #[serde(default)]
    pub blobs: String,
    /// e.g. `12.0 MiB/40.0 MiB`, for `kubectl get`.
    #[serde(default)]
    pub bytes: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ItemState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// As written in the spec.
    pub reference: String,
    #[serde(default)]
    pub state: ItemState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What the reference resolved to: the index, or the single manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// One per selected platform (one entry without a platform for a
    /// single-platform image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<ManifestStatus>,
    #[serde(default)]
    pub blobs_done: i32,
    #[serde(default)]
    pub blobs_total: i32,
    #[serde(default)]
    pub bytes_done: i64,
    #[serde(default)]
    pub bytes_total: i64,
}

/// One resolved platform manifest: counts only. The blob list itself stays
/// in the operator's memory (and is read again by this digest after a
/// restart), because hundreds of blobs per manifest times 64 images times
/// 16 platforms would outgrow the 1.5 MiB an object may have.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManifestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub digest: String,
    /// The config blob and the layers.
    #[serde(default)]
    pub blob_count: i32,
    /// Their sizes added up.
    #[serde(default)]
    pub bytes: i64,
}

/// One blob in the status' short list (see `PreheatStatus::blobs`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlobStatus {
    pub digest: String,
    pub size: i64,
    pub state: ItemState,
    /// Peers holding it whole, out of `status.targets`.
    #[serde(default)]
    pub peers_done: i32,
    /// Bytes held, added up over the peers.
    #[serde(default)]
    pub bytes_done: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct UrlStatus {
    pub url: String,
    #[serde(default)]
    pub state: ItemState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default)]
    pub bytes_done: i64,
    /// Known once a peer learnt the content length.
    #[serde(default)]
    pub bytes_total: i64,
}

fn default_backoff_limit() -> i32 {
    6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec: PreheatSpec =
            serde_json::from_str(r#"{"cluster":"dragonfly","images":["busybox"]}"#)
                .expect("parses");
        assert_eq!(spec.scope, Scope::OneSeedPeer);
        assert_eq!(spec.backoff_limit, 6);
        assert!(spec.platforms.is_empty());
        assert_eq!(spec.ttl_seconds_after_finished, None);
    }

    #[test]
    fn empty_status_is_pending() {
        let st: PreheatStatus = serde_json::from_str("{}").expect("parses");
        assert_eq!(st.phase, Phase::Pending);
        assert!(!st.phase.is_finished());
    }
}
