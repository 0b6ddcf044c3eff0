//! The plain install (`kubectl apply -f manifests/`), generated from the same
//! Rust types as the CRDs so the two never disagree. The Helm chart's static
//! parts (CRDs, RBAC rules) are checked against this output too.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Namespace, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceQuota, ResourceQuotaSpec, ResourceRequirements, ScopeSelector,
    ScopedResourceSelectorRequirement, SeccompProfile, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::build::pod::NON_ROOT_ID;
use crate::build::LABEL_OS;
use crate::crd::{
    DefaultImage, DragonflyCluster, DragonflyClusterSpec, IMAGE_DIGEST_ENV, IMAGE_REPOSITORY_ENV,
    IMAGE_TAG_ENV,
};

pub const NAMESPACE: &str = "dragonfly-system";
const NAME: &str = "dragonfly-operator";

/// The priority classes that providers restrict to kube-system unless a
/// ResourceQuota scoped to them exists in the namespace: dfdaemon (and its
/// cleanup) run as `system-node-critical`; `system-cluster-critical` is
/// offered for the operator and the control-plane components.
pub const CRITICAL_PRIORITY_CLASSES: [&str; 2] =
    ["system-node-critical", "system-cluster-critical"];

pub struct Options {
    pub namespace: String,
    pub image: String,
    /// The data-plane image an unset `spec.image` means, passed to the
    /// operator as env, so upgrading the operator upgrades the data plane.
    pub data_plane: DefaultImage,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: NAMESPACE.into(),
            image: format!(
                "dragonfly-p2p/dragonfly-operator:{}",
                env!("CARGO_PKG_VERSION")
            ),
            data_plane: DefaultImage::builtin(),
        }
    }
}

/// `(file name, YAML)` pairs; files sort in apply order.
pub fn render(opts: &Options) -> anyhow::Result<Vec<(String, String)>> {
    Ok(vec![
        (
            "00-namespace.yaml".into(),
            docs(&[yaml(&namespace(opts))?, yaml(&critical_pods_quota(opts))?]),
        ),
        ("01-crds.yaml".into(), crate::crdgen::crds_yaml()?),
        (
            "02-rbac.yaml".into(),
            docs(&[
                yaml(&service_account(opts))?,
                yaml(&cluster_role())?,
                yaml(&cluster_role_binding(opts))?,
                yaml(&lease_role(opts))?,
                yaml(&lease_role_binding(opts))?,
                yaml(&node_agent_policy()?)?,
                yaml(&node_agent_policy_binding()?)?,
            ]),
        ),
        (
            "03-operator.yaml".into(),
            docs(&[
                yaml(&deployment(opts))?,
                yaml(&metrics_service(opts))?,
                yaml(&issuer_service(opts))?,
            ]),
        ),
        (
            "04-dragonflycluster.yaml".into(),
            docs(&[yaml(&sample(opts))?]),
        ),
    ])
}

fn docs(parts: &[String]) -> String {
    parts.iter().map(|p| format!("---\n{p}")).collect()
}

fn yaml<T: Serialize + kube::Resource<DynamicType = ()>>(obj: &T) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(obj)?;
    v["apiVersion"] = T::api_version(&()).into();
    v["kind"] = T::kind(&()).into();
    // apiVersion and kind first, as people write them.
    let mut ordered = serde_json::Map::new();
    for k in ["apiVersion", "kind", "metadata"] {
        if let Some(x) = v.get(k) {
            ordered.insert(k.into(), x.clone());
        }
    }
    if let Some(m) = v.as_object() {
        for (k, x) in m {
            ordered.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    Ok(serde_yaml::to_string(&ordered)?)
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), NAME.to_string()),
        (
            "app.kubernetes.io/part-of".to_string(),
            "dragonfly".to_string(),
        ),
    ])
}

fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(String::from),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

/// dfdaemon needs hostPath and hostPort, which only the `privileged` Pod
/// Security level allows; the operator itself runs restricted anyway.
fn namespace(o: &Options) -> Namespace {
    let mut m = meta(&o.namespace, None);
    if let Some(l) = m.labels.as_mut() {
        for mode in ["enforce", "audit", "warn"] {
            l.insert(
                format!("pod-security.kubernetes.io/{mode}"),
                "privileged".into(),
            );
        }
    }
    Namespace {
        metadata: m,
        ..Namespace::default()
    }
}

