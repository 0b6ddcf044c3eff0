//! Builders from fixtures: golden files for the whole output, plus direct
//! assertions for the properties that matter most on a real cluster.
//! `UPDATE_GOLDEN=1 cargo test -p dragonfly-operator` rewrites the goldens.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::ResourceExt;

use super::*;
use crate::crd::DragonflyCluster;

pub(crate) fn fixture(name: &str) -> DragonflyCluster {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn render(objects: &[Desired]) -> String {
    objects
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(&d.object).expect("yaml")))
        .collect()
}

fn check_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the builders' output; rerun with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

fn daemonset_of(objects: &[Desired]) -> DaemonSet {
    let d = objects
        .iter()
        .find(|d| d.resource.kind == "DaemonSet")
        .expect("a DaemonSet");
    serde_json::from_value(serde_json::to_value(&d.object).expect("json")).expect("DaemonSet")
}

#[test]
fn golden_default_cluster() {
    let dfc = fixture("default");
    let objects = desired_objects(&Ctx::new(&dfc).expect("ctx")).expect("build");
    check_golden("default", &render(&objects));
}

#[test]
fn golden_custom_cluster() {
    let dfc = fixture("custom");
    let objects = desired_objects(&Ctx::new(&dfc).expect("ctx")).expect("build");
    check_golden("custom", &render(&objects));
}

#[test]
fn golden_cleanup_daemonset() {
    let dfc = fixture("default");
    let ctx = Ctx::new(&dfc).expect("ctx");
    let ds = Desired::of(&cleanup_daemonset(&ctx)).expect("build");
    check_golden("cleanup", &render(&[ds]));
}

#[test]
fn default_cluster_has_every_component_and_owner() {
    let dfc = fixture("default");
    let objects = desired_objects(&Ctx::new(&dfc).expect("ctx")).expect("build");
    let names: Vec<String> = objects
        .iter()
        .map(|d| format!("{}/{}", d.resource.kind, d.name()))
        .collect();
    assert_eq!(
        names,
        [
            "ServiceAccount/dragonfly-scheduler",
            "ServiceAccount/dragonfly-seed-peer",
            "ServiceAccount/dragonfly-dfdaemon",
            "Role/dragonfly-dfdaemon",
            "RoleBinding/dragonfly-dfdaemon",
            "ConfigMap/dragonfly-scheduler",
            "ConfigMap/dragonfly-seed-peer",
            "ConfigMap/dragonfly-dfdaemon",
            "Service/dragonfly-scheduler",
            "Service/dragonfly-scheduler-headless",
            "Service/dragonfly-seed-peer-headless",
            "Deployment/dragonfly-scheduler",
            "StatefulSet/dragonfly-seed-peer",
            "DaemonSet/dragonfly-dfdaemon",
        ]
    );
    for d in &objects {
        let owners = d.object.owner_references();
        assert_eq!(owners.len(), 1, "{} has one owner", d.name());
        assert_eq!(owners[0].uid, "6f1c2d4e-0000-4000-8000-000000000001");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(d.object.namespace().as_deref(), Some("dragonfly-system"));
        assert!(d.hash().is_some(), "{} carries its applied hash", d.name());
    }
}

#[test]
fn dfdaemon_daemonset_is_a_node_agent() {
    let dfc = fixture("default");
    let ds = daemonset_of(&desired_objects(&Ctx::new(&dfc).expect("ctx")).expect("build"));
    let spec = ds.spec;
    let rolling = spec
        .update_strategy
        .and_then(|u| u.rolling_update)
        .expect("rolling update");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
    assert_eq!(pod.host_network, None);
    let c = &pod.containers[0];
    let host_ports: Vec<i32> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.host_port)
        .collect();
    assert_eq!(host_ports, [65001, 65002]);
    let probe_port = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| h.port.clone())
    };
    assert_eq!(
        probe_port(&c.readiness_probe),
        Some(IntOrString::Int(40901))
    );
    assert_eq!(probe_port(&c.liveness_probe), Some(IntOrString::Int(40901)));
    let args = c.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--scheduler dragonfly-scheduler-headless.dragonfly-system.svc:8002"),
        "{args}"
    );
    assert!(
        args.contains("--containerd-config-path /etc/containerd/certs.d"),
        "{args}"
    );
    let host_paths: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert_eq!(
        host_paths,
        [
            "/var/lib/dragonfly",
            "/etc/containerd/certs.d",
            "/etc/containerd"
        ]
    );
}

#[test]
fn custom_cluster_drops_seed_peers_and_uses_host_network() {
    let dfc = fixture("custom");
    let objects = desired_objects(&Ctx::new(&dfc).expect("ctx")).expect("build");
    assert!(objects.iter().all(|d| !d.name().contains("seed-peer")));
    let ds = daemonset_of(&objects);
    let pod = ds.spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name, None,
        "empty priority class means none"
    );
    let args = pod.containers[0].args.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("--containerd-registry docker.io --containerd-registry http://10.0.0.5:5000"),
        "{args}"
    );
    assert!(args.contains("--label zone=eu-west-1a"), "{args}");
    assert!(args.contains("--upload-rate 200MiB"), "{args}");
    assert!(
        args.contains("--containerd-config /host/containerd-config/config.toml"),
        "{args}"
    );
}

#[test]
fn config_change_changes_pod_template_hash() {
    let mut dfc = fixture("default");
    let hash = |dfc: &DragonflyCluster| {
        let ds = daemonset_of(&desired_objects(&Ctx::new(dfc).expect("ctx")).expect("build"));
        ds.spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(CONFIG_HASH).cloned())
            .expect("config hash")
    };
    let before = hash(&dfc);
    dfc.spec.dfdaemon.cache_size = "30GiB".into();
    assert_ne!(before, hash(&dfc));
}

#[test]
fn cluster_without_uid_is_refused_not_panicked() {
    let mut dfc = fixture("default");
    dfc.metadata.uid = None;
    assert!(matches!(
        Ctx::new(&dfc),
        Err(BuildError::MissingMetadata("uid"))
    ));
}
