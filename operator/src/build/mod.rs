//! Pure builders: a `DragonflyCluster` in, the objects it should own out.
//! No API calls here, so every builder is tested from fixtures.

mod cleanup;
mod config;
mod dfdaemon;
mod network_policy;
pub mod pod;
mod rbac;
pub mod registry_ca;
mod scheduler;
mod seed_peer;
mod tls;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::{DefaultImage, DragonflyCluster};

pub use cleanup::cleanup_daemonset;
pub use dfdaemon::DFDAEMON_CONFIG_MOUNT;
pub use seed_peer::SeedStorage;
pub use tls::{ca_configmap_name, TlsPlan, TLS_DIR};

pub const MANAGER: &str = "dragonfly-operator";
/// Hash of what the operator last applied; equal hash means nothing to write.
pub const APPLIED_HASH: &str = "p2p.dragonfly.dev/applied-hash";
/// Hash of the rendered config, on pod templates so a config change rolls the pods.
pub const CONFIG_HASH: &str = "p2p.dragonfly.dev/config-hash";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Every image this project ships is Linux-only; without this a mixed
/// cluster would schedule node pods onto Windows nodes, where they crash-loop.
pub const LABEL_OS: &str = "kubernetes.io/os";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("DragonflyCluster has no {0}; it did not come from the API server")]
    MissingMetadata(&'static str),
    #[error("cannot serialize {0}: {1}")]
    Serialize(String, serde_json::Error),
}

/// The components, which also name their objects (`<cluster>-<component>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Scheduler,
    SeedPeer,
    Dfdaemon,
    Cleanup,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Scheduler => "scheduler",
            Component::SeedPeer => "seed-peer",
            Component::Dfdaemon => "dfdaemon",
            Component::Cleanup => "cleanup",
        }
    }
}

/// What every builder needs from the cluster object, checked once.
pub struct Ctx<'a> {
    pub dfc: &'a DragonflyCluster,
    pub name: String,
    pub namespace: String,
    owner: OwnerReference,
    /// What unset `spec.image` fields mean for this operator.
    images: DefaultImage,
    /// The cluster identity member pods get (None: plain, as before).
    tls: Option<TlsPlan>,
    /// Where the operator's own pods run (NetworkPolicies let them reach
    /// the peer and mirror ports to preheat).
    operator_namespace: Option<String>,
    /// A digest of each registry CA bundle's content, by host, as the
    /// operator read it; part of the pods' config hash, so new content
    /// rolls them.
    ca_bundle_digests: BTreeMap<String, String>,
    /// Where the seed peers' cache lives.
    seed_storage: SeedStorage,
}

impl<'a> Ctx<'a> {
    pub fn new(dfc: &'a DragonflyCluster, images: &DefaultImage) -> Result<Self, BuildError> {
        let namespace = dfc
            .namespace()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let owner = dfc
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMetadata("uid"))?;
        Ok(Self {
            dfc,
            name: dfc.name_any(),
            namespace,
            owner,
            images: images.clone(),
            tls: None,
            operator_namespace: None,
            ca_bundle_digests: BTreeMap::new(),
            seed_storage: SeedStorage::default(),
        })
    }

    /// The namespace of the operator's pods.
    pub fn with_operator_namespace(mut self, namespace: Option<String>) -> Self {
        self.operator_namespace = namespace;
        self
    }

    /// Where the seed peers keep their cache (see `crate::seed_storage`).
    pub fn with_seed_storage(mut self, storage: SeedStorage) -> Self {
        self.seed_storage = storage;
        self
    }

    /// The content digests of the registry CA bundles (see [`Ctx::ca_bundle_digests`]).
    pub fn with_ca_bundle_digests(mut self, digests: BTreeMap<String, String>) -> Self {
        self.ca_bundle_digests = digests;
        self
    }

    /// The hash on a data-plane pod template: its config, and the content
    /// of the registry CA bundles it mounts when there are any.
    fn data_plane_hash(&self, cm: &ConfigMap) -> String {
        if self.ca_bundle_digests.is_empty() {
            config_hash(cm)
        } else {
            hash_json(&(&cm.data, &self.ca_bundle_digests))
        }
    }

    /// Member pods obtain their certificates from the operator's issuer.
    pub fn with_tls(mut self, plan: Option<TlsPlan>) -> Self {
        self.tls = plan;
        self
    }

    pub fn object_name(&self, c: Component) -> String {
        format!("{}-{}", self.name, c.as_str())
    }

    pub fn headless_name(&self, c: Component) -> String {
        format!("{}-{}-headless", self.name, c.as_str())
    }

    pub fn selector(&self, c: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), "dragonfly".to_string()),
            (LABEL_INSTANCE.to_string(), self.name.clone()),
            (LABEL_COMPONENT.to_string(), c.as_str().to_string()),
        ])
    }

    pub fn labels(&self, c: Component) -> BTreeMap<String, String> {
        let mut l = self.selector(c);
        l.insert(LABEL_MANAGED_BY.to_string(), MANAGER.to_string());
        l
    }

    pub fn meta(&self, c: Component, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(c)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Where dfdaemons and seed peers find every scheduler replica: the headless
    /// Service resolves to all ready scheduler pods.
    pub fn scheduler_address(&self) -> String {
        format!(
            "{}.{}.svc:{}",
            self.headless_name(Component::Scheduler),
            self.namespace,
            self.dfc.spec.scheduler.port
        )
    }

    pub fn image(&self) -> String {
        self.dfc.spec.image.reference(&self.images)
    }

    pub fn pull_policy(&self) -> Option<String> {
        Some(self.dfc.spec.image.pull_policy.as_str().to_string())
    }
}

