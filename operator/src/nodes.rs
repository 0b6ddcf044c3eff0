//! Per-node integration reports: the contract between dfdaemon and the operator.
//!
//! dfdaemon (the DaemonSet pod, not seed peers) patches one annotation on its
//! own Pod, found through the `POD_NAME`/`POD_NAMESPACE` env vars:
//!
//! ```text
//! p2p.dragonfly.dev/node-report: {"configured":true,"problems":[{"code":"NoConfigPath","message":"..."}]}
//! ```
//!
//! - `configured`: the mirror `hosts.toml` files are written and containerd will use them.
//! - `problems`: states that make containerd bypass the mirror (codes such as
//!   `NoConfigPath`, `TransferServiceBypass`, `LegacyRegistryMirrors`,
//!   `DiscardUnpackedLayers`, `ConfigUnreadable`); empty when there are none.
//!
//! It writes the annotation after each `containerd apply`/`check` (a JSON merge
//! patch on `pods/<own name>`; RBAC: `get`, `patch` on pods in its namespace).
//! A pod without the annotation counts as not yet reported. The operator
//! watches these pods, so a new report shows up in status within seconds.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use wire::node_report::{NodeReport, ANNOTATION};

use crate::crd::ProblemReport;

/// Caps that keep one misbehaving node from bloating the status object.
const MAX_PROBLEMS_PER_NODE: usize = 10;
const MAX_MESSAGE_CHARS: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// No report yet (dfdaemon starting, or not running on this node).
    Pending,
    /// The mirror's files are in place and nothing bypasses it, but
    /// containerd has not pulled through it yet.
    Configured,
    /// Configured, and containerd has pulled through the mirror: proof of
    /// use, not only of files.
    InUse,
    Problems(Vec<ProblemReport>),
}

/// The node a dfdaemon pod runs on and what it reported; pods not yet
/// scheduled are skipped. `runtime` is the node's containerRuntimeVersion:
/// problems that hold only on other containerd versions are dropped.
pub fn read_report(pod: &Pod, runtime: Option<&str>) -> Option<(String, NodeState)> {
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let state = match pod.annotations().get(ANNOTATION) {
        None => NodeState::Pending,
        Some(raw) => {
            match serde_json::from_str::<NodeReport>(raw).map(|r| r.for_runtime(runtime)) {
                Ok(r) if !r.problems.is_empty() => NodeState::Problems(
                    r.problems
                        .into_iter()
                        .take(MAX_PROBLEMS_PER_NODE)
                        .map(|p| ProblemReport {
                            code: truncate(&p.code, 64),
                            message: truncate(&p.message, MAX_MESSAGE_CHARS),
                        })
                        .collect(),
                ),
                Ok(r) if r.configured && r.last_mirrored_pull.is_some() => NodeState::InUse,
                Ok(r) if r.configured => NodeState::Configured,
                Ok(_) => NodeState::Pending,
                // A garbled report is itself a problem worth showing, never a reconcile error.
                Err(e) => NodeState::Problems(vec![ProblemReport {
                    code: "MalformedReport".into(),
                    message: truncate(
                        &format!("{ANNOTATION} is not valid JSON: {e}"),
                        MAX_MESSAGE_CHARS,
                    ),
                }]),
            }
        }
    };
    Some((node, state))
}

/// When this dfdaemon's container started and when its mirror last saw
/// containerd, for `bypass::bypassed`; None while it is not running.
pub fn mirror_view<'a>(pod: &Pod, node: &'a str) -> Option<crate::bypass::NodeView<'a>> {
    let started = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "dfdaemon")?
        .state
        .as_ref()?
        .running
        .as_ref()?
        .started_at
        .as_ref()?
        .0;
    let last_mirrored = pod
        .annotations()
        .get(ANNOTATION)
        .and_then(|raw| serde_json::from_str::<NodeReport>(raw).ok())
        .and_then(|r| r.last_mirrored_pull)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
    Some(crate::bypass::NodeView {
        node,
        since: started,
        last_mirrored,
    })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(node: Option<&str>, report: Option<&str>) -> Pod {
        let mut p = Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            ..Pod::default()
        };
        if let Some(r) = report {
            p.metadata.annotations =
                Some(BTreeMap::from([(ANNOTATION.to_string(), r.to_string())]));
        }
        p
    }

    fn read_report_any(pod: &Pod) -> Option<(String, NodeState)> {
        read_report(pod, None)
    }

    #[test]
    fn version_bound_problems_follow_the_node_and_pulls_prove_use() {
        let raw = r#"{"configured":true,"lastMirroredPull":"2026-12-07T18:00:00Z","problems":[{"code":"NoConfigPath","message":"m","runtimes":"<2.0"}]}"#;
        let p = pod(Some("n1"), Some(raw));
        assert!(matches!(
            read_report(&p, Some("containerd://1.6.20")),
            Some((_, NodeState::Problems(_)))
        ));
        assert_eq!(
            read_report(&p, Some("containerd://2.2.10")),
            Some(("n1".into(), NodeState::InUse))
        );
        // Unknown runtime: the problem stays.
        assert!(matches!(
            read_report(&p, None),
            Some((_, NodeState::Problems(_)))
        ));
    }

    #[test]
    fn reports_are_read_leniently() {
        assert_eq!(read_report_any(&pod(None, None)), None);
        assert_eq!(
            read_report_any(&pod(Some("n1"), None)),
            Some(("n1".into(), NodeState::Pending))
        );
        assert_eq!(
            read_report_any(&pod(Some("n1"), Some(r#"{"configured":true}"#))),
            Some(("n1".into(), NodeState::Configured))
        );
        let problems = read_report_any(&pod(
            Some("n2"),
            Some(
                r#"{"configured":false,"problems":[{"code":"NoConfigPath","message":"no config_path"}]}"#,
            ),
        ));
        assert_eq!(
            problems,
            Some((
                "n2".into(),
                NodeState::Problems(vec![ProblemReport {
                    code: "NoConfigPath".into(),
                    message: "no config_path".into()
                }])
            ))
        );
        match read_report_any(&pod(Some("n3"), Some("{not json"))) {
            Some((_, NodeState::Problems(p))) => assert_eq!(p[0].code, "MalformedReport"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
