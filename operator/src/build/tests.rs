//! Builders from fixtures: golden files for the whole output, plus direct
//! assertions for the properties that matter most on a real cluster.
//! `UPDATE_GOLDEN=1 cargo test -p dragonfly-operator` rewrites the goldens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodSpec;
use kube::ResourceExt;

use super::*;
use crate::crd::DragonflyCluster;

pub(crate) fn fixture(name: &str) -> DragonflyCluster {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A build context with the operator's built-in default image.
pub(crate) fn ctx_of(dfc: &DragonflyCluster) -> Ctx<'_> {
    Ctx::new(dfc, &DefaultImage::builtin()).expect("ctx")
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
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    check_golden("default", &render(&objects));
}

#[test]
fn golden_custom_cluster() {
    let dfc = fixture("custom");
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    check_golden("custom", &render(&objects));
}

#[test]
fn golden_pod_settings_cluster() {
    let dfc = fixture("pod-settings");
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    check_golden("pod-settings", &render(&objects));
}

#[test]
fn golden_private_ca_cluster() {
    let dfc = fixture("private-ca");
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    check_golden("private-ca", &render(&objects));
}

#[test]
fn registry_ca_bundles_are_mounted_and_named_in_the_config() {
    let dfc = fixture("private-ca");
    assert_eq!(crate::validate::validate(&dfc.spec), vec![]);
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    let config_of = |name: &str| -> serde_yaml::Value {
        let cm = objects
            .iter()
            .find(|d| d.resource.kind == "ConfigMap" && d.name() == name)
            .expect("the ConfigMap");
        let text = cm.object.data["data"][config::DFDAEMON_FILE]
            .as_str()
            .expect("dfdaemon.yaml");
        serde_yaml::from_str(text).expect("yaml")
    };
    for name in ["internal-dfdaemon", "internal-seed-peer"] {
        let registries = &config_of(name)["mirror"]["registries"];
        assert_eq!(
            registries["registry.internal:5443"]["ca_file"].as_str(),
            Some("/etc/dragonfly-registry-ca/registry.internal_5443.crt"),
            "{name}: {registries:?}"
        );
        assert_eq!(
            registries["registry.internal:5443"]["plain_http"].as_bool(),
            Some(false)
        );
        assert_eq!(
            registries["harbor.corp.example"]["ca_file"].as_str(),
            Some("/etc/dragonfly-registry-ca/harbor.corp.example.crt")
        );
        assert_eq!(
            registries["test-registry.lan:5000"]["insecure_skip_verify"].as_bool(),
            Some(true)
        );
        assert_eq!(
            registries["registry.lan:5000"]["plain_http"].as_bool(),
            Some(true)
        );
    }
    // A host with plainHTTP reaches containerd and the mirror's list as http://.
    let ds = daemonset_of(&objects);
    let args = ds.spec.template.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"http://registry.lan:5000".to_string()),
        "{args:?}"
    );
    assert!(!args.contains(&"registry.lan:5000".to_string()), "{args:?}");

    // Both the DaemonSet and the seed peers mount the bundles read-only, each
    // from its own object and key.
    let mut checked = 0;
    for (id, pod, _) in pod_specs(&objects) {
        if !(id.starts_with("DaemonSet") || id.starts_with("StatefulSet")) {
            continue;
        }
        checked += 1;
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "registry-ca")
            .unwrap_or_else(|| panic!("{id}: no registry-ca volume"));
        let sources = volume.projected.as_ref().unwrap().sources.clone().unwrap();
        let secret = sources[0].secret.as_ref().expect("a Secret projection");
        assert_eq!(secret.name, "internal-registry-ca");
        let items = secret.items.clone().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("ca.crt", "registry.internal_5443.crt")
        );
        let cm = sources[1]
            .config_map
            .as_ref()
            .expect("a ConfigMap projection");
        assert_eq!(cm.name, "corp-ca-bundle");
        assert_eq!(cm.items.clone().unwrap()[0].key, "bundle.pem");
        let mount = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "registry-ca")
            .unwrap_or_else(|| panic!("{id}: registry-ca not mounted"));
        assert_eq!(mount.mount_path, registry_ca::REGISTRY_CA_DIR);
        assert_eq!(mount.read_only, Some(true));
    }
    assert_eq!(checked, 2, "the DaemonSet and the seed-peer StatefulSet");

    // Without bundles nothing is mounted.
    let plain = fixture("default");
    let objects = desired_objects(&ctx_of(&plain)).expect("build");
    for (id, pod, _) in pod_specs(&objects) {
        assert!(
            !pod.volumes
                .iter()
                .flatten()
                .any(|v| v.name == "registry-ca"),
            "{id}"
        );
    }
}