/// Some providers (GKE among them) admit pods of a `system-*-critical`
/// priority class outside kube-system only where a ResourceQuota scoped to
/// that class exists; without it every dfdaemon pod is refused. The limit is
/// just a ceiling no fleet reaches (two pods per node at most: dfdaemon and
/// its cleanup).
pub fn critical_pods_quota(o: &Options) -> ResourceQuota {
    ResourceQuota {
        metadata: meta("dragonfly-critical-pods", Some(&o.namespace)),
        spec: Some(ResourceQuotaSpec {
            hard: Some(BTreeMap::from([(
                "pods".to_string(),
                Quantity("1M".into()),
            )])),
            scope_selector: Some(ScopeSelector {
                match_expressions: Some(vec![ScopedResourceSelectorRequirement {
                    scope_name: "PriorityClass".into(),
                    operator: "In".into(),
                    values: Some(
                        CRITICAL_PRIORITY_CLASSES
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                    ),
                }]),
            }),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

fn service_account(o: &Options) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(NAME, Some(&o.namespace)),
        ..ServiceAccount::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// Exactly what reconcile and cleanup call, nothing more.
pub fn operator_rules() -> Vec<PolicyRule> {
    const MANAGE: &[&str] = &[
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    vec![
        // `delete` is for the chart's pre-delete hook (`dragonfly-operator uninstall`).
        rule(
            &["p2p.dragonfly.dev"],
            &["dragonflyclusters"],
            &["get", "list", "watch", "patch", "update", "delete"],
        ),
        rule(
            &["p2p.dragonfly.dev"],
            &["dragonflyclusters/status"],
            &["get", "patch", "update"],
        ),
        // Needed to set blockOwnerDeletion on owned objects.
        rule(
            &["p2p.dragonfly.dev"],
            &["dragonflyclusters/finalizers"],
            &["update"],
        ),
        // Preheat: `delete` for ttlSecondsAfterFinished.
        rule(
            &["p2p.dragonfly.dev"],
            &["preheats"],
            &["get", "list", "watch", "patch", "update", "delete"],
        ),
        rule(
            &["p2p.dragonfly.dev"],
            &["preheats/status"],
            &["get", "patch", "update"],
        ),
        // Preheat pull secrets (`kubernetes.io/dockerconfigjson`), read by name only.
        rule(&[""], &["secrets"], &["get"]),
        // Preheat: the nodes' platforms and `scope: NodeSelector`.
        rule(&[""], &["nodes"], &["get", "list"]),
        rule(
            &["apps"],
            &["deployments", "statefulsets", "daemonsets"],
            MANAGE,
        ),
        rule(
            &[""],
            &["services", "configmaps", "serviceaccounts"],
            MANAGE,
        ),
        rule(&["networking.k8s.io"], &["networkpolicies"], MANAGE),
        rule(&["policy"], &["poddisruptionbudgets"], MANAGE),
        rule(
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
            MANAGE,
        ),
        // Read node reports; `get`/`patch` also let it grant dfdaemon's Role (no escalation).
        rule(&[""], &["pods"], &["get", "list", "watch", "patch"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        // Cleanup: a terminating namespace cannot get the cleanup DaemonSet.
        rule(&[""], &["namespaces"], &["get"]),
        // The issuer: which pod and node a member's token belongs to.
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
    ]
}

/// The name of the admission policy that keeps each node agent to its own
/// pod (cluster-scoped, shared by every install).
pub const NODE_AGENT_POLICY: &str = "dragonfly-node-agent-own-pod";

/// RBAC lets the node agent patch pods in its namespace (it reports the
/// node's integration state on its own pod), and cannot say "its own". This
/// policy can: a request from a `*-dfdaemon` service account may change
/// only the pod its token was issued for (the `pod-name` the API server
/// puts in bound service-account tokens), and never a pod's labels (which
/// select Services and owners). A compromised node agent then cannot touch
/// the operator's pod or any other.
pub fn node_agent_policy() -> anyhow::Result<ValidatingAdmissionPolicy> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": NODE_AGENT_POLICY, "labels": labels()},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["UPDATE"],
                "resources": ["pods"],
            }]},
            "matchConditions": [{
                "name": "node-agent-service-account",
                "expression": "request.userInfo.username.startsWith('system:serviceaccount:') && request.userInfo.username.endsWith('-dfdaemon')",
            }],
            "validations": [
                {
                    "expression": "has(request.userInfo.extra) && 'authentication.kubernetes.io/pod-name' in request.userInfo.extra && request.userInfo.extra['authentication.kubernetes.io/pod-name'].exists(p, p == object.metadata.name)",
                    "message": "a node agent may change its own pod only",
                },
                {
                    "expression": "has(object.metadata.labels) == has(oldObject.metadata.labels) && (!has(object.metadata.labels) || object.metadata.labels == oldObject.metadata.labels)",
                    "message": "a node agent may not change pod labels",
                },
            ],
        },
    }))?)
}

