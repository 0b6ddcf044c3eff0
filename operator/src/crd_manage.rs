//! Keeps the served CRDs at this operator's version: Helm installs `crds/`
//! once and never upgrades them, so at start the operator applies the CRDs
//! `dragonfly-operator crd` prints (server-side apply, field manager
//! `dragonfly-operator`, forced) wherever the served one lacks any of it.
//!
//! It never creates a CRD (its RBAC names the two CRDs for get and patch
//! only): a missing one is logged and left to the chart or manifests. A CRD
//! written by a newer operator is left alone, so a replica of the previous
//! version restarting mid-rollout cannot take fields away.
//!
//! `establish` is the strict variant the chart's pre-install/pre-upgrade
//! hook runs (`dragonfly-operator crd --apply`): it creates, fails on any
//! error and waits until every CRD is Established.

pub mod establish;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use tracing::{error, info, warn};

pub const FIELD_MANAGER: &str = "dragonfly-operator";
/// The version of the operator that last applied the CRD.
pub const VERSION_ANNOTATION: &str = "p2p.dragonfly.dev/operator-version";

/// The names of every CRD the operator serves (its RBAC `resourceNames`).
pub fn crd_names() -> Vec<String> {
    crate::crdgen::crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect()
}

/// What to do with one served CRD.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Every field of ours is served already: no write at all.
    UpToDate,
    /// Apply ours.
    Apply,
    /// A newer operator applied it; keep that one.
    Newer(String),
}

/// `a` is contained in `b`: every key of every object in `a` is in `b` with
/// a contained value, arrays element by element (same length). What the
/// API server adds (defaults, status) does not count as a difference.
pub fn contained(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| contained(v, w))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| contained(v, w))
        }
        _ => a == b,
    }
}

/// Numeric parts of a version (`0.12.3-rc1` → [0, 12, 3, 1]).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn decide(
    desired: &CustomResourceDefinition,
    served: &CustomResourceDefinition,
    ours: &str,
) -> Decision {
    let theirs = served
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VERSION_ANNOTATION));
    if let Some(theirs) = theirs {
        if version_key(theirs) > version_key(ours) {
            return Decision::Newer(theirs.clone());
        }
    }
    let (Ok(want), Ok(have)) = (
        serde_json::to_value(&desired.spec),
        serde_json::to_value(&served.spec),
    ) else {
        return Decision::Apply;
    };
    if contained(&want, &have) {
        Decision::UpToDate
    } else {
        Decision::Apply
    }
}

/// The server-side apply body: our spec, and the version that applied it.
pub fn apply_body(desired: &CustomResourceDefinition, ours: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": desired.metadata.name,
            "annotations": {VERSION_ANNOTATION: ours},
        },
        "spec": desired.spec,
    })
}

/// Server-side applies `desired` (forced: this field manager owns every
/// field of the CRD, whoever wrote it before); creates it when missing.
pub async fn apply(
    api: &Api<CustomResourceDefinition>,
    desired: &CustomResourceDefinition,
    name: &str,
    ours: &str,
) -> kube::Result<CustomResourceDefinition> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &pp, &Patch::Apply(apply_body(desired, ours)))
        .await
}