#[test]
fn new_bundle_content_rolls_the_data_plane_only() {
    let dfc = fixture("private-ca");
    let hashes = |digest: &str| -> BTreeMap<String, String> {
        let ctx = ctx_of(&dfc).with_ca_bundle_digests(BTreeMap::from([(
            "registry.internal:5443".to_string(),
            digest.to_string(),
        )]));
        pod_specs_with_hashes(&desired_objects(&ctx).expect("build"))
    };
    let (before, after) = (hashes("aaa"), hashes("bbb"));
    assert_eq!(before.len(), 3, "{before:?}");
    for (id, hash) in &before {
        let rolled = &after[id] != hash;
        let data_plane = id.starts_with("DaemonSet") || id.starts_with("StatefulSet");
        assert_eq!(rolled, data_plane, "{id}");
    }
    // A new reference (another Secret) changes the pod template itself.
    let mut moved = fixture("private-ca");
    moved.spec.registry_configs[0]
        .ca_bundle
        .as_mut()
        .unwrap()
        .secret_ref
        .as_mut()
        .unwrap()
        .name = "rotated-ca".into();
    let a = daemonset_of(&desired_objects(&ctx_of(&dfc)).expect("build"));
    let b = daemonset_of(&desired_objects(&ctx_of(&moved)).expect("build"));
    assert_ne!(a.spec.template, b.spec.template);
}

/// Each workload's pod-template config hash, by `Kind/name`.
fn pod_specs_with_hashes(objects: &[Desired]) -> BTreeMap<String, String> {
    objects
        .iter()
        .filter_map(|d| {
            let hash = d.object.data["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH]
                .as_str()?;
            Some((
                format!("{}/{}", d.resource.kind, d.name()),
                hash.to_string(),
            ))
        })
        .collect()
}

#[test]
fn golden_cleanup_daemonset() {
    let dfc = fixture("default");
    let ctx = ctx_of(&dfc);
    let ds = Desired::of(&cleanup_daemonset(&ctx)).expect("build");
    check_golden("cleanup", &render(&[ds]));
}

#[test]
fn default_cluster_has_every_component_and_owner() {
    let dfc = fixture("default");
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
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
            "NetworkPolicy/dragonfly-scheduler",
            "NetworkPolicy/dragonfly-seed-peer",
            "NetworkPolicy/dragonfly-dfdaemon",
            "PodDisruptionBudget/dragonfly-scheduler",
            "PodDisruptionBudget/dragonfly-seed-peer",
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
    let ds = daemonset_of(&desired_objects(&ctx_of(&dfc)).expect("build"));
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
            "/etc/containerd",
            "/run/dragonfly"
        ]
    );
    // The task API only on the node, where dfget looks for it.
    assert!(
        args.contains("--api-listen unix:/run/dragonfly/dfdaemon.sock"),
        "{args}"
    );
}

#[test]
fn custom_cluster_drops_seed_peers_and_uses_host_network() {
    let dfc = fixture("custom");
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
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
        let ds = daemonset_of(&desired_objects(&ctx_of(dfc)).expect("build"));
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
        Ctx::new(&dfc, &DefaultImage::builtin()),
        Err(BuildError::MissingMetadata("uid"))
    ));
}

/// `(workload kind/name, pod spec, volume names from claim templates)` of
/// every workload in `objects`.
fn pod_specs(objects: &[Desired]) -> Vec<(String, PodSpec, Vec<String>)> {
    let json = |d: &Desired| serde_json::to_value(&d.object).expect("json");
    objects
        .iter()
        .filter_map(|d| {
            let id = format!("{}/{}", d.resource.kind, d.name());
            match d.resource.kind.as_str() {
                "Deployment" => {
                    let w: Deployment = serde_json::from_value(json(d)).expect("Deployment");
                    Some((id, w.spec.template.spec?, vec![]))
                }
                "StatefulSet" => {
                    let w: StatefulSet = serde_json::from_value(json(d)).expect("StatefulSet");
                    let spec = w.spec;
                    let claims = spec
                        .volume_claim_templates
                        .iter()
                        .flatten()
                        .filter_map(|c| c.metadata.name.clone())
                        .collect();
                    Some((id, spec.template.spec?, claims))
                }
                "DaemonSet" => {
                    let w: DaemonSet = serde_json::from_value(json(d)).expect("DaemonSet");
                    Some((id, w.spec.template.spec?, vec![]))
                }
                _ => None,
            }
        })
        .collect()
}