/// One object to apply, type-erased so apply and prune handle every kind alike.
#[derive(Debug, Clone)]
pub struct Desired {
    pub resource: ApiResource,
    pub object: DynamicObject,
}

impl Desired {
    pub fn of<K>(obj: &K) -> Result<Self, BuildError>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let mut value = serde_json::to_value(obj)
            .map_err(|e| BuildError::Serialize(K::kind(&()).to_string(), e))?;
        // SSA needs apiVersion/kind in the body; typed k8s-openapi structs leave them out.
        value["apiVersion"] = resource.api_version.clone().into();
        value["kind"] = resource.kind.clone().into();
        let mut object: DynamicObject = serde_json::from_value(value)
            .map_err(|e| BuildError::Serialize(resource.kind.clone(), e))?;
        let hash = hash_json(&object);
        object
            .annotations_mut()
            .insert(APPLIED_HASH.to_string(), hash);
        Ok(Self { resource, object })
    }

    pub fn name(&self) -> String {
        self.object.name_any()
    }

    pub fn hash(&self) -> Option<&String> {
        self.object.annotations().get(APPLIED_HASH)
    }
}

/// Every kind the operator may own, in apply order (identities and config before workloads).
pub fn managed_kinds() -> Vec<ApiResource> {
    use k8s_openapi::api::{
        apps::v1 as apps, core::v1 as core, networking::v1 as networking, policy::v1 as policy,
        rbac::v1 as rbac,
    };
    vec![
        ApiResource::erase::<core::ServiceAccount>(&()),
        ApiResource::erase::<rbac::Role>(&()),
        ApiResource::erase::<rbac::RoleBinding>(&()),
        ApiResource::erase::<core::ConfigMap>(&()),
        ApiResource::erase::<core::Service>(&()),
        ApiResource::erase::<networking::NetworkPolicy>(&()),
        ApiResource::erase::<policy::PodDisruptionBudget>(&()),
        ApiResource::erase::<apps::Deployment>(&()),
        ApiResource::erase::<apps::StatefulSet>(&()),
        ApiResource::erase::<apps::DaemonSet>(&()),
    ]
}

