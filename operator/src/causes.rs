//! Why a component is not ready, in one line, from what the cluster already
//! says: its controller's `FailedCreate` events, its claims, its pods'
//! conditions and container states. Pure (the controller lists, this
//! reads), so every cause is tested from fixtures shaped like the API
//! server's answers.
//!
//! Only named fields are read: pod and node names, images, reasons and
//! Kubernetes' own messages; never a pod's env or a pull secret, so no
//! secret reaches the status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Event, ObjectReference, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;

/// Bound on one component's line: the status stays small and `kubectl
/// describe` readable however many pods fail.
pub const MAX_LINE: usize = 300;
/// Bound on a quoted Kubernetes message inside the line.
const MAX_DETAIL: usize = 180;

/// The object that creates a component's pods, as events name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creator {
    /// A DaemonSet or StatefulSet: events name it directly.
    Named { kind: &'static str, name: String },
    /// A Deployment's ReplicaSets, `<deployment>-<pod-template-hash>`.
    ReplicaSetsOf(String),
}

impl Creator {
    fn matches(&self, r: &ObjectReference) -> bool {
        let (Some(kind), Some(name)) = (r.kind.as_deref(), r.name.as_deref()) else {
            return false;
        };
        match self {
            Creator::Named { kind: k, name: n } => kind == *k && name == n,
            // The hash has no dash: another Deployment whose name merely
            // starts with this one's (`x-scheduler-y-...`) is not matched.
            Creator::ReplicaSetsOf(d) => {
                kind == "ReplicaSet"
                    && name
                        .strip_prefix(d.as_str())
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|h| {
                            !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric())
                        })
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Creator::Named { kind, name } => format!("{kind} {name}"),
            Creator::ReplicaSetsOf(d) => format!("the ReplicaSet of Deployment {d}"),
        }
    }
}

/// What the controller gathered about one component that is not ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    pub creator: Creator,
    /// The component's pods.
    pub pods: Vec<Pod>,
    /// `FailedCreate` events about its creator, and events about its claims.
    pub events: Vec<Event>,
    /// Its PersistentVolumeClaims (seed peers only).
    pub claims: Vec<PersistentVolumeClaim>,
}

impl Evidence {
    pub fn new(creator: Creator) -> Self {
        Self {
            creator,
            pods: Vec::new(),
            events: Vec::new(),
            claims: Vec::new(),
        }
    }
}

/// A cause: a CamelCase condition reason and one bounded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub reason: &'static str,
    pub message: String,
}

/// The most fundamental cause first: pods that cannot be created, then
/// claims that cannot bind (the pods wait on them), then what the pods say.
/// `want` is the number of pods the component should have.
pub fn find(ev: &Evidence, want: i32) -> Option<Cause> {
    failed_create(ev, want)
        .or_else(|| claim_pending(ev))
        .or_else(|| pod_cause(&ev.pods))
        .map(|c| Cause {
            reason: c.reason,
            message: clip(&c.message, MAX_LINE),
        })
}

/// The creator's newest `FailedCreate`, while pods are missing (an old
/// event about a quota since raised is not a cause once every pod exists).
fn failed_create(ev: &Evidence, want: i32) -> Option<Cause> {
    let live = ev
        .pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    if i32::try_from(live).unwrap_or(i32::MAX) >= want {
        return None;
    }
    let e = ev
        .events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .filter(|e| ev.creator.matches(&e.involved_object))
        .max_by_key(|e| last_seen(e))?;
    let msg = one_line(e.message.as_deref().unwrap_or_default());
    let msg = msg.strip_prefix("Error creating: ").unwrap_or(&msg);
    let who = match &ev.creator {
        Creator::Named { .. } => ev.creator.describe(),
        Creator::ReplicaSetsOf(_) => format!(
            "ReplicaSet {}",
            e.involved_object.name.as_deref().unwrap_or_default()
        ),
    };
    Some(Cause {
        reason: "FailedCreate",
        message: format!("{who} cannot create pods: {}", clip(msg, MAX_DETAIL)),
    })
}