/// Every workload the operator can build: the fixtures' desired objects
/// (seed peers on and off, host network on and off, registry CA bundles)
/// and the cleanup DaemonSet.
fn all_workloads() -> Vec<(String, PodSpec, Vec<String>)> {
    let mut out = Vec::new();
    for name in ["default", "custom", "private-ca", "pod-settings"] {
        let dfc = fixture(name);
        let ctx = ctx_of(&dfc);
        let mut objects = desired_objects(&ctx).expect("build");
        objects.push(Desired::of(&cleanup_daemonset(&ctx)).expect("cleanup"));
        let specs = pod_specs(&objects);
        let kinds: BTreeSet<String> = specs
            .iter()
            .map(|(id, _, _)| id.split('/').next().unwrap_or_default().to_string())
            .collect();
        assert!(
            kinds.contains("Deployment") && kinds.contains("DaemonSet"),
            "{kinds:?}"
        );
        out.extend(
            specs
                .into_iter()
                .map(|(id, s, c)| (format!("{name}: {id}"), s, c)),
        );
    }
    assert_eq!(
        out.len(),
        15,
        "scheduler x4, seed peer x3, dfdaemon x4, cleanup x4"
    );
    out
}

/// What the API server checks across a pod spec and the builders' goldens do not:
/// a mount of an undeclared volume (422), duplicate container or host ports.
#[test]
fn every_workload_mounts_declared_volumes_and_uses_each_port_once() {
    for (id, pod, claims) in all_workloads() {
        let declared: BTreeSet<String> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .chain(claims)
            .collect();
        let mut container_ports = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        let containers = pod.init_containers.iter().flatten().chain(&pod.containers);
        for c in containers {
            for m in c.volume_mounts.iter().flatten() {
                assert!(
                    declared.contains(&m.name),
                    "{id}: container {} mounts volume {:?}, which the pod does not declare ({declared:?})",
                    c.name,
                    m.name
                );
            }
            let mut names = BTreeSet::new();
            for p in c.ports.iter().flatten() {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                assert!(
                    container_ports.insert((p.container_port, proto.clone())),
                    "{id}: containerPort {} used twice",
                    p.container_port
                );
                if let Some(h) = p.host_port {
                    assert!(
                        host_ports.insert((h, proto)),
                        "{id}: hostPort {h} used twice"
                    );
                }
                if let Some(n) = &p.name {
                    assert!(names.insert(n.clone()), "{id}: port name {n} used twice");
                }
            }
        }
        let volume_names: Vec<&String> = pod.volumes.iter().flatten().map(|v| &v.name).collect();
        let unique: BTreeSet<&&String> = volume_names.iter().collect();
        assert_eq!(
            unique.len(),
            volume_names.len(),
            "{id}: duplicate volume names"
        );
    }
}

#[test]
fn every_workload_runs_on_linux_nodes_keeping_user_selectors() {
    for (id, pod, _) in all_workloads() {
        let sel = pod.node_selector.clone().unwrap_or_default();
        assert_eq!(
            sel.get(LABEL_OS).map(String::as_str),
            Some("linux"),
            "{id}: {sel:?}"
        );
    }
    let dfc = fixture("custom");
    let ds = daemonset_of(&desired_objects(&ctx_of(&dfc)).expect("build"));
    let sel = ds.spec.template.spec.and_then(|p| p.node_selector);
    assert_eq!(
        sel,
        Some(BTreeMap::from([
            (LABEL_OS.to_string(), "linux".to_string()),
            ("pool".to_string(), "gpu".to_string())
        ]))
    );
}

