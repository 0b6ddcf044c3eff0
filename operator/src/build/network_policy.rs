//! NetworkPolicies: each component's ports open only to who needs them,
//! as far as a NetworkPolicy can tell callers apart.
//!
//! - The mirror (65001) is plain HTTP: open to the operator (Preheat) only.
//!   containerd reaches it on its own node, which a NetworkPolicy always
//!   allows.
//! - The peer port and the scheduler's gRPC speak mutual TLS, which is what
//!   guards them. The policy narrows them to this cluster's pods (and the
//!   operator) only where every legitimate caller is seen with its pod
//!   address: dfdaemons dial each other at node addresses (hostPort), which
//!   many CNIs masquerade to the calling node's address, and a host-network
//!   dfdaemon has no pod address at all, so there a pod selector would cut
//!   the swarm off and the port stays open to the network.
//! - Health and metrics stay open to probes and scrapers.
//!
//! A CNI without NetworkPolicy support ignores these; mutual TLS still
//! guards the gRPC and peer ports.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, Ctx, LABEL_INSTANCE, LABEL_NAME};

/// The label the operator's own pods carry (manifests and chart).
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "dragonfly-operator");
/// Set by the API server on every namespace.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub fn network_policy(ctx: &Ctx, c: Component) -> NetworkPolicy {
    let spec = &ctx.dfc.spec;
    let d = &spec.dfdaemon;
    // Where dfdaemons call from: their pod addresses, or node addresses.
    let members = || (!d.host_network).then(|| vec![cluster_pods(ctx)]);
    let members_and_operator =
        || (!d.host_network).then(|| vec![cluster_pods(ctx), operator_pods(ctx)]);
    let rules = match c {
        Component::Scheduler => vec![
            rule(&[spec.scheduler.port], members()),
            rule(&[spec.scheduler.admin_port], None),
        ],
        // Seeds are dialled at their pod address.
        Component::SeedPeer => vec![
            rule(&[d.peer_port], members_and_operator()),
            rule(&[d.proxy_port], Some(vec![operator_pods(ctx)])),
            rule(&[d.admin_port], None),
        ],
        // Nodes at their node address: mutual TLS alone tells callers apart.
        Component::Dfdaemon => vec![
            rule(&[d.peer_port], None),
            rule(&[d.proxy_port], Some(vec![operator_pods(ctx)])),
            rule(&[d.admin_port], None),
        ],
        Component::Cleanup => Vec::new(),
    };
    NetworkPolicy {
        metadata: ctx.meta(c, ctx.object_name(c)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(c)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// `from: None` is anyone.
fn rule(ports: &[i32], from: Option<Vec<NetworkPolicyPeer>>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        ports: Some(
            ports
                .iter()
                .map(|p| NetworkPolicyPort {
                    port: Some(IntOrString::Int(*p)),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                })
                .collect(),
        ),
        from,
    }
}

/// Every pod of this DragonflyCluster, in its namespace.
fn cluster_pods(ctx: &Ctx) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                (LABEL_NAME.to_string(), "dragonfly".to_string()),
                (LABEL_INSTANCE.to_string(), ctx.name.clone()),
            ])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's pods, in the operator's namespace (any namespace when
/// the operator does not know its own, e.g. run outside the cluster).
fn operator_pods(ctx: &Ctx) -> NetworkPolicyPeer {
    let namespaces = LabelSelector {
        match_labels: ctx
            .operator_namespace
            .as_ref()
            .map(|ns| BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns.clone())])),
        ..LabelSelector::default()
    };
    NetworkPolicyPeer {
        namespace_selector: Some(namespaces),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                OPERATOR_POD_LABEL.0.to_string(),
                OPERATOR_POD_LABEL.1.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}