pub fn node_agent_policy_binding() -> anyhow::Result<ValidatingAdmissionPolicyBinding> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": NODE_AGENT_POLICY, "labels": labels()},
        "spec": {"policyName": NODE_AGENT_POLICY, "validationActions": ["Deny"]},
    }))?)
}

fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(operator_rules()),
        ..ClusterRole::default()
    }
}

fn subject(o: &Options) -> Vec<Subject> {
    vec![Subject {
        kind: "ServiceAccount".into(),
        name: NAME.into(),
        namespace: Some(o.namespace.clone()),
        ..Subject::default()
    }]
}

fn cluster_role_binding(o: &Options) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(NAME, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: NAME.into(),
        },
        subjects: Some(subject(o)),
    }
}

/// Leader election needs leases only in the operator's own namespace.
/// The leader Lease and the cluster CA Secret, both in the operator's
/// namespace.
fn lease_role(o: &Options) -> Role {
    Role {
        metadata: meta(&format!("{NAME}-leader-election"), Some(&o.namespace)),
        rules: Some(vec![
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "list", "watch", "create", "update", "patch"],
            ),
            // The cluster CA Secret, in the operator's own namespace only.
            rule(&[""], &["secrets"], &["get", "create", "update"]),
        ]),
    }
}

fn lease_role_binding(o: &Options) -> RoleBinding {
    RoleBinding {
        metadata: meta(&format!("{NAME}-leader-election"), Some(&o.namespace)),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: format!("{NAME}-leader-election"),
        },
        subjects: Some(subject(o)),
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..EnvVar::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn probe(path: &str) -> k8s_openapi::api::core::v1::Probe {
    k8s_openapi::api::core::v1::Probe {
        http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http-admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    }
}

fn deployment(o: &Options) -> Deployment {
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_string(), NAME.to_string())]);
    let container = Container {
        name: "operator".into(),
        image: Some(o.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["run".into()]),
        env: Some(vec![
            // The leader-election identity: unique per replica.
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            plain_env(IMAGE_REPOSITORY_ENV, &o.data_plane.repository),
            plain_env(IMAGE_TAG_ENV, &o.data_plane.tag),
            plain_env(
                IMAGE_DIGEST_ENV,
                o.data_plane.digest.as_deref().unwrap_or_default(),
            ),
            plain_env("RUST_LOG", "info"),
            plain_env(
                "OPERATOR_ISSUER_URL",
                &format!(
                    "https://{NAME}.{}.svc:{}",
                    o.namespace,
                    crate::issuer::ISSUER_PORT
                ),
            ),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http-admin".into()),
                container_port: 8000,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("issuer".into()),
                container_port: i32::from(crate::issuer::ISSUER_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("256Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        // The operator writes nothing to its filesystem.
        security_context: Some(crate::build::pod::restricted_container()),
        ..Container::default()
    };
    Deployment {
        metadata: meta(NAME, Some(&o.namespace)),
        spec: DeploymentSpec {
            // Two replicas: one leads, one waits on the Lease for a fast hand-over.
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.into()),
                    containers: vec![container],
                    node_selector: Some(BTreeMap::from([(
                        LABEL_OS.to_string(),
                        "linux".to_string(),
                    )])),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NON_ROOT_ID),
                        run_as_group: Some(NON_ROOT_ID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// Where member pods get their certificates (every replica issues).
fn issuer_service(o: &Options) -> Service {
    Service {
        metadata: meta(NAME, Some(&o.namespace)),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                NAME.to_string(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some("issuer".into()),
                port: i32::from(crate::issuer::ISSUER_PORT),
                target_port: Some(IntOrString::String("issuer".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn metrics_service(o: &Options) -> Service {
    Service {
        metadata: meta(&format!("{NAME}-metrics"), Some(&o.namespace)),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                NAME.to_string(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some("http-admin".into()),
                port: 8000,
                target_port: Some(IntOrString::String("http-admin".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The sample: defaults, mirroring docker.io.
fn sample(o: &Options) -> DragonflyCluster {
    let spec = DragonflyClusterSpec {
        registries: vec!["docker.io".into()],
        ..DragonflyClusterSpec::default()
    };
    let mut dfc = DragonflyCluster::new("dragonfly", spec);
    dfc.metadata.namespace = Some(o.namespace.clone());
    dfc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_file_with_the_namespace() {
        let files = render(&Options::default()).expect("render");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "00-namespace.yaml",
                "01-crds.yaml",
                "02-rbac.yaml",
                "03-operator.yaml",
                "04-dragonflycluster.yaml"
            ]
        );
        assert!(files[0]
            .1
            .contains("pod-security.kubernetes.io/enforce: privileged"));
        assert!(files[2]
            .1
            .starts_with("---\napiVersion: v1\nkind: ServiceAccount\n"));
        let sample: DragonflyCluster =
            serde_yaml::from_str(files[4].1.trim_start_matches("---\n")).expect("sample parses");
        assert!(crate::validate::validate(&sample.spec).is_empty());
        assert_eq!(
            sample.spec.image.tag, None,
            "the sample follows the operator"
        );
    }

    fn docs_of(text: &str) -> Vec<serde_json::Value> {
        text.split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).expect("yaml"))
            .collect()
    }

    #[test]
    fn operator_deployment_has_identity_image_env_and_runs_on_linux() {
        let opts = Options {
            data_plane: DefaultImage::from_values(None, Some("7.7.7".into())),
            ..Options::default()
        };
        let files = render(&opts).expect("render");
        let dep = docs_of(&files[3].1)
            .into_iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("Deployment");
        let pod = &dep["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
        let env = &pod["containers"][0]["env"];
        let var = |n: &str| {
            env.as_array()
                .and_then(|a| a.iter().find(|e| e["name"] == n).cloned())
                .unwrap_or_default()
        };
        assert_eq!(
            var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(var(IMAGE_TAG_ENV)["value"], "7.7.7");
        assert_eq!(
            var(IMAGE_REPOSITORY_ENV)["value"],
            "dragonfly-p2p/dragonfly"
        );
    }

    #[test]
    fn critical_priority_quota_ships_in_the_operator_namespace() {
        let opts = Options {
            namespace: "p2p".into(),
            ..Options::default()
        };
        let files = render(&opts).expect("render");
        let quota = docs_of(&files[0].1)
            .into_iter()
            .find(|d| d["kind"] == "ResourceQuota")
            .expect("ResourceQuota");
        assert_eq!(quota["metadata"]["namespace"], "p2p");
        let expr = &quota["spec"]["scopeSelector"]["matchExpressions"][0];
        assert_eq!(expr["scopeName"], "PriorityClass");
        assert_eq!(expr["operator"], "In");
        let values = expr["values"].as_array().cloned().unwrap_or_default();
        // The class the dfdaemon DaemonSet uses by default must be covered.
        let default_class = crate::crd::DfdaemonSpec::default().priority_class_name;
        assert!(
            values.iter().any(|v| *v == default_class.as_str()),
            "{values:?}"
        );
    }
}