#[test]
fn dfdaemon_restores_containerd_config_when_it_stops() {
    let dfc = fixture("default");
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    let cm = objects
        .iter()
        .find(|d| d.resource.kind == "ConfigMap" && d.name() == "dragonfly-dfdaemon")
        .expect("dfdaemon ConfigMap");
    let text = cm.object.data["data"][config::DFDAEMON_FILE]
        .as_str()
        .expect("config text");
    let settings: serde_json::Value = serde_yaml::from_str(text).expect("yaml");
    assert_eq!(settings["containerd"]["restore_on_stop"], true, "{text}");
    let seed = objects
        .iter()
        .find(|d| d.resource.kind == "ConfigMap" && d.name() == "dragonfly-seed-peer")
        .expect("seed ConfigMap");
    assert!(!seed.object.data["data"][config::DFDAEMON_FILE]
        .as_str()
        .unwrap_or_default()
        .contains("containerd"));
    // The daemon only touches containerd (and so only restores) with --containerd.
    let ds = daemonset_of(&objects);
    let pod = ds.spec.template.spec.expect("pod");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(args.contains(&"--containerd".to_string()), "{args:?}");
    // Enough time to restore before SIGKILL.
    assert!(pod.termination_grace_period_seconds.unwrap_or(30) >= 30);
}

#[test]
fn unset_image_follows_the_operator_and_a_set_one_is_kept() {
    let images = DefaultImage::from_values(
        Some("mirror.example.com/dragonfly".into()),
        Some("9.9.9".into()),
    );
    let images_of = |dfc: &DragonflyCluster| -> BTreeSet<String> {
        let ctx = Ctx::new(dfc, &images).expect("ctx");
        let mut objects = desired_objects(&ctx).expect("build");
        objects.push(Desired::of(&cleanup_daemonset(&ctx)).expect("cleanup"));
        pod_specs(&objects)
            .into_iter()
            .flat_map(|(_, p, _)| {
                p.init_containers
                    .into_iter()
                    .flatten()
                    .chain(p.containers)
                    .filter_map(|c| c.image)
            })
            .collect()
    };
    assert_eq!(
        images_of(&fixture("default")),
        BTreeSet::from(["mirror.example.com/dragonfly:9.9.9".to_string()])
    );
    assert_eq!(
        images_of(&fixture("custom")),
        BTreeSet::from(["registry.example.com/dragonfly:v9".to_string()])
    );
    let mut only_repo = fixture("default");
    only_repo.spec.image.repository = Some("r.example.com/df".into());
    assert_eq!(
        images_of(&only_repo),
        BTreeSet::from(["r.example.com/df:9.9.9".to_string()])
    );
}

#[test]
fn with_tls_every_member_gets_its_identity_from_the_issuer() {
    let dfc = fixture("default");
    let plan = TlsPlan {
        issuer_url: "https://dragonfly-operator.dragonfly-system.svc:8443".into(),
        ca_bundle: "-----BEGIN CERTIFICATE-----\n".into(),
    };
    let ctx = ctx_of(&dfc).with_tls(Some(plan.clone()));
    let objects = desired_objects(&ctx).expect("build");
    let ca = objects
        .iter()
        .find(|d| d.resource.kind == "ConfigMap" && d.name() == ca_configmap_name(&ctx))
        .expect("the CA bundle ConfigMap");
    assert_eq!(ca.object.data["data"]["ca.crt"], plan.ca_bundle.as_str());
    let specs = pod_specs(&objects);
    assert_eq!(specs.len(), 3, "scheduler, seed peer, dfdaemon");
    for (id, pod, _) in specs {
        let args = pod.containers[0].args.clone().unwrap_or_default();
        let flag = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        assert_eq!(flag("--tls-dir").as_deref(), Some(TLS_DIR), "{id}");
        assert_eq!(
            flag("--tls-bootstrap"),
            Some(plan.issuer_url.clone()),
            "{id}"
        );
        let volumes = pod.volumes.clone().unwrap_or_default();
        let token = volumes
            .iter()
            .find_map(|v| v.projected.as_ref())
            .and_then(|p| p.sources.as_ref())
            .and_then(|s| s.first())
            .and_then(|s| s.service_account_token.as_ref())
            .expect("a projected token");
        assert_eq!(token.audience.as_deref(), Some("dragonfly"), "{id}");
        let identity_dir = volumes
            .iter()
            .find(|v| v.name == "cluster-identity")
            .and_then(|v| v.empty_dir.as_ref())
            .expect("an emptyDir for the key");
        assert_eq!(identity_dir.medium.as_deref(), Some("Memory"), "{id}");
    }
    // Without a plan nothing changes (the goldens above).
    let plain = desired_objects(&ctx_of(&dfc)).expect("build");
    assert!(pod_specs(&plain)
        .iter()
        .all(|(_, pod, _)| !pod.containers[0]
            .args
            .clone()
            .unwrap_or_default()
            .contains(&"--tls-dir".to_string())));
}