/// A Pending claim, with what the volume controller last said about it.
/// A claim waiting for its pod to be scheduled (`WaitForFirstConsumer`) is
/// not stuck: the pod's own state says why.
fn claim_pending(ev: &Evidence) -> Option<Cause> {
    let mut pending: Vec<(&str, String)> = Vec::new();
    for c in &ev.claims {
        let phase = c.status.as_ref().and_then(|s| s.phase.as_deref());
        let (Some("Pending"), Some(name)) = (phase, c.metadata.name.as_deref()) else {
            continue;
        };
        let latest = ev
            .events
            .iter()
            .filter(|e| {
                e.involved_object.kind.as_deref() == Some("PersistentVolumeClaim")
                    && e.involved_object.name.as_deref() == Some(name)
            })
            .max_by_key(|e| last_seen(e));
        if latest.is_some_and(|e| e.reason.as_deref() == Some("WaitForFirstConsumer")) {
            continue;
        }
        let class = c
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref());
        let detail = match (latest.and_then(|e| e.message.as_deref()), class) {
            (Some(m), _) => one_line(m),
            // Since Kubernetes 1.28 a default class is written into claims
            // without one, even retroactively: none means there is none.
            (None, None) => {
                "it names no StorageClass and the cluster has no default StorageClass".into()
            }
            (None, Some(c)) => format!("no volume of StorageClass {c:?} is available"),
        };
        pending.push((name, detail));
    }
    pending.sort();
    let (name, detail) = pending.first()?;
    Some(Cause {
        reason: "ClaimPending",
        message: format!(
            "claim {name}{} is Pending: {}",
            more(pending.len()),
            clip(detail, MAX_DETAIL)
        ),
    })
}

/// One pod-level cause: its rank (lower is more fundamental), reason, a
/// key that pods sharing the cause have in common, and the text.
struct PodCause {
    rank: u8,
    reason: &'static str,
    key: String,
    text: String,
}

/// The cause most pods share, among the most fundamental ones found.
fn pod_cause(pods: &[Pod]) -> Option<Cause> {
    // (rank, reason, key) -> (text, pods "name on node")
    let mut groups: BTreeMap<(u8, &'static str, String), (String, Vec<String>)> = BTreeMap::new();
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in sorted {
        if pod.metadata.deletion_timestamp.is_some() || is_ready(pod) {
            continue;
        }
        let Some(c) = cause_of(pod) else { continue };
        let g = groups
            .entry((c.rank, c.reason, c.key))
            .or_insert_with(|| (c.text, Vec::new()));
        g.1.push(where_(pod));
    }
    let best_rank = groups.keys().map(|k| k.0).min()?;
    let ((_, reason, _), (text, who)) = groups
        .into_iter()
        .filter(|(k, _)| k.0 == best_rank)
        // Most pods first; on a tie the first key (stable across reconciles).
        .fold(
            None::<((u8, &'static str, String), (String, Vec<String>))>,
            |best, g| match best {
                Some(b) if b.1 .1.len() >= g.1 .1.len() => Some(b),
                _ => Some(g),
            },
        )?;
    let first = who.first()?;
    Some(Cause {
        reason,
        message: format!("{first}{}: {text}", more(who.len())),
    })
}

fn cause_of(pod: &Pod) -> Option<PodCause> {
    let status = pod.status.as_ref()?;
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        let msg = one_line(c.message.as_deref().unwrap_or("no node fits"));
        return Some(PodCause {
            rank: 0,
            reason: "Unschedulable",
            key: msg.clone(),
            text: format!("cannot be scheduled: {}", clip(&msg, MAX_DETAIL)),
        });
    }
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    let mut found: Option<PodCause> = None;
    for cs in statuses {
        let state = cs.state.as_ref();
        let Some(w) = state.and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let msg = one_line(w.message.as_deref().unwrap_or_default());
        let c = match w.reason.as_deref() {
            Some(
                "ImagePullBackOff" | "ErrImagePull" | "ErrImageNeverPull" | "InvalidImageName",
            ) => {
                let image = image_of(pod, &cs.name, &cs.image);
                // One reason for the pull and its back-off: the REASON column
                // does not flip between them at every retry.
                PodCause {
                    rank: 1,
                    reason: "ImagePullBackOff",
                    key: image.clone(),
                    text: with_detail(format!("cannot pull image {image:?}"), pull_error(&msg)),
                }
            }
            Some("CrashLoopBackOff") => {
                let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                let why = match last {
                    Some(t) => match t.message.as_deref().map(one_line) {
                        Some(m) if !m.is_empty() => clip(&m, MAX_DETAIL),
                        _ => format!(
                            "{}, exit code {}",
                            t.reason.as_deref().unwrap_or("terminated"),
                            t.exit_code
                        ),
                    },
                    None => "it keeps restarting".into(),
                };
                PodCause {
                    rank: 2,
                    reason: "CrashLoopBackOff",
                    key: format!("{}\0{why}", cs.name),
                    text: format!("container {} keeps exiting: {why}", cs.name),
                }
            }
            Some(
                r @ ("CreateContainerConfigError" | "CreateContainerError" | "RunContainerError"),
            ) => PodCause {
                rank: 3,
                reason: match r {
                    "CreateContainerConfigError" => "CreateContainerConfigError",
                    "CreateContainerError" => "CreateContainerError",
                    _ => "RunContainerError",
                },
                key: msg.clone(),
                text: with_detail(format!("container {} cannot start", cs.name), &msg),
            },
            _ => continue,
        };
        if found.as_ref().is_none_or(|f| c.rank < f.rank) {
            found = Some(c);
        }
    }
    found
}

/// The registry's answer in a pull's waiting message: kubelet alternates
/// `ErrImagePull: <error>` and `Back-off pulling image "<image>": <error>`
/// (older kubelets: no error after the back-off); one text for both keeps
/// the status from changing at every retry.
fn pull_error(msg: &str) -> &str {
    let rest = match msg.strip_prefix("Back-off pulling image \"") {
        Some(r) => match r.split_once("\": ") {
            Some((_, err)) => err,
            None => "",
        },
        None => msg,
    };
    rest.strip_prefix("ErrImagePull: ").unwrap_or(rest)
}

/// The image a container was given, from its spec (a waiting container's
/// status may carry it too; the spec is what the user wrote).
fn image_of(pod: &Pod, container: &str, status_image: &str) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(&s.containers)
                .find(|c| c.name == container)
        })
        .and_then(|c| c.image.clone())
        .unwrap_or_else(|| status_image.to_string())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// "pod x on node n" (or just "pod x" before it is scheduled).
