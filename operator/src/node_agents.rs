//! The ConfigMap `dragonfly-node-agents` in the operator's namespace: the
//! parameter of the install's admission policy (`manifests::node_agent_policy`).
//! One entry per DragonflyCluster this operator reconciles, key
//! `<namespace>.<name>`, value the full username of that cluster's dfdaemon
//! service account; the policy constrains exactly those users, not any
//! `*-dfdaemon` account of an unrelated app.
//!
//! Only the operator writes it: dfdaemon's Role (`build::rbac`) grants
//! `patch pods` and nothing on ConfigMaps. If the ConfigMap is missing the
//! binding's `parameterNotFoundAction: Allow` lets every request through
//! (fail-open); the operator recreates it at the next reconcile.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::build::{Component, LABEL_MANAGED_BY, MANAGER};

pub const CONFIGMAP: &str = "dragonfly-node-agents";

/// The entry's key: namespace and name, both DNS names, so `.` separates.
pub fn key(namespace: &str, cluster: &str) -> String {
    format!("{namespace}.{cluster}")
}

/// The username the API server gives the cluster's dfdaemon pods.
pub fn username(namespace: &str, cluster: &str) -> String {
    format!(
        "system:serviceaccount:{namespace}:{cluster}-{}",
        Component::Dfdaemon.as_str()
    )
}

pub fn add_patch(namespace: &str, cluster: &str) -> serde_json::Value {
    json!({"data": {key(namespace, cluster): username(namespace, cluster)}})
}

pub fn remove_patch(namespace: &str, cluster: &str) -> serde_json::Value {
    json!({"data": {key(namespace, cluster): null}})
}

fn configmap(operator_ns: &str, namespace: &str, cluster: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP.into()),
            namespace: Some(operator_ns.into()),
            labels: Some([(LABEL_MANAGED_BY.to_string(), MANAGER.to_string())].into()),
            ..ObjectMeta::default()
        },
        data: Some([(key(namespace, cluster), username(namespace, cluster))].into()),
        ..ConfigMap::default()
    }
}

/// Adds the cluster's entry (a merge patch of that key only, so concurrent
/// reconciles of other clusters do not race); creates the ConfigMap when
/// missing. A no-op patch does not change the object.
pub async fn add(
    client: &Client,
    operator_ns: &str,
    namespace: &str,
    cluster: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), operator_ns);
    let patch = add_patch(namespace, cluster);
    for _ in 0..3 {
        match api
            .patch(CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                match api
                    .create(
                        &PostParams::default(),
                        &configmap(operator_ns, namespace, cluster),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(
                            configmap = CONFIGMAP,
                            namespace = operator_ns,
                            "node-agent policy parameters created"
                        );
                        return Ok(());
                    }
                    // Another reconcile created it: patch that one.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    api.patch(CONFIGMAP, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Removes the cluster's entry; a missing ConfigMap has none.
pub async fn remove(
    client: &Client,
    operator_ns: &str,
    namespace: &str,
    cluster: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), operator_ns);
    match api
        .patch(
            CONFIGMAP,
            &PatchParams::default(),
            &Patch::Merge(&remove_patch(namespace, cluster)),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_the_dfdaemon_service_account_of_each_cluster() {
        assert_eq!(key("team-a", "dragonfly"), "team-a.dragonfly");
        assert_eq!(
            username("team-a", "dragonfly"),
            "system:serviceaccount:team-a:dragonfly-dfdaemon"
        );
        assert_eq!(
            add_patch("a", "b"),
            json!({"data": {"a.b": "system:serviceaccount:a:b-dfdaemon"}})
        );
        assert_eq!(remove_patch("a", "b"), json!({"data": {"a.b": null}}));
        let cm = configmap("ops", "a", "b");
        assert_eq!(cm.metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(cm.metadata.name.as_deref(), Some(CONFIGMAP));
    }

    /// The username names the DaemonSet's service account, and no Role the
    /// operator gives a cluster's workloads lets them write ConfigMaps.
    #[test]
    fn matches_the_dfdaemon_account_which_cannot_write_configmaps() {
        let mut dfc = crate::crd::DragonflyCluster::new("c", Default::default());
        dfc.metadata.namespace = Some("ns".into());
        dfc.metadata.uid = Some("u".into());
        let images = crate::crd::DefaultImage::builtin();
        let ctx = crate::build::Ctx::new(&dfc, &images).expect("ctx");
        let objects = crate::build::desired_objects(&ctx).expect("build");
        let ds = objects
            .iter()
            .find(|d| d.resource.kind == "DaemonSet")
            .expect("DaemonSet");
        let sa = ds.object.data["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        assert_eq!(
            username("ns", "c"),
            format!("system:serviceaccount:ns:{sa}")
        );
        let roles: Vec<_> = objects
            .iter()
            .filter(|d| d.resource.kind == "Role" || d.resource.kind == "ClusterRole")
            .collect();
        assert!(!roles.is_empty());
        for role in roles {
            for rule in role.object.data["rules"].as_array().expect("rules") {
                let has = |field: &str, what: &[&str]| {
                    rule[field]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|v| what.iter().any(|w| v == w)))
                };
                assert!(!has("resources", &["configmaps", "*"]), "{rule}");
                assert!(!has("verbs", &["*"]), "{rule}");
            }
        }
    }
}