/// Who may reach which port of each component, as the NetworkPolicies say:
/// `(port, sources)`, a source being `pods:<labels>` or `operator:<ns>`,
/// `anyone` for a rule without `from`.
fn policy_rules(objects: &[Desired], name: &str) -> Vec<(i32, Vec<String>)> {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let d = objects
        .iter()
        .find(|d| d.resource.kind == "NetworkPolicy" && d.name() == name)
        .unwrap_or_else(|| panic!("NetworkPolicy {name}"));
    let policy: NetworkPolicy =
        serde_json::from_value(serde_json::to_value(&d.object).expect("json")).expect("policy");
    let spec = policy.spec.expect("spec");
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let mut out = Vec::new();
    for rule in spec.ingress.unwrap_or_default() {
        let sources: Vec<String> = match &rule.from {
            None => vec!["anyone".into()],
            Some(from) => from
                .iter()
                .map(|peer| {
                    let labels = |sel: &Option<
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                    >| {
                        sel.as_ref()
                            .and_then(|s| s.match_labels.clone())
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    match &peer.namespace_selector {
                        Some(_) => format!(
                            "operator:{}:{}",
                            labels(&peer.namespace_selector),
                            labels(&peer.pod_selector)
                        ),
                        None => format!("pods:{}", labels(&peer.pod_selector)),
                    }
                })
                .collect(),
        };
        for port in rule.ports.unwrap_or_default() {
            match port.port {
                Some(IntOrString::Int(p)) => out.push((p, sources.clone())),
                other => panic!("{name}: port {other:?}"),
            }
        }
    }
    out.sort();
    out
}

#[test]
fn network_policies_open_each_port_to_who_needs_it_only() {
    let dfc = fixture("default");
    let ctx = ctx_of(&dfc).with_operator_namespace(Some("ops".into()));
    let objects = desired_objects(&ctx).expect("build");
    let members =
        "pods:app.kubernetes.io/instance=dragonfly,app.kubernetes.io/name=dragonfly".to_string();
    let operator =
        "operator:kubernetes.io/metadata.name=ops:app.kubernetes.io/name=dragonfly-operator"
            .to_string();
    let anyone = "anyone".to_string();
    let spec = &dfc.spec;
    let mut scheduler = vec![
        (spec.scheduler.port, vec![members.clone()]),
        (spec.scheduler.admin_port, vec![anyone.clone()]),
    ];
    scheduler.sort();
    assert_eq!(policy_rules(&objects, "dragonfly-scheduler"), scheduler);
    let d = &spec.dfdaemon;
    let mut seed = vec![
        (d.peer_port, vec![members.clone(), operator.clone()]),
        // The mirror: the operator (preheat) only; containerd comes from the
        // pod's own node, which a NetworkPolicy cannot block.
        (d.proxy_port, vec![operator.clone()]),
        (d.admin_port, vec![anyone.clone()]),
    ];
    seed.sort();
    assert_eq!(policy_rules(&objects, "dragonfly-seed-peer"), seed);
    // Nodes dial each other at node addresses, which CNIs may masquerade:
    // the peer port is left to mutual TLS.
    let mut node = vec![
        (d.peer_port, vec![anyone.clone()]),
        (d.proxy_port, vec![operator.clone()]),
        (d.admin_port, vec![anyone.clone()]),
    ];
    node.sort();
    assert_eq!(policy_rules(&objects, "dragonfly-dfdaemon"), node);
    // Each policy selects its own component's pods only.
    for d in objects
        .iter()
        .filter(|d| d.resource.kind == "NetworkPolicy")
    {
        let selector = d.object.data["spec"]["podSelector"]["matchLabels"].clone();
        let component = d.name().trim_start_matches("dragonfly-").to_string();
        assert_eq!(selector["app.kubernetes.io/component"], component.as_str());
        assert_eq!(selector["app.kubernetes.io/instance"], "dragonfly");
    }
    // Not knowing its namespace, the operator is matched in any namespace.
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    let rules = policy_rules(&objects, "dragonfly-dfdaemon");
    assert!(rules.iter().any(|(port, from)| *port == d.proxy_port
        && from == &vec!["operator::app.kubernetes.io/name=dragonfly-operator".to_string()]));
    // Host-network dfdaemons call from node addresses: the member-only
    // ports open up rather than cut the swarm off; the mirror stays closed.
    let mut host = fixture("default");
    host.spec.dfdaemon.host_network = true;
    let objects = desired_objects(&ctx_of(&host)).expect("build");
    let rules = policy_rules(&objects, "dragonfly-scheduler");
    assert!(rules.contains(&(host.spec.scheduler.port, vec![anyone.clone()])));
    let rules = policy_rules(&objects, "dragonfly-seed-peer");
    assert!(rules.contains(&(d.peer_port, vec![anyone.clone()])));
    assert!(!rules
        .iter()
        .any(|(port, from)| *port == d.proxy_port && from.contains(&anyone)));
}

fn all_containers(pod: &PodSpec) -> Vec<&k8s_openapi::api::core::v1::Container> {
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
        .collect()
}

#[test]
fn every_container_is_locked_down() {
    for (id, pod, _) in all_workloads() {
        let pod_sc = pod.security_context.clone().unwrap_or_default();
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault"),
            "{id}"
        );
        let node_agent = id.contains("DaemonSet/");
        for c in all_containers(&pod) {
            let at = format!("{id} {}", c.name);
            let sc = c.security_context.clone().expect(&at);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{at}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{at}");
            assert_eq!(sc.privileged, None, "{at}");
            let caps = sc.capabilities.clone().expect(&at);
            assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{at}");
            assert_eq!(caps.add, None, "{at}: no capability added back");
            assert_eq!(
                sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                Some("RuntimeDefault"),
                "{at}"
            );
            let user = sc.run_as_user.or(pod_sc.run_as_user);
            if node_agent && c.name != "done" {
                // Root without capabilities: the owner of containerd's files.
                assert_eq!(user, Some(0), "{at}");
            } else {
                assert_eq!(user, Some(pod::NON_ROOT_ID), "{at}");
                assert_eq!(
                    sc.run_as_non_root.or(pod_sc.run_as_non_root),
                    Some(true),
                    "{at}"
                );
            }
        }
        if !node_agent {
            assert_eq!(pod_sc.fs_group, Some(pod::NON_ROOT_ID), "{id}");
        }
        // Long-running containers get a writable /tmp on their read-only root.
        if !id.contains("cleanup") {
            let tmp = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == "tmp")
                .expect(&id);
            assert!(tmp.empty_dir.is_some(), "{id}");
            for c in &pod.containers {
                assert!(
                    c.volume_mounts
                        .iter()
                        .flatten()
                        .any(|m| m.name == "tmp" && m.mount_path == "/tmp"),
                    "{id} {}",
                    c.name
                );
            }
        }
    }
}

