//! What every component's pod shares: the user's [`PodSettings`] merged in
//! (the operator's labels, annotations and env winning), default resources,
//! security contexts and PodDisruptionBudgets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{Component, Ctx};
use crate::crd::PodSettings;

/// The user and group the scheduler, seed peers and the operator run as
/// (the "nonroot" id of distroless images; owns nothing on a node).
pub const NON_ROOT_ID: i64 = 65532;
/// A writable scratch directory on otherwise read-only root filesystems.
pub const TMP_DIR: &str = "/tmp";

/// Requests and limits when the spec sets none, from the measurements in
/// docs/resources.md: requests about a busy steady state, a memory limit
/// several times the measured peak (a cache daemon killed in the middle of
/// a pull burst fails every pull on its node), and no CPU limit (CFS
/// throttling adds latency to every piece a peer serves).
pub fn default_resources(c: Component) -> ResourceRequirements {
    let (cpu, memory, limit) = match c {
        // Measured peak RSS 21 MiB, under 0.15 core.
        Component::Scheduler => ("50m", "32Mi", "256Mi"),
        // Peak RSS 38 MiB, up to 0.2 core on average, 0.56 at peak; the
        // limit also covers the page cache its cache writes are charged.
        Component::SeedPeer => ("200m", "64Mi", "1Gi"),
        // Peak RSS 63 MiB, 0.03-0.2 core on average, 0.54 at peak.
        Component::Dfdaemon => ("100m", "64Mi", "1Gi"),
        // Edits a few files and exits; then `sleep`.
        Component::Cleanup => ("10m", "16Mi", "128Mi"),
    };
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(limit.into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The spec's resources, else [`default_resources`]. `resources: {}` in the
/// spec is kept as given (a BestEffort pod, if that is what someone wants).
pub fn resources_or_default(
    given: &Option<ResourceRequirements>,
    c: Component,
) -> Option<ResourceRequirements> {
    Some(given.clone().unwrap_or_else(|| default_resources(c)))
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// Every container: no privilege escalation, read-only root filesystem,
/// no capabilities, the runtime's default seccomp profile.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// A container that must not run as root whatever its pod says.
pub fn non_root_container() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        ..restricted_container()
    }
}

/// The scheduler's and seed peers' pods: a fixed non-root user; `fsGroup`
/// makes the seed peers' volumes writable by it.
pub fn non_root_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        fs_group: Some(NON_ROOT_ID),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// dfdaemon's pod (and its cleanup's): uid 0 so it may write the
/// root-owned files under containerd's config path, but every capability
/// dropped (see docs/security-context.md).
pub fn node_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// An emptyDir at /tmp, for a read-only root filesystem.
pub fn add_tmp(pod: &mut PodSpec) {
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    for c in pod.containers.iter_mut() {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "tmp".into(),
                mount_path: TMP_DIR.into(),
                ..VolumeMount::default()
            });
    }
}

/// Merges the user's pod settings into a template. The operator's labels
/// and annotations win over the user's (validation refuses such keys, so
/// this only matters for a spec that skipped it), and so do its env vars.
/// A user affinity replaces the operator's.
pub fn apply_settings(template: &mut PodTemplateSpec, s: &PodSettings) {
    let meta = template.metadata.get_or_insert_with(Default::default);
    merge_under(&mut meta.labels, &s.pod_labels);
    merge_under(&mut meta.annotations, &s.pod_annotations);
    if let Some(pod) = template.spec.as_mut() {
        if let Some(a) = &s.affinity {
            pod.affinity = Some(a.clone());
        }
        if let Some(c) = pod.containers.first_mut() {
            add_env(c, s);
        }
    }
}

fn merge_under(ours: &mut Option<BTreeMap<String, String>>, theirs: &BTreeMap<String, String>) {
    if theirs.is_empty() {
        return;
    }
    let ours = ours.get_or_insert_with(BTreeMap::new);
    for (k, v) in theirs {
        ours.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

fn add_env(c: &mut Container, s: &PodSettings) {
    if s.extra_env.is_empty() {
        return;
    }
    let env = c.env.get_or_insert_with(Vec::new);
    for e in &s.extra_env {
        if !env.iter().any(|x| x.name == e.name) {
            env.push(e.clone());
        }
    }
}

/// A PodDisruptionBudget for a component with more than one replica.
pub fn disruption_budget(
    ctx: &Ctx,
    c: Component,
    replicas: i32,
    spec: &crate::crd::PodDisruptionBudgetSpec,
) -> Option<PodDisruptionBudget> {
    (spec.enabled && replicas > 1).then(|| PodDisruptionBudget {
        metadata: ctx.meta(c, ctx.object_name(c)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(spec.max_unavailable.clone()),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(c)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}
