//! dfdaemon on every node: a DaemonSet with host ports, the host's cache
//! directory and containerd's registry config mounted.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, HostPathVolumeSource, PodSpec,
    PodTemplateSpec, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::crd::UpdateStrategyType;

use super::config::DFDAEMON_FILE;
use super::pod::{add_tmp, apply_settings, node_pod, resources_or_default, restricted_container};
use super::scheduler::{non_empty_vec, pull_secrets};
use super::{env_from_field, http_probe, linux_node_selector, Component, Ctx, CONFIG_HASH};

const C: Component = Component::Dfdaemon;
pub const DFDAEMON_CONFIG_MOUNT: &str = "/etc/dragonfly";
/// The node's directory of dfdaemon's local task API socket, mounted at the
/// same path so `dfget` on the node finds the socket at its default.
pub const API_SOCKET_DIR: &str = "/run/dragonfly";
/// The directory holding containerd's config file, mounted read-only here.
const CONTAINERD_CONFIG_MOUNT: &str = "/host/containerd-config";

/// containerd's config file as the pod sees it.
pub fn containerd_config_in_pod(ctx: &Ctx) -> String {
    let file = Path::new(&ctx.dfc.spec.containerd.config_file)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".into());
    format!("{CONTAINERD_CONFIG_MOUNT}/{file}")
}

fn containerd_config_dir(ctx: &Ctx) -> String {
    Path::new(&ctx.dfc.spec.containerd.config_file)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/etc/containerd".into())
}

pub fn daemonset(ctx: &Ctx, config_hash: &str) -> DaemonSet {
    let mut ds = plain_daemonset(ctx, config_hash);
    let template = &mut ds.spec.template;
    if let Some(pod) = template.spec.as_mut() {
        add_tmp(pod);
    }
    apply_settings(template, &ctx.dfc.spec.dfdaemon.pod);
    ds
}

fn update_strategy(d: &crate::crd::DfdaemonSpec) -> DaemonSetUpdateStrategy {
    let u = &d.update_strategy;
    DaemonSetUpdateStrategy {
        type_: Some(u.type_.as_str().into()),
        rolling_update: (u.type_ == UpdateStrategyType::RollingUpdate).then(|| {
            RollingUpdateDaemonSet {
                max_surge: Some(u.max_surge.clone()),
                max_unavailable: Some(u.max_unavailable.clone()),
            }
        }),
    }
}

