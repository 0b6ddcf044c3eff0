//! The uninstall path: a DaemonSet, applied only while a cluster is being
//! deleted, whose init container restores every node's containerd mirror
//! config. Its pods turn Ready once the restore exited 0, which is what the
//! finalizer waits for.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::dfdaemon::{containerd_config_in_pod, host_mounts, host_writer_security, node_pod_spec};
use super::pod::{apply_settings, default_resources, non_root_container};
use super::{Component, Ctx};
use crate::crd::PodSettings;

const C: Component = Component::Cleanup;

pub fn cleanup_daemonset(ctx: &Ctx) -> DaemonSet {
    let spec = &ctx.dfc.spec;
    let restore = Container {
        name: "restore".into(),
        image: Some(ctx.image()),
        image_pull_policy: ctx.pull_policy(),
        command: Some(vec!["dfdaemon".into()]),
        args: Some(vec![
            "containerd".into(),
            "restore".into(),
            "--config-path".into(),
            spec.containerd.config_path.clone(),
            "--containerd-config".into(),
            containerd_config_in_pod(ctx),
        ]),
        security_context: Some(host_writer_security()),
        resources: Some(default_resources(C)),
        volume_mounts: Some(host_mounts(ctx, false)),
        ..Container::default()
    };
    // Holds the pod Ready after the restore so the operator can count finished nodes.
    let done = Container {
        name: "done".into(),
        image: Some(ctx.image()),
        image_pull_policy: ctx.pull_policy(),
        command: Some(vec!["sleep".into(), "infinity".into()]),
        // Needs nothing of root's.
        security_context: Some(non_root_container()),
        resources: Some(default_resources(C)),
        ..Container::default()
    };
    let mut pod = node_pod_spec(ctx, false);
    pod.init_containers = Some(vec![restore]);
    pod.containers = vec![done];
    pod.termination_grace_period_seconds = Some(1);
    // The data dir is not needed to restore; keep the mount list minimal.
    pod.volumes = pod
        .volumes
        .map(|v| v.into_iter().filter(|v| v.name != "data").collect());
    pod.host_network = None;
    pod.dns_policy = None;

    let mut ds = DaemonSet {
        metadata: ctx.meta(C, ctx.object_name(C)),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(ctx.selector(C)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(ctx.labels(C)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    };
    // The same nodes, labels and annotations as dfdaemon's pods (the
    // restore needs none of its extra env).
    let settings = PodSettings {
        extra_env: Vec::new(),
        ..spec.dfdaemon.pod.clone()
    };
    apply_settings(&mut ds.spec.template, &settings);
    ds
}
