//! Pod settings every component (scheduler, seed peers, dfdaemon) shares, so
//! a platform team sets them the same way everywhere: affinity, extra pod
//! labels and annotations, extra environment (e.g. `HTTPS_PROXY`), plus the
//! scheduler's and seed peers' PodDisruptionBudget and dfdaemon's
//! DaemonSet update strategy.
//!
//! Resources, node selector, tolerations and priority class predate this
//! module and keep their places ([`super::Placement`] and the dfdaemon spec).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Extra pod settings, flattened into each component's spec.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Node and pod affinity. For the scheduler it replaces the default
    /// preference for one replica per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Added to the pod template's annotations. Keys under
    /// `p2p.dragonfly.dev/` are the operator's and are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Added to the pod template's labels. The operator's own labels
    /// (`app.kubernetes.io/name`, `instance`, `component`, `managed-by`)
    /// select the pods and are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra environment variables of the component's container, e.g.
    /// `HTTPS_PROXY` / `NO_PROXY` for origin fetches. Names the operator
    /// sets itself (`DFDAEMON_*`, `POD_NAME`, `POD_NAMESPACE`) are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub extra_env: Vec<EnvVar>,
}

/// A PodDisruptionBudget (policy/v1) for a replicated component, so a node
/// drain never takes every replica at once.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Rendered only when the component has more than one replica.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that may be evicted at once: a number or a percentage.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrString,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// How dfdaemon pods are replaced when the DaemonSet changes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetUpdateStrategySpec {
    /// `RollingUpdate` (the operator replaces pods) or `OnDelete` (a pod is
    /// replaced only when someone deletes it).
    #[serde(rename = "type", default)]
    pub type_: UpdateStrategyType,
    /// Nodes whose dfdaemon may be down at once during a rolling update:
    /// a number or a percentage.
    #[serde(default = "default_daemon_max_unavailable")]
    pub max_unavailable: IntOrString,
    /// Must stay 0: dfdaemon binds host ports, so a second pod on the same
    /// node cannot start until the old one left.
    #[serde(default = "default_zero")]
    pub max_surge: IntOrString,
}

impl Default for DaemonSetUpdateStrategySpec {
    fn default() -> Self {
        Self {
            type_: UpdateStrategyType::default(),
            max_unavailable: default_daemon_max_unavailable(),
            max_surge: default_zero(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum UpdateStrategyType {
    #[default]
    RollingUpdate,
    OnDelete,
}

impl UpdateStrategyType {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStrategyType::RollingUpdate => "RollingUpdate",
            UpdateStrategyType::OnDelete => "OnDelete",
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}
fn default_daemon_max_unavailable() -> IntOrString {
    IntOrString::String("10%".into())
}
fn default_zero() -> IntOrString {
    IntOrString::Int(0)
}