fn plain_daemonset(ctx: &Ctx, config_hash: &str) -> DaemonSet {
    let spec = &ctx.dfc.spec;
    let d = &spec.dfdaemon;
    let mut args = vec![
        "run".to_string(),
        "--scheduler".into(),
        ctx.scheduler_address(),
        "--data-dir".into(),
        d.data_dir.clone(),
        "--cache-size".into(),
        d.cache_size.clone(),
        "--proxy-listen".into(),
        format!("0.0.0.0:{}", d.proxy_port),
        "--peer-listen".into(),
        format!("0.0.0.0:{}", d.peer_port),
        "--admin-listen".into(),
        format!("0.0.0.0:{}", d.admin_port),
        "--upload-limit".into(),
        d.upload_limit.to_string(),
        "--api-listen".into(),
        format!("unix:{API_SOCKET_DIR}/dfdaemon.sock"),
    ];
    if let Some(rate) = &d.upload_rate {
        args.extend(["--upload-rate".into(), rate.clone()]);
    }
    for (k, v) in &d.labels {
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    args.extend([
        "--containerd".into(),
        "--containerd-config-path".into(),
        spec.containerd.config_path.clone(),
        "--containerd-config".into(),
        containerd_config_in_pod(ctx),
    ]);
    for r in spec.effective_registries() {
        args.extend(["--containerd-registry".into(), r]);
    }
    args.extend([
        "--config".into(),
        format!("{DFDAEMON_CONFIG_MOUNT}/{DFDAEMON_FILE}"),
    ]);

    let container = Container {
        name: "dfdaemon".into(),
        image: Some(ctx.image()),
        image_pull_policy: ctx.pull_policy(),
        command: Some(vec!["dfdaemon".into()]),
        args: Some(args),
        env: Some(vec![
            // Other peers reach this one through the host port on the node's IP.
            env_from_field("DFDAEMON_ADVERTISE_IP", "status.hostIP"),
            env_from_field("DFDAEMON_HOSTNAME", "spec.nodeName"),
            env_from_field("POD_NAME", "metadata.name"),
            env_from_field("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![
            host_port("proxy", d.proxy_port),
            host_port("peer", d.peer_port),
            super::scheduler::port("http-admin", d.admin_port),
        ]),
        readiness_probe: Some(http_probe("/readyz", d.admin_port, 5, 3)),
        liveness_probe: Some(dfdaemon_liveness(d.admin_port)),
        resources: resources_or_default(&d.resources, C),
        security_context: Some(host_writer_security()),
        volume_mounts: Some(host_mounts(ctx, true)),
        ..Container::default()
    };

    let mut volumes = host_volumes(ctx);
    volumes.push(Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: ctx.object_name(C),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    volumes.push(host_path("api-socket", API_SOCKET_DIR, "DirectoryOrCreate"));
    let mut mounts = container.volume_mounts.clone().unwrap_or_default();
    mounts.push(VolumeMount {
        name: "config".into(),
        mount_path: DFDAEMON_CONFIG_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    mounts.push(VolumeMount {
        name: "api-socket".into(),
        mount_path: API_SOCKET_DIR.into(),
        ..VolumeMount::default()
    });
    let container = Container {
        volume_mounts: Some(mounts),
        ..container
    };

    DaemonSet {
        metadata: ctx.meta(C, ctx.object_name(C)),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(ctx.selector(C)),
                ..LabelSelector::default()
            },
            // Host ports cannot be shared, so a new pod can only start
            // after the old one left: validation keeps maxSurge at 0.
            update_strategy: Some(update_strategy(d)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.labels(C)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The host volumes plus the config volume mounted above;
                    // the API server refuses a mount of an undeclared volume.
                    volumes: Some(volumes),
                    ..node_pod_spec(ctx, true)
                }),
            },
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    }
}

/// Fail-open: a hung dfdaemon (connections accepted, nothing answered)
/// holds every new pull on its node until it is restarted, so it is
/// restarted within about 10 s: /healthz answers from a thread of its own
/// and fails once the main runtime stalls for 3 s; a frozen process does
/// not answer at all. Killing it cuts containerd's connections, and
/// containerd moves on to the registry (the next host in hosts.toml).
/// A frozen process never handles the SIGTERM that ends it, so a probe
/// failure gets 2 s of grace, not the pod's 60 s, before the SIGKILL.
fn dfdaemon_liveness(port: i32) -> k8s_openapi::api::core::v1::Probe {
    k8s_openapi::api::core::v1::Probe {
        period_seconds: Some(3),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        termination_grace_period_seconds: Some(2),
        ..http_probe("/healthz", port, 3, 3)
    }
}

/// What every per-node pod (dfdaemon and its cleanup) shares: placement,
/// networking and host volumes.
pub(super) fn node_pod_spec(ctx: &Ctx, needs_api: bool) -> PodSpec {
    let d = &ctx.dfc.spec.dfdaemon;
    PodSpec {
        service_account_name: Some(ctx.object_name(C)),
        automount_service_account_token: Some(needs_api),
        host_network: d.host_network.then_some(true),
        // Host-network pods still need cluster DNS to find the schedulers.
        dns_policy: d
            .host_network
            .then(|| "ClusterFirstWithHostNet".to_string()),
        image_pull_secrets: pull_secrets(ctx),
        node_selector: linux_node_selector(&d.node_selector),
        tolerations: non_empty_vec(d.tolerations.clone()),
        priority_class_name: (!d.priority_class_name.is_empty())
            .then(|| d.priority_class_name.clone()),
        // Time for dfdaemon to restore containerd's mirror config on its way out.
        termination_grace_period_seconds: Some(60),
        volumes: Some(host_volumes(ctx)),
        security_context: Some(node_pod()),
        ..PodSpec::default()
    }
}

pub(super) fn host_volumes(ctx: &Ctx) -> Vec<Volume> {
    let spec = &ctx.dfc.spec;
    vec![
        host_path("data", &spec.dfdaemon.data_dir, "DirectoryOrCreate"),
        host_path(
            "containerd-certs",
            &spec.containerd.config_path,
            "DirectoryOrCreate",
        ),
        // No type check: the file may be missing (a problem dfdaemon reports), and a
        // missing directory must not be created on the node.
        host_path("containerd-config", &containerd_config_dir(ctx), ""),
    ]
}

pub(super) fn host_mounts(ctx: &Ctx, with_data: bool) -> Vec<VolumeMount> {
    let spec = &ctx.dfc.spec;
    let mut m = Vec::new();
    if with_data {
        m.push(VolumeMount {
            name: "data".into(),
            mount_path: spec.dfdaemon.data_dir.clone(),
            ..VolumeMount::default()
        });
    }
    // Same path inside and outside, so paths dfdaemon records in backups are the host's.
    m.push(VolumeMount {
        name: "containerd-certs".into(),
        mount_path: spec.containerd.config_path.clone(),
        ..VolumeMount::default()
    });
    m.push(VolumeMount {
        name: "containerd-config".into(),
        mount_path: CONTAINERD_CONFIG_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    m
}

/// Root with no capabilities at all: uid 0 owns the root-owned files in
/// containerd's config path, so plain owner permissions let it edit them
/// (see docs/security-context.md for why nothing more is needed).
pub(super) fn host_writer_security() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        ..restricted_container()
    }
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Volume::default()
    }
}

fn host_port(name: &str, p: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: p,
        host_port: Some(p),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}