/// Everything a healthy (not deleted) cluster owns, in apply order.
pub fn desired_objects(ctx: &Ctx) -> Result<Vec<Desired>, BuildError> {
    let spec = &ctx.dfc.spec;
    let mut out = Vec::new();

    let sched_cm = config::scheduler_configmap(ctx);
    let daemon_cm = config::dfdaemon_configmap(ctx);
    let seed_cm = spec
        .seed_peer
        .enabled
        .then(|| config::seed_peer_configmap(ctx));

    out.push(Desired::of(&service_account(ctx, Component::Scheduler))?);
    if spec.seed_peer.enabled {
        out.push(Desired::of(&service_account(ctx, Component::SeedPeer))?);
    }
    out.push(Desired::of(&service_account(ctx, Component::Dfdaemon))?);
    out.push(Desired::of(&rbac::dfdaemon_role(ctx))?);
    out.push(Desired::of(&rbac::dfdaemon_role_binding(ctx))?);

    if let Some(plan) = &ctx.tls {
        out.push(Desired::of(&tls::ca_configmap(ctx, plan))?);
    }
    out.push(Desired::of(&sched_cm)?);
    if let Some(cm) = &seed_cm {
        out.push(Desired::of(cm)?);
    }
    out.push(Desired::of(&daemon_cm)?);

    out.push(Desired::of(&scheduler::service(ctx))?);
    out.push(Desired::of(&scheduler::headless_service(ctx))?);
    if spec.seed_peer.enabled {
        out.push(Desired::of(&seed_peer::headless_service(ctx))?);
    }
    // Before the workloads, so no pod of theirs starts unguarded.
    out.push(Desired::of(&network_policy::network_policy(
        ctx,
        Component::Scheduler,
    ))?);
    if spec.seed_peer.enabled {
        out.push(Desired::of(&network_policy::network_policy(
            ctx,
            Component::SeedPeer,
        ))?);
    }
    out.push(Desired::of(&network_policy::network_policy(
        ctx,
        Component::Dfdaemon,
    ))?);

    // Before the workloads too: a drain right after a rollout is covered.
    if let Some(pdb) = pod::disruption_budget(
        ctx,
        Component::Scheduler,
        spec.scheduler.replicas,
        &spec.scheduler.pod_disruption_budget,
    ) {
        out.push(Desired::of(&pdb)?);
    }
    if spec.seed_peer.enabled {
        if let Some(pdb) = pod::disruption_budget(
            ctx,
            Component::SeedPeer,
            spec.seed_peer.replicas,
            &spec.seed_peer.pod_disruption_budget,
        ) {
            out.push(Desired::of(&pdb)?);
        }
    }

    let member = |pod: Option<&mut k8s_openapi::api::core::v1::PodSpec>| {
        if let (Some(plan), Some(pod)) = (&ctx.tls, pod) {
            tls::member_pod(ctx, plan, pod);
        }
    };
    let mut deployment = scheduler::deployment(ctx, &config_hash(&sched_cm));
    member(deployment.spec.template.spec.as_mut());
    out.push(Desired::of(&deployment)?);
    // Seed peers fetch from the origin too: both get the registry CA bundles.
    let registry_cas = |pod: Option<&mut k8s_openapi::api::core::v1::PodSpec>| {
        if let Some(pod) = pod {
            registry_ca::add_to_pod(ctx, pod);
        }
    };
    if let Some(cm) = &seed_cm {
        let mut statefulset = seed_peer::statefulset(ctx, &ctx.data_plane_hash(cm));
        registry_cas(statefulset.spec.template.spec.as_mut());
        member(statefulset.spec.template.spec.as_mut());
        out.push(Desired::of(&statefulset)?);
    }
    let mut daemonset = dfdaemon::daemonset(ctx, &ctx.data_plane_hash(&daemon_cm));
    registry_cas(daemonset.spec.template.spec.as_mut());
    member(daemonset.spec.template.spec.as_mut());
    out.push(Desired::of(&daemonset)?);
    Ok(out)
}

/// What a cluster being deleted keeps: the restore DaemonSet and the
/// ServiceAccount its pods run under. Everything else is pruned.
pub fn cleanup_objects(
    ctx: &Ctx,
    cleanup: &k8s_openapi::api::apps::v1::DaemonSet,
) -> Result<Vec<Desired>, BuildError> {
    Ok(vec![
        Desired::of(&service_account(ctx, Component::Dfdaemon))?,
        Desired::of(cleanup)?,
    ])
}

fn service_account(ctx: &Ctx, c: Component) -> ServiceAccount {
    ServiceAccount {
        metadata: ctx.meta(c, ctx.object_name(c)),
        // Only dfdaemon talks to the API (to report node problems); the rest get no token.
        automount_service_account_token: Some(c == Component::Dfdaemon),
        ..ServiceAccount::default()
    }
}

pub fn config_hash(cm: &ConfigMap) -> String {
    hash_json(&cm.data)
}

fn hash_json<T: Serialize>(v: &T) -> String {
    // serde_json output of our own structs is deterministic (BTreeMaps, fixed field order).
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..12])
}

/// A pod's node selector: the user's, always with `kubernetes.io/os: linux`.
fn linux_node_selector(user: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    let mut m = user.clone();
    m.insert(LABEL_OS.to_string(), "linux".to_string());
    Some(m)
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

#[cfg(test)]
pub(crate) mod tests;