#[test]
fn unset_resources_get_measured_defaults_without_a_cpu_limit() {
    for (id, pod, _) in all_workloads() {
        for c in all_containers(&pod) {
            let r = c.resources.clone().unwrap_or_default();
            let at = format!("{id} {}", c.name);
            if id.starts_with("custom: Deployment/") {
                // The fixture's own resources are kept as given.
                assert_eq!(
                    r.requests
                        .as_ref()
                        .and_then(|q| q.get("memory"))
                        .map(|q| q.0.as_str()),
                    Some("128Mi"),
                    "{at}"
                );
                assert_eq!(r.limits, None, "{at}");
                continue;
            }
            if id.starts_with("custom: DaemonSet/edge-dfdaemon") {
                assert_eq!(
                    r.limits
                        .as_ref()
                        .and_then(|q| q.get("memory"))
                        .map(|q| q.0.as_str()),
                    Some("2Gi"),
                    "{at}"
                );
                continue;
            }
            let requests = r.requests.clone().expect(&at);
            assert!(
                requests.contains_key("cpu") && requests.contains_key("memory"),
                "{at}"
            );
            let limits = r.limits.clone().expect(&at);
            assert!(limits.contains_key("memory"), "{at}");
            assert!(!limits.contains_key("cpu"), "{at}: no CPU limit by default");
        }
    }
}

