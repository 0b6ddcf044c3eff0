//! Cluster identity for the pods the operator builds: every member pod gets
//! the cluster CA bundle (to trust the issuer), a projected service-account
//! token for the `dragonfly` audience (bound to the pod, so the issuer
//! learns which pod and node is asking), and a memory-backed directory for
//! the certificate it obtains and renews.

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, EmptyDirVolumeSource, PodSpec, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};

use super::{Component, Ctx};

/// Where a member writes its certificate (`--tls-dir`).
pub const TLS_DIR: &str = "/var/run/dragonfly/tls";
const CA_DIR: &str = "/etc/dragonfly/ca";
const TOKEN_DIR: &str = "/var/run/secrets/dragonfly";
/// Short-lived: the kubelet refreshes it; the issuer only needs it fresh.
const TOKEN_SECONDS: i64 = 3600;

/// What the operator tells member pods about the cluster identity.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPlan {
    /// The issuer, e.g. https://dragonfly-operator.dragonfly-system.svc:8443.
    pub issuer_url: String,
    /// Every CA members trust (PEM).
    pub ca_bundle: String,
}

pub fn ca_configmap_name(ctx: &Ctx) -> String {
    format!("{}-ca", ctx.name)
}

/// The CA bundle in the cluster's namespace, mounted by every member pod.
pub fn ca_configmap(ctx: &Ctx, plan: &TlsPlan) -> ConfigMap {
    ConfigMap {
        metadata: ctx.meta(Component::Scheduler, ca_configmap_name(ctx)),
        data: Some([("ca.crt".to_string(), plan.ca_bundle.clone())].into()),
        ..ConfigMap::default()
    }
}

/// Adds the identity volumes and flags to the first container of `pod`.
pub fn member_pod(ctx: &Ctx, plan: &TlsPlan, pod: &mut PodSpec) {
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: "cluster-ca".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: ca_configmap_name(ctx),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: "cluster-token".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(identity::bootstrap::TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_SECONDS),
                    path: "token".into(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: "cluster-identity".into(),
        // The key never touches the node's disk.
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    let Some(container) = pod.containers.first_mut() else {
        return;
    };
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    mounts.push(mount("cluster-ca", CA_DIR, true));
    mounts.push(mount("cluster-token", TOKEN_DIR, true));
    mounts.push(mount("cluster-identity", TLS_DIR, false));
    container.args.get_or_insert_with(Vec::new).extend([
        "--tls-dir".to_string(),
        TLS_DIR.to_string(),
        "--tls-bootstrap".to_string(),
        plan.issuer_url.clone(),
        "--tls-bootstrap-ca".to_string(),
        format!("{CA_DIR}/ca.crt"),
        "--tls-bootstrap-token".to_string(),
        format!("{TOKEN_DIR}/token"),
    ]);
}
