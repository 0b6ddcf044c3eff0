//! Scheduler: a Deployment, a ClusterIP Service and a headless Service that
//! lets every dfdaemon resolve every replica.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, Container, ContainerPort, PodAffinityTerm, PodAntiAffinity,
    PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

use super::config::SCHEDULER_FILE;
use super::pod::{
    add_tmp, apply_settings, non_root_pod, resources_or_default, restricted_container,
};
use super::{http_probe, linux_node_selector, Component, Ctx, CONFIG_HASH};

const C: Component = Component::Scheduler;
const CONFIG_DIR: &str = "/etc/dragonfly";

pub fn deployment(ctx: &Ctx, config_hash: &str) -> Deployment {
    let mut d = plain_deployment(ctx, config_hash);
    let template = &mut d.spec.template;
    if let Some(pod) = template.spec.as_mut() {
        add_tmp(pod);
    }
    apply_settings(template, &ctx.dfc.spec.scheduler.placement.pod);
    d
}

fn plain_deployment(ctx: &Ctx, config_hash: &str) -> Deployment {
    let s = &ctx.dfc.spec.scheduler;
    let container = Container {
        name: "scheduler".into(),
        image: Some(ctx.image()),
        image_pull_policy: ctx.pull_policy(),
        command: Some(vec!["dragonfly-scheduler".into()]),
        args: Some(vec![
            "--listen".into(),
            format!("0.0.0.0:{}", s.port),
            "--admin-listen".into(),
            format!("0.0.0.0:{}", s.admin_port),
            "--config".into(),
            format!("{CONFIG_DIR}/{SCHEDULER_FILE}"),
        ]),
        ports: Some(vec![port("grpc", s.port), port("http-admin", s.admin_port)]),
        readiness_probe: Some(http_probe("/readyz", s.admin_port, 5, 3)),
        liveness_probe: Some(http_probe("/healthz", s.admin_port, 10, 6)),
        resources: resources_or_default(&s.placement.resources, C),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Deployment {
        metadata: ctx.meta(C, ctx.object_name(C)),
        spec: DeploymentSpec {
            replicas: Some(s.replicas),
            selector: LabelSelector {
                match_labels: Some(ctx.selector(C)),
                ..LabelSelector::default()
            },
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
                    service_account_name: Some(ctx.object_name(C)),
                    automount_service_account_token: Some(false),
                    containers: vec![container],
                    image_pull_secrets: pull_secrets(ctx),
                    node_selector: linux_node_selector(&s.placement.node_selector),
                    tolerations: non_empty_vec(s.placement.tolerations.clone()),
                    priority_class_name: s.placement.priority_class_name.clone(),
                    affinity: Some(spread_over_nodes(ctx)),
                    security_context: Some(non_root_pod()),
                    volumes: Some(vec![Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: ctx.object_name(C),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

pub fn service(ctx: &Ctx) -> Service {
    let s = &ctx.dfc.spec.scheduler;
    Service {
        metadata: ctx.meta(C, ctx.object_name(C)),
        spec: Some(ServiceSpec {
            selector: Some(ctx.selector(C)),
            ports: Some(vec![
                svc_port("grpc", s.port),
                svc_port("http-admin", s.admin_port),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn headless_service(ctx: &Ctx) -> Service {
    let s = &ctx.dfc.spec.scheduler;
    Service {
        metadata: ctx.meta(C, ctx.headless_name(C)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(ctx.selector(C)),
            ports: Some(vec![svc_port("grpc", s.port)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub(super) fn port(name: &str, p: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: p,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

pub(super) fn svc_port(name: &str, p: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: p,
        target_port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub(super) fn pull_secrets(
    ctx: &Ctx,
) -> Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>> {
    non_empty_vec(ctx.dfc.spec.image.pull_secrets.clone())
}

pub(super) fn non_empty_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Prefer one replica per node so a node loss never takes every scheduler.
fn spread_over_nodes(ctx: &Ctx) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(ctx.selector(C)),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}