#[test]
fn disruption_budgets_guard_replicated_components_only() {
    let kinds = |dfc: &DragonflyCluster| -> Vec<(String, serde_json::Value)> {
        desired_objects(&ctx_of(dfc))
            .expect("build")
            .into_iter()
            .filter(|d| d.resource.kind == "PodDisruptionBudget")
            .map(|d| {
                let v = serde_json::to_value(&d.object).expect("json");
                (d.name(), v["spec"].clone())
            })
            .collect()
    };
    let mut dfc = fixture("default");
    let pdbs = kinds(&dfc);
    assert_eq!(pdbs.len(), 2, "{pdbs:?}");
    let (name, spec) = &pdbs[0];
    assert_eq!(name, "dragonfly-scheduler");
    assert_eq!(spec["maxUnavailable"], 1);
    assert_eq!(
        spec["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "scheduler"
    );
    assert_eq!(
        pdbs[1].1["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "seed-peer"
    );
    // One replica: a budget would block every drain of its node.
    dfc.spec.scheduler.replicas = 1;
    dfc.spec.seed_peer.pod_disruption_budget.enabled = false;
    assert!(kinds(&dfc).is_empty());
    // Seed peers off: no budget for them either.
    let dfc = fixture("pod-settings");
    let pdbs = kinds(&dfc);
    assert_eq!(pdbs.len(), 1, "{pdbs:?}");
    assert_eq!(pdbs[0].1["maxUnavailable"], "34%");
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    let pdb = objects
        .iter()
        .find(|d| d.resource.kind == "PodDisruptionBudget")
        .expect("pdb");
    assert_eq!(pdb.resource.api_version, "policy/v1");
    assert_eq!(
        pdb.object.owner_references().len(),
        1,
        "owned like the rest"
    );
    assert!(managed_kinds()
        .iter()
        .any(|k| k.kind == "PodDisruptionBudget" && k.group == "policy"));
}

#[test]
fn a_digest_pins_every_data_plane_image() {
    let dfc = fixture("pod-settings");
    let ctx = ctx_of(&dfc);
    let mut objects = desired_objects(&ctx).expect("build");
    objects.push(Desired::of(&cleanup_daemonset(&ctx)).expect("cleanup"));
    let want = "registry.example.com/dragonfly@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let specs = pod_specs(&objects);
    assert_eq!(specs.len(), 4);
    for (id, pod, _) in specs {
        for c in all_containers(&pod) {
            assert_eq!(c.image.as_deref(), Some(want), "{id} {}", c.name);
        }
    }
    // The operator's default digest pins its default tag only.
    let defaults = DefaultImage::builtin().with_digest(Some(
        "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210".into(),
    ));
    let mut image = crate::crd::ImageSpec::default();
    assert_eq!(
        image.reference(&defaults),
        "dragonfly-p2p/dragonfly@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
    );
    image.tag = Some("v2".into());
    assert_eq!(image.reference(&defaults), "dragonfly-p2p/dragonfly:v2");
    assert_eq!(
        DefaultImage::builtin()
            .with_digest(Some("latest".into()))
            .digest,
        None,
        "a malformed default digest is ignored"
    );
}

#[test]
fn daemonset_update_strategy_follows_the_spec() {
    let strategy = |dfc: &DragonflyCluster| {
        daemonset_of(&desired_objects(&ctx_of(dfc)).expect("build"))
            .spec
            .update_strategy
            .expect("strategy")
    };
    let mut dfc = fixture("default");
    let u = strategy(&dfc);
    assert_eq!(u.type_.as_deref(), Some("RollingUpdate"));
    let r = u.rolling_update.expect("rolling");
    assert_eq!(r.max_unavailable, Some(IntOrString::String("10%".into())));
    assert_eq!(r.max_surge, Some(IntOrString::Int(0)));
    dfc.spec.dfdaemon.update_strategy.max_unavailable = IntOrString::Int(3);
    let r = strategy(&dfc).rolling_update.expect("rolling");
    assert_eq!(r.max_unavailable, Some(IntOrString::Int(3)));
    let u = strategy(&fixture("pod-settings"));
    assert_eq!(u.type_.as_deref(), Some("OnDelete"));
    assert_eq!(u.rolling_update, None);
}

#[test]
fn pod_settings_reach_every_component_and_operator_keys_win() {
    let mut dfc = fixture("pod-settings");
    // Past validation (which refuses these), the operator's keys still win.
    dfc.spec
        .dfdaemon
        .pod
        .pod_labels
        .insert(LABEL_COMPONENT.into(), "hijacked".into());
    dfc.spec
        .dfdaemon
        .pod
        .pod_annotations
        .insert(CONFIG_HASH.into(), "forged".into());
    let objects = desired_objects(&ctx_of(&dfc)).expect("build");
    let templates: Vec<(String, serde_json::Value)> = objects
        .iter()
        .filter(|d| ["Deployment", "StatefulSet", "DaemonSet"].contains(&d.resource.kind.as_str()))
        .map(|d| {
            let v = serde_json::to_value(&d.object).expect("json");
            (d.name(), v["spec"]["template"].clone())
        })
        .collect();
    assert_eq!(templates.len(), 3);
    for (name, t) in &templates {
        assert_eq!(t["metadata"]["labels"]["team"], "platform", "{name}");
        assert_eq!(
            t["metadata"]["labels"]["app.kubernetes.io/name"],
            "dragonfly"
        );
        let env = t["spec"]["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let proxy = env.iter().find(|e| e["name"] == "HTTPS_PROXY").expect(name);
        assert!(proxy.get("value").is_some() || proxy.get("valueFrom").is_some());
    }
    let by = |n: &str| {
        &templates
            .iter()
            .find(|(name, _)| name.ends_with(n))
            .expect(n)
            .1
    };
    let sched = by("-scheduler");
    assert_eq!(
        sched["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert!(sched["metadata"]["annotations"][CONFIG_HASH].is_string());
    assert_eq!(
        sched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]["key"],
        "node-pool"
    );
    assert!(
        sched["spec"]["affinity"].get("podAntiAffinity").is_none(),
        "replaced, not merged"
    );
    assert_eq!(
        sched["spec"]["priorityClassName"],
        "system-cluster-critical"
    );
    let env = sched["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(env.iter().any(|e| e["name"] == "NO_PROXY"));
    let seed = by("-seed-peer");
    assert!(seed["spec"].get("affinity").is_none());
    let daemon = by("-dfdaemon");
    assert_eq!(daemon["metadata"]["labels"][LABEL_COMPONENT], "dfdaemon");
    assert_ne!(daemon["metadata"]["annotations"][CONFIG_HASH], "forged");
    assert_eq!(
        daemon["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    // The operator's own env comes first and is not shadowed.
    let env = daemon["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(env[0]["name"], "DFDAEMON_ADVERTISE_IP");
    // The restore runs where dfdaemon ran, labelled alike, without its env.
    let cleanup = serde_json::to_value(cleanup_daemonset(&ctx_of(&dfc))).expect("json");
    let t = &cleanup["spec"]["template"];
    assert_eq!(t["metadata"]["labels"]["team"], "platform");
    assert_eq!(t["metadata"]["labels"][LABEL_COMPONENT], "cleanup");
    assert_eq!(t["spec"]["affinity"], daemon["spec"]["affinity"]);
    assert!(!t.to_string().contains("HTTPS_PROXY"));
    // Defaults (default fixture): the scheduler keeps its spread preference.
    let plain = fixture("default");
    let objects = desired_objects(&ctx_of(&plain)).expect("build");
    let dep = objects
        .iter()
        .find(|d| d.resource.kind == "Deployment")
        .expect("dep");
    let v = serde_json::to_value(&dep.object).expect("json");
    assert!(v["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
}

#[test]
fn seed_peers_without_storage_cache_in_a_bounded_emptydir() {
    let dfc = fixture("default");
    let ctx = ctx_of(&dfc).with_seed_storage(SeedStorage::Ephemeral);
    let objects = desired_objects(&ctx).expect("build");
    let specs = pod_specs(&objects);
    let (_, pod, claims) = specs
        .iter()
        .find(|(id, _, _)| id.starts_with("StatefulSet/"))
        .expect("the seed peers");
    assert!(claims.is_empty(), "no claim template: {claims:?}");
    let data = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "data")
        .and_then(|v| v.empty_dir.as_ref())
        .expect("data is an emptyDir");
    // The volume size the spec asks for (above cacheSize, as for a claim).
    assert_eq!(
        data.size_limit.as_ref().map(|q| q.0.as_str()),
        Some(dfc.spec.seed_peer.storage.size.as_str())
    );
    let mounted = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == "data" && m.mount_path == seed_peer::DATA_MOUNT);
    assert!(mounted);
    // Everything else is what the claims variant builds.
    let with_claims = desired_objects(&ctx_of(&dfc)).expect("build");
    let names = |o: &[Desired]| o.iter().map(|d| d.name()).collect::<Vec<_>>();
    assert_eq!(names(&objects), names(&with_claims));
}
