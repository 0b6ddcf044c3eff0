//! Seed peers: dfdaemon with `--seed` in a StatefulSet, one PVC each, behind a
//! headless Service (stable names; the scheduler prefers them for origin fetches).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Service, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::config::DFDAEMON_FILE;
use super::pod::{
    add_tmp, apply_settings, non_root_pod, resources_or_default, restricted_container,
};
use super::scheduler::{non_empty_vec, port, pull_secrets, svc_port};
use super::{env_from_field, http_probe, linux_node_selector, Component, Ctx, CONFIG_HASH};

const C: Component = Component::SeedPeer;
pub const DATA_MOUNT: &str = "/var/lib/dragonfly";
const CONFIG_DIR: &str = "/etc/dragonfly";

/// Where the seed peers' cache lives (`crate::seed_storage` decides).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeedStorage {
    /// A PersistentVolumeClaim per seed peer (`spec.seedPeer.storage`).
    #[default]
    Claims,
    /// An emptyDir, where claims could never bind.
    Ephemeral,
}

pub fn statefulset(ctx: &Ctx, config_hash: &str) -> StatefulSet {
    let mut set = plain_statefulset(ctx, config_hash);
    let template = &mut set.spec.template;
    if let Some(pod) = template.spec.as_mut() {
        add_tmp(pod);
    }
    apply_settings(template, &ctx.dfc.spec.seed_peer.placement.pod);
    set
}

fn plain_statefulset(ctx: &Ctx, config_hash: &str) -> StatefulSet {
    let spec = &ctx.dfc.spec;
    let s = &spec.seed_peer;
    let d = &spec.dfdaemon;
    let mut args = vec![
        "run".to_string(),
        "--seed".into(),
        "--scheduler".into(),
        ctx.scheduler_address(),
        "--data-dir".into(),
        DATA_MOUNT.into(),
        "--cache-size".into(),
        s.cache_size.clone(),
        "--proxy-listen".into(),
        format!("0.0.0.0:{}", d.proxy_port),
        "--peer-listen".into(),
        format!("0.0.0.0:{}", d.peer_port),
        "--admin-listen".into(),
        format!("0.0.0.0:{}", d.admin_port),
        "--upload-limit".into(),
        d.upload_limit.to_string(),
        // On the pod's own volume: only tools inside the pod use it.
        "--api-listen".into(),
        format!("unix:{DATA_MOUNT}/dfdaemon.sock"),
    ];
    if let Some(rate) = &s.upload_rate {
        args.extend(["--upload-rate".into(), rate.clone()]);
    }
    args.extend(["--config".into(), format!("{CONFIG_DIR}/{DFDAEMON_FILE}")]);

    let container = Container {
        name: "seed-peer".into(),
        image: Some(ctx.image()),
        image_pull_policy: ctx.pull_policy(),
        command: Some(vec!["dfdaemon".into()]),
        args: Some(args),
        env: Some(vec![
            // Peers reach seed peers on their pod IPs; the pod name is a stable host id.
            env_from_field("DFDAEMON_ADVERTISE_IP", "status.podIP"),
            env_from_field("DFDAEMON_HOSTNAME", "metadata.name"),
        ]),
        ports: Some(vec![
            port("proxy", d.proxy_port),
            port("peer", d.peer_port),
            port("http-admin", d.admin_port),
        ]),
        readiness_probe: Some(http_probe("/readyz", d.admin_port, 5, 3)),
        liveness_probe: Some(http_probe("/healthz", d.admin_port, 10, 6)),
        resources: resources_or_default(&s.placement.resources, C),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_MOUNT.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };

    let config_volume = Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: ctx.object_name(C),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let (claims, volumes) = match ctx.seed_storage {
        SeedStorage::Claims => (Some(vec![data_claim(ctx)]), vec![config_volume]),
        // Limited to the volume size the spec asks for, not to cacheSize:
        // the quota counts cached pieces only, kubelet counts every file in
        // the volume and evicts the pod past the limit; storage.size is the
        // headroom the spec already gives the cache on a claim.
        SeedStorage::Ephemeral => (
            None,
            vec![
                Volume {
                    name: "data".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity(s.storage.size.clone())),
                        ..EmptyDirVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                config_volume,
            ],
        ),
    };

    StatefulSet {
        metadata: ctx.meta(C, ctx.object_name(C)),
        spec: StatefulSetSpec {
            replicas: Some(s.replicas),
            service_name: Some(ctx.headless_name(C)),
            // Seed peers are interchangeable; no reason to start them one by one.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(ctx.selector(C)),
                ..LabelSelector::default()
            },
            // The volumes hold only a cache, so they go with their pods.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Delete".into()),
                },
            ),
            volume_claim_templates: claims,
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
                    termination_grace_period_seconds: Some(30),
                    // A fixed non-root user; fsGroup makes the data volume its.
                    security_context: Some(non_root_pod()),
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// The claim template: one volume per seed peer.
fn data_claim(ctx: &Ctx) -> PersistentVolumeClaim {
    let s = &ctx.dfc.spec.seed_peer;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(ctx.selector(C)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(s.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

pub fn headless_service(ctx: &Ctx) -> Service {
    let d = &ctx.dfc.spec.dfdaemon;
    Service {
        metadata: ctx.meta(C, ctx.headless_name(C)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(ctx.selector(C)),
            ports: Some(vec![
                svc_port("proxy", d.proxy_port),
                svc_port("peer", d.peer_port),
                svc_port("http-admin", d.admin_port),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
