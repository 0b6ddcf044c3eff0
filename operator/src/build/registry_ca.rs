//! CA bundles of registries behind a private CA (`spec.registryConfigs[].caBundle`):
//! one projected volume holding every bundle (each a single key of a Secret
//! or ConfigMap in the cluster's namespace), mounted read-only into dfdaemon
//! and seed-peer pods, and the path each bundle has there, which the
//! rendered dfdaemon config names as `mirror.registries.<host>.ca_file`.
//!
//! Nothing is written onto the node: containerd's own fallback to the
//! registry (the `server` of hosts.toml) trusts what the node's certs.d
//! already holds for that host.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, KeyToPath, PodSpec, ProjectedVolumeSource, SecretProjection, Volume,
    VolumeMount, VolumeProjection,
};

use super::Ctx;
use crate::crd::{BundleKind, DragonflyClusterSpec};

/// Where the bundles are in dfdaemon and seed-peer pods.
pub const REGISTRY_CA_DIR: &str = "/etc/dragonfly-registry-ca";
const VOLUME: &str = "registry-ca";

/// The file name of `host`'s bundle: `registry.internal_5443.crt` (`:`
/// cannot appear in host names otherwise, so names never collide).
fn file_name(host: &str) -> String {
    format!("{}.crt", host.to_ascii_lowercase().replace(':', "_"))
}

/// `host`'s bundle as the pods see it.
pub fn ca_file(host: &str) -> String {
    format!("{REGISTRY_CA_DIR}/{}", file_name(host))
}

/// Hosts with a CA bundle, each with the path its bundle is mounted at.
pub fn bundles(spec: &DragonflyClusterSpec) -> BTreeMap<String, String> {
    spec.registry_configs
        .iter()
        .filter(|c| c.ca_bundle.as_ref().and_then(|b| b.reference()).is_some())
        .map(|c| (c.host.to_ascii_lowercase(), ca_file(&c.host)))
        .collect()
}

/// The projected volume of every bundle; none when no registry has one.
fn volume(ctx: &Ctx) -> Option<Volume> {
    let sources: Vec<VolumeProjection> = ctx
        .dfc
        .spec
        .registry_configs
        .iter()
        .filter_map(|c| {
            let (kind, r) = c.ca_bundle.as_ref()?.reference()?;
            let items = Some(vec![KeyToPath {
                key: r.key.clone(),
                path: file_name(&c.host),
                ..KeyToPath::default()
            }]);
            // Not optional: a missing bundle is reported by the operator
            // before any pod is changed; a pod never starts without it.
            Some(match kind {
                BundleKind::Secret => VolumeProjection {
                    secret: Some(SecretProjection {
                        name: r.name.clone(),
                        items,
                        optional: Some(false),
                    }),
                    ..VolumeProjection::default()
                },
                BundleKind::ConfigMap => VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: r.name.clone(),
                        items,
                        optional: Some(false),
                    }),
                    ..VolumeProjection::default()
                },
            })
        })
        .collect();
    (!sources.is_empty()).then(|| Volume {
        name: VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            // World-readable: public certificates, whatever user the container runs as.
            default_mode: Some(0o444),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    })
}

/// Adds the bundles' volume to `pod` and mounts it read-only into its first container.
pub fn add_to_pod(ctx: &Ctx, pod: &mut PodSpec) {
    let Some(volume) = volume(ctx) else {
        return;
    };
    pod.volumes.get_or_insert_with(Vec::new).push(volume);
    if let Some(container) = pod.containers.first_mut() {
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: VOLUME.into(),
                mount_path: REGISTRY_CA_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
    }
}