/// Brings every served CRD up to this version. Never fails the start: a
/// CRD that cannot be read or written is logged (with what to do) and the
/// operator runs with the one that is served.
pub async fn ensure_current(client: &Client) {
    let ours = env!("CARGO_PKG_VERSION");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for desired in crate::crdgen::crds() {
        let name = desired.metadata.name.clone().unwrap_or_default();
        let served = match api.get_opt(&name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                error!(crd = %name, "CRD not installed; the operator does not create CRDs: install it with the chart's crds/, manifests/01-crds.yaml or `dragonfly-operator crd | kubectl apply -f -`");
                continue;
            }
            Err(e) => {
                warn!(crd = %name, error = %e, "cannot read the CRD; leaving it as served (RBAC: get on customresourcedefinitions by name, or run with --manage-crds=false)");
                continue;
            }
        };
        match decide(&desired, &served, ours) {
            Decision::UpToDate => info!(crd = %name, "CRD up to date"),
            Decision::Newer(v) => {
                warn!(crd = %name, served = %v, ours, "CRD applied by a newer operator; leaving it");
            }
            Decision::Apply => match apply(&api, &desired, &name, ours).await {
                Ok(_) => info!(crd = %name, version = ours, "CRD updated"),
                Err(e) => {
                    error!(crd = %name, error = %e, "cannot update the CRD; running with the served one (RBAC: patch on customresourcedefinitions by name, or run with --manage-crds=false)")
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served_from(desired: &CustomResourceDefinition) -> CustomResourceDefinition {
        // What the API server returns: ours plus defaults and status.
        let mut v = serde_json::to_value(desired).unwrap();
        v["spec"]["conversion"] = json!({"strategy": "None"});
        v["metadata"]["resourceVersion"] = json!("7");
        v["status"] = json!({"acceptedNames": {"kind": "X", "plural": "xs"}});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn containment_ignores_server_additions_and_sees_any_change_of_ours() {
        let a = json!({"x": [1, {"y": 2}], "z": "s"});
        assert!(contained(
            &a,
            &json!({"x": [1, {"y": 2, "d": 0}], "z": "s", "n": 1})
        ));
        assert!(!contained(&a, &json!({"x": [1, {"y": 3}], "z": "s"})));
        assert!(!contained(&a, &json!({"x": [1], "z": "s"})));
        assert!(!contained(&a, &json!({"x": [1, {"y": 2}]})));
    }

    #[test]
    fn a_served_crd_with_every_field_is_left_alone() {
        for desired in crate::crdgen::crds() {
            let served = served_from(&desired);
            assert_eq!(decide(&desired, &served, "0.1.0"), Decision::UpToDate);
        }
    }

    #[test]
    fn a_missing_property_or_changed_description_is_applied() {
        let desired = crate::crdgen::crds().remove(0);
        let mut v = serde_json::to_value(served_from(&desired)).unwrap();
        let props = &mut v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"];
        let first = props.as_object().unwrap().keys().next().unwrap().clone();
        props.as_object_mut().unwrap().remove(&first);
        let old: CustomResourceDefinition = serde_json::from_value(v).unwrap();
        assert_eq!(decide(&desired, &old, "0.1.0"), Decision::Apply);

        let mut v = serde_json::to_value(served_from(&desired)).unwrap();
        v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = json!("stale");
        let old: CustomResourceDefinition = serde_json::from_value(v).unwrap();
        assert_eq!(decide(&desired, &old, "0.1.0"), Decision::Apply);
    }

    #[test]
    fn a_crd_from_a_newer_operator_is_kept() {
        let desired = crate::crdgen::crds().remove(0);
        let mut served = served_from(&desired);
        served.metadata.annotations =
            Some([(VERSION_ANNOTATION.to_string(), "0.10.0".to_string())].into());
        served.spec.versions[0].schema = None;
        assert_eq!(
            decide(&desired, &served, "0.9.1"),
            Decision::Newer("0.10.0".into())
        );
        assert_eq!(decide(&desired, &served, "0.10.0"), Decision::Apply);
        assert_eq!(decide(&desired, &served, "0.10.1"), Decision::Apply);
    }

    #[test]
    fn the_apply_body_is_the_generated_spec_with_our_version() {
        let desired = crate::crdgen::crds().remove(1);
        let body = apply_body(&desired, "1.2.3");
        assert_eq!(body["kind"], "CustomResourceDefinition");
        assert_eq!(body["metadata"]["name"], json!(desired.metadata.name));
        assert_eq!(body["metadata"]["annotations"][VERSION_ANNOTATION], "1.2.3");
        assert_eq!(body["spec"], serde_json::to_value(&desired.spec).unwrap());
        assert!(body["metadata"].get("resourceVersion").is_none());
    }

    #[test]
    fn names_are_the_generated_crds() {
        assert_eq!(
            crd_names(),
            [
                "dragonflyclusters.p2p.dragonfly.dev",
                "preheats.p2p.dragonfly.dev"
            ]
        );
    }
}