fn where_(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(node) => format!("pod {name} on node {node}"),
        None => format!("pod {name}"),
    }
}

fn with_detail(head: String, detail: &str) -> String {
    if detail.is_empty() {
        head
    } else {
        format!("{head}: {}", clip(detail, MAX_DETAIL))
    }
}

fn more(n: usize) -> String {
    if n > 1 {
        format!(" and {} more", n - 1)
    } else {
        String::new()
    }
}

/// When an event was last seen, whichever API wrote it.
fn last_seen(e: &Event) -> Option<Timestamp> {
    [
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0),
        e.last_timestamp.as_ref().map(|t| t.0),
        e.event_time.as_ref().map(|t| t.0),
        e.first_timestamp.as_ref().map(|t| t.0),
        e.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// Messages are often multi-line (stack traces, admission lists): one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        s.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod fixture")
    }

    fn event(v: serde_json::Value) -> Event {
        serde_json::from_value(v).expect("event fixture")
    }

    fn daemonset() -> Creator {
        Creator::Named {
            kind: "DaemonSet",
            name: "dragonfly-dfdaemon".into(),
        }
    }

    /// A dfdaemon pod as kubelet reports one whose image tag does not exist.
    fn image_pull_pod(name: &str, node: &str) -> Pod {
        pod(json!({
            "metadata": {"name": name, "namespace": "dragonfly-system"},
            "spec": {"nodeName": node, "containers": [{
                "name": "dfdaemon", "image": "10.99.0.2:5000/dragonfly:nope",
                "env": [{"name": "REGISTRY_PASSWORD", "value": "s3cr3t-value"}]}]},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                "containerStatuses": [{
                    "name": "dfdaemon", "image": "10.99.0.2:5000/dragonfly:nope", "imageID": "",
                    "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff",
                        "message": "Back-off pulling image \"10.99.0.2:5000/dragonfly:nope\": ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image \"10.99.0.2:5000/dragonfly:nope\": not found"}}}]}
        }))
    }

    fn evidence(creator: Creator, pods: Vec<Pod>) -> Evidence {
        Evidence {
            pods,
            ..Evidence::new(creator)
        }
    }

    #[test]
    fn image_pull_back_off_names_the_image_pod_and_node() {
        let ev = evidence(
            daemonset(),
            vec![image_pull_pod("dragonfly-dfdaemon-x7k2p", "dfk-node1")],
        );
        let c = find(&ev, 1).expect("a cause");
        assert_eq!(c.reason, "ImagePullBackOff");
        assert!(
            c.message.starts_with(
                "pod dragonfly-dfdaemon-x7k2p on node dfk-node1: cannot pull image \"10.99.0.2:5000/dragonfly:nope\""
            ),
            "{}",
            c.message
        );
        assert!(c.message.contains("not found"), "{}", c.message);
    }

    #[test]
    fn a_pull_and_its_back_off_say_the_same() {
        let err = "rpc error: code = NotFound desc = failed to pull and unpack image \"r/x:nope\": not found";
        assert_eq!(pull_error(err), err);
        assert_eq!(pull_error(&format!("ErrImagePull: {err}")), err);
        assert_eq!(
            pull_error(&format!(
                "Back-off pulling image \"r/x:nope\": ErrImagePull: {err}"
            )),
            err
        );
        assert_eq!(pull_error("Back-off pulling image \"r/x:nope\""), "");
    }

    #[test]
    fn err_image_pull_is_the_same_reason() {
        let mut p = image_pull_pod("a", "n1");
        if let Some(w) = p
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
            .and_then(|c| c[0].state.as_mut())
            .and_then(|s| s.waiting.as_mut())
        {
            w.reason = Some("ErrImagePull".into());
        }
        let c = find(&evidence(daemonset(), vec![p]), 1).expect("a cause");
        assert_eq!(c.reason, "ImagePullBackOff");
    }

    #[test]
    fn crash_loop_quotes_the_last_termination_message() {
        let p = pod(json!({
            "metadata": {"name": "dragonfly-seed-peer-0"},
            "spec": {"nodeName": "dfk-node2", "containers": [{"name": "seed-peer", "image": "dragonfly:1"}]},
            "status": {
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "seed-peer", "image": "dragonfly:1", "imageID": "x", "ready": false, "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff",
                        "message": "back-off 2m40s restarting failed container=seed-peer pod=dragonfly-seed-peer-0"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                        "message": "Error: cannot create /var/lib/dragonfly/tasks:\n  Permission denied (os error 13)\n"}}}]}
        }));
        let ev = evidence(
            Creator::Named {
                kind: "StatefulSet",
                name: "dragonfly-seed-peer".into(),
            },
            vec![p],
        );
        let c = find(&ev, 1).expect("a cause");
        assert_eq!(c.reason, "CrashLoopBackOff");
        assert_eq!(
            c.message,
            "pod dragonfly-seed-peer-0 on node dfk-node2: container seed-peer keeps exiting: \
             Error: cannot create /var/lib/dragonfly/tasks: Permission denied (os error 13)"
        );
    }

    #[test]
    fn crash_loop_without_a_message_gives_reason_and_exit_code() {
        let p = pod(json!({
            "metadata": {"name": "s-0"},
            "spec": {"containers": [{"name": "seed-peer"}]},
            "status": {"containerStatuses": [{
                "name": "seed-peer", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
        }));
        let c = find(&evidence(daemonset(), vec![p]), 1).expect("a cause");
        assert!(
            c.message
                .ends_with("container seed-peer keeps exiting: OOMKilled, exit code 137"),
            "{}",
            c.message
        );
    }

    #[test]
    fn unschedulable_scheduler_pod_quotes_the_scheduler() {
        let p = pod(json!({
            "metadata": {"name": "dragonfly-scheduler-5d8f7c9b4-abcde"},
            "spec": {"containers": [{"name": "scheduler"}]},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."}]}
        }));
        let ev = evidence(
            Creator::ReplicaSetsOf("dragonfly-scheduler".into()),
            vec![p],
        );
        let c = find(&ev, 3).expect("a cause");
        assert_eq!(c.reason, "Unschedulable");
        assert!(
            c.message.starts_with(
                "pod dragonfly-scheduler-5d8f7c9b4-abcde: cannot be scheduled: 0/3 nodes are available: 3 Insufficient cpu."
            ),
            "{}",
            c.message
        );
    }

    fn pending_claim(name: &str, class: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "dragonfly-system"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "50Gi"}}},
            "status": {"phase": "Pending"}
        }))
        .expect("claim fixture")
    }

    fn seed_peers() -> Creator {
        Creator::Named {
            kind: "StatefulSet",
            name: "dragonfly-seed-peer".into(),
        }
    }

    /// A seed pod waits on its claim: the claim, not the pod, is the cause.
    fn waiting_on_claim(name: &str) -> Pod {
        pod(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "seed-peer"}]},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]}
        }))
    }

    #[test]
    fn a_pending_claim_without_a_class_says_there_is_no_default() {
        let ev = Evidence {
            pods: vec![
                waiting_on_claim("dragonfly-seed-peer-0"),
                waiting_on_claim("dragonfly-seed-peer-1"),
            ],
            claims: vec![
                pending_claim("data-dragonfly-seed-peer-1", None),
                pending_claim("data-dragonfly-seed-peer-0", None),
            ],
            ..Evidence::new(seed_peers())
        };
        let c = find(&ev, 2).expect("a cause");
        assert_eq!(c.reason, "ClaimPending");
        assert_eq!(
            c.message,
            "claim data-dragonfly-seed-peer-0 and 1 more is Pending: it names no StorageClass and the cluster has no default StorageClass"
        );
    }

    #[test]
    fn a_pending_claim_quotes_the_volume_controller() {
        let ev = Evidence {
            claims: vec![pending_claim("data-dragonfly-seed-peer-0", Some("fast"))],
            events: vec![
                event(json!({
                    "metadata": {"name": "data-dragonfly-seed-peer-0.1"},
                    "involvedObject": {"kind": "PersistentVolumeClaim", "name": "data-dragonfly-seed-peer-0"},
                    "reason": "ProvisioningFailed", "type": "Warning",
                    "message": "storageclass.storage.k8s.io \"fast\" not found",
                    "lastTimestamp": "2025-01-01T00:01:00Z"})),
                event(json!({
                    "metadata": {"name": "data-dragonfly-seed-peer-0.0"},
                    "involvedObject": {"kind": "PersistentVolumeClaim", "name": "data-dragonfly-seed-peer-0"},
                    "reason": "FailedBinding", "type": "Normal",
                    "message": "older", "lastTimestamp": "2025-01-01T00:00:00Z"})),
            ],
            ..Evidence::new(seed_peers())
        };
        let c = find(&ev, 1).expect("a cause");
        assert_eq!(
            (c.reason, c.message.as_str()),
            (
                "ClaimPending",
                "claim data-dragonfly-seed-peer-0 is Pending: storageclass.storage.k8s.io \"fast\" not found"
            )
        );
    }

    #[test]
    fn a_claim_waiting_for_its_pod_is_not_the_cause() {
        let ev = Evidence {
            pods: vec![image_pull_pod("dragonfly-seed-peer-0", "n1")],
            claims: vec![pending_claim("data-dragonfly-seed-peer-0", Some("local"))],
            events: vec![event(json!({
                "metadata": {"name": "e"},
                "involvedObject": {"kind": "PersistentVolumeClaim", "name": "data-dragonfly-seed-peer-0"},
                "reason": "WaitForFirstConsumer", "type": "Normal",
                "message": "waiting for first consumer to be created before binding"}))],
            ..Evidence::new(seed_peers())
        };
        assert_eq!(find(&ev, 1).map(|c| c.reason), Some("ImagePullBackOff"));
    }

    fn failed_create(kind: &str, name: &str, message: &str) -> Event {
        event(json!({
            "metadata": {"name": format!("{name}.17a"), "namespace": "p"},
            "involvedObject": {"kind": kind, "name": name, "namespace": "p", "apiVersion": "apps/v1"},
            "reason": "FailedCreate", "type": "Warning", "count": 12,
            "message": message,
            "lastTimestamp": "2025-01-01T00:00:00Z",
            "source": {"component": "daemonset-controller"}}))
    }

    #[test]
    fn pod_security_rejection_of_the_daemonset() {
        let ev = Evidence {
            events: vec![failed_create(
                "DaemonSet",
                "dragonfly-dfdaemon",
                "Error creating: pods \"dragonfly-dfdaemon-\" is forbidden: violates PodSecurity \"baseline:latest\": \
                 host namespaces (hostNetwork=true), hostPath volumes (volumes \"containerd-config\", \"run\"), hostPort (container \"dfdaemon\" uses hostPorts 65001, 65002)",
            )],
            ..Evidence::new(daemonset())
        };
        let c = find(&ev, 3).expect("a cause");
        assert_eq!(c.reason, "FailedCreate");
        assert!(
            c.message.starts_with(
                "DaemonSet dragonfly-dfdaemon cannot create pods: pods \"dragonfly-dfdaemon-\" is forbidden: violates PodSecurity \"baseline:latest\""
            ),
            "{}",
            c.message
        );
        assert!(c.message.chars().count() <= MAX_LINE);
    }

    #[test]
    fn quota_exceeded_for_a_scheduler_replicaset() {
        let ev = Evidence {
            events: vec![
                failed_create(
                    "ReplicaSet",
                    "dragonfly-scheduler-7c9d8f6b5",
                    "Error creating: pods \"dragonfly-scheduler-7c9d8f6b5-\" is forbidden: exceeded quota: tiny, requested: cpu=100m, used: cpu=0, limited: cpu=10m",
                ),
                // Another cluster's Deployment whose name starts with ours.
                failed_create(
                    "ReplicaSet",
                    "dragonfly-scheduler-b-scheduler-6f7d",
                    "Error creating: not ours",
                ),
            ],
            ..Evidence::new(Creator::ReplicaSetsOf("dragonfly-scheduler".into()))
        };
        let c = find(&ev, 3).expect("a cause");
        assert_eq!(c.reason, "FailedCreate");
        assert_eq!(
            c.message,
            "ReplicaSet dragonfly-scheduler-7c9d8f6b5 cannot create pods: pods \"dragonfly-scheduler-7c9d8f6b5-\" is forbidden: \
             exceeded quota: tiny, requested: cpu=100m, used: cpu=0, limited: cpu=10m"
        );
    }

    #[test]
    fn an_old_failed_create_is_no_cause_once_every_pod_exists() {
        let ev = Evidence {
            pods: vec![image_pull_pod("dragonfly-dfdaemon-a", "n1")],
            events: vec![failed_create(
                "DaemonSet",
                "dragonfly-dfdaemon",
                "Error creating: exceeded quota",
            )],
            ..Evidence::new(daemonset())
        };
        assert_eq!(find(&ev, 1).map(|c| c.reason), Some("ImagePullBackOff"));
        assert_eq!(find(&ev, 2).map(|c| c.reason), Some("FailedCreate"));
    }

    #[test]
    fn many_pods_make_one_bounded_line() {
        let pods: Vec<Pod> = (0..500)
            .map(|i| {
                image_pull_pod(
                    &format!("dragonfly-dfdaemon-{i:03}"),
                    &format!("node-{i:03}"),
                )
            })
            .collect();
        let c = find(&evidence(daemonset(), pods), 500).expect("a cause");
        assert!(c.message.chars().count() <= MAX_LINE, "{}", c.message.len());
        assert!(
            c.message.starts_with(
                "pod dragonfly-dfdaemon-000 on node node-000 and 499 more: cannot pull image"
            ),
            "{}",
            c.message
        );
        assert!(!c.message.contains('\n'));
    }

    #[test]
    fn the_cause_most_pods_share_wins_and_ready_pods_are_ignored() {
        let mut ready = image_pull_pod("a-ready", "n0");
        if let Some(s) = ready.status.as_mut() {
            s.conditions = Some(vec![serde_json::from_value(
                json!({"type": "Ready", "status": "True"}),
            )
            .expect("cond")]);
        }
        let mut other = image_pull_pod("b-other", "n1");
        if let Some(c) = other.spec.as_mut() {
            c.containers[0].image = Some("other:tag".into());
        }
        let pods = vec![
            ready,
            other,
            image_pull_pod("c", "n2"),
            image_pull_pod("d", "n3"),
        ];
        let c = find(&evidence(daemonset(), pods), 4).expect("a cause");
        assert!(
            c.message.starts_with(
                "pod c on node n2 and 1 more: cannot pull image \"10.99.0.2:5000/dragonfly:nope\""
            ),
            "{}",
            c.message
        );
    }

    #[test]
    fn no_secret_leaks_from_env_or_pull_secrets() {
        let mut p = image_pull_pod("dragonfly-dfdaemon-x", "n1");
        if let Some(s) = p.spec.as_mut() {
            s.image_pull_secrets = Some(vec![
                serde_json::from_value(json!({"name": "regcred"})).expect("ref")
            ]);
            s.containers[0].env = Some(vec![serde_json::from_value(
                json!({"name": "TOKEN", "value": "hunter2-secret-token"}),
            )
            .expect("env")]);
        }
        let crash = pod(json!({
            "metadata": {"name": "y"},
            "spec": {"containers": [{"name": "c", "env": [{"name": "PASSWORD", "value": "s3cr3t-value"}]}]},
            "status": {"containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 2}}}]}
        }));
        for pods in [vec![p], vec![crash]] {
            let c = find(&evidence(daemonset(), pods), 1).expect("a cause");
            for secret in ["hunter2", "s3cr3t", "regcred", "TOKEN", "PASSWORD"] {
                assert!(!c.message.contains(secret), "{secret} in {}", c.message);
            }
        }
    }

    #[test]
    fn nothing_known_is_no_cause() {
        let starting = pod(json!({
            "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}
        }));
        assert_eq!(find(&evidence(daemonset(), vec![starting]), 1), None);
        assert_eq!(find(&Evidence::new(daemonset()), 0), None);
    }
}
