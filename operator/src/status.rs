//! Status derived only from what was applied and observed: pure, so every
//! condition and reason is tested from fixtures.
//!
//! `Ready` follows the serving path (schedulers, seed peers, dfdaemons).
//! `NodesConfigured` is reported beside it: one node with a containerd
//! problem degrades that node, not the whole cluster.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::availability::{self, Workload};
use crate::crd::{ComponentStatus, DragonflyClusterSpec, DragonflyClusterStatus, NodeProblem};
use crate::nodes::NodeState;
use crate::validate::SpecProblem;

pub const READY: &str = "Ready";
pub const SCHEDULER_READY: &str = "SchedulerReady";
pub const SEED_PEERS_READY: &str = "SeedPeersReady";
pub const DAEMONS_READY: &str = "DaemonsReady";
pub const NODES_CONFIGURED: &str = "NodesConfigured";
pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Bound on `status.nodeProblems` so a fleet-wide problem stays a small object.
const MAX_NODE_PROBLEMS: usize = 50;

/// The workloads as the API server last returned them.
#[derive(Default)]
pub struct Observed {
    pub scheduler: Option<Deployment>,
    pub seed_peer: Option<StatefulSet>,
    pub dfdaemon: Option<DaemonSet>,
    /// One entry per dfdaemon pod that has a node.
    pub nodes: Vec<(String, NodeState)>,
}

struct Cond {
    type_: &'static str,
    ok: bool,
    reason: String,
    message: String,
}

pub fn derive(
    spec: &DragonflyClusterSpec,
    generation: Option<i64>,
    observed: &Observed,
    previous: Option<&DragonflyClusterStatus>,
    now: &Time,
) -> DragonflyClusterStatus {
    let mut status = DragonflyClusterStatus {
        observed_generation: generation,
        conditions: previous.map(|p| p.conditions.clone()).unwrap_or_default(),
        ..DragonflyClusterStatus::default()
    };

    let (sched, sched_cond, sched_w) =
        deployment_state(spec.scheduler.replicas, observed.scheduler.as_ref());
    status.scheduler = Some(sched);

    let (seed_cond, seed_w) = if spec.seed_peer.enabled {
        let (seed, cond, w) =
            statefulset_state(spec.seed_peer.replicas, observed.seed_peer.as_ref());
        status.seed_peer = Some(seed);
        (cond, Some(w))
    } else {
        let cond = Cond {
            type_: SEED_PEERS_READY,
            ok: true,
            reason: "Disabled".into(),
            message: "seed peers are disabled; regular nodes fetch from the origin".into(),
        };
        (cond, None)
    };

    let (daemons, daemon_cond, daemon_w) = daemonset_state(observed.dfdaemon.as_ref());
    status.dfdaemon = Some(daemons);

    let nodes_cond = nodes_state(&observed.nodes, &mut status);

    let inputs = availability::Inputs {
        scheduler: sched_w,
        seed_peer: seed_w,
        dfdaemon: daemon_w,
        max_unavailable_daemons: &spec.availability.max_unavailable_daemons,
        nodes_with_problems: status.nodes_with_problems,
    };
    let [available, progressing, degraded] = [
        (AVAILABLE, availability::available(&inputs)),
        (PROGRESSING, availability::progressing(&inputs)),
        (DEGRADED, availability::degraded(&inputs)),
    ]
    .map(|(type_, v)| Cond {
        type_,
        ok: v.holds,
        reason: v.reason.into(),
        message: v.message,
    });

    // Ready summarises Available: the cluster serves. Every component
    // condition beside it still says what is short.
    let serving = [&sched_cond, &seed_cond, &daemon_cond];
    let not_ready: Vec<&&Cond> = serving.iter().filter(|c| !c.ok).collect();
    let ready_cond = match (available.ok, not_ready.first()) {
        (true, None) => Cond {
            type_: READY,
            ok: true,
            reason: "AllComponentsReady".into(),
            message: "schedulers, seed peers and dfdaemons are ready".into(),
        },
        (true, Some(_)) => Cond {
            type_: READY,
            ok: true,
            reason: "Available".into(),
            message: available.message.clone(),
        },
        (false, None) => Cond {
            type_: READY,
            ok: false,
            reason: available.reason.clone(),
            message: available.message.clone(),
        },
        (false, Some(first)) => Cond {
            type_: READY,
            ok: false,
            reason: format!("{}False", first.type_),
            message: not_ready
                .iter()
                .map(|c| c.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        },
    };

    for c in [
        ready_cond,
        available,
        progressing,
        degraded,
        sched_cond,
        seed_cond,
        daemon_cond,
        nodes_cond,
    ] {
        set_condition(&mut status.conditions, c, generation, now);
    }
    status
}

/// Status for a spec the operator refuses to act on: the conditions that
/// describe running components stay as they were; `Ready` names every problem.
pub fn invalid(
    problems: &[SpecProblem],
    generation: Option<i64>,
    previous: Option<&DragonflyClusterStatus>,
    now: &Time,
) -> DragonflyClusterStatus {
    blocked("InvalidSpec", problems, generation, previous, now)
}

/// Nothing was applied because of `problems` (a bad spec, or objects it
/// references that cannot be used): `Ready=False` with `reason` and every
/// problem in the message.
pub fn blocked(
    reason: &str,
    problems: &[SpecProblem],
    generation: Option<i64>,
    previous: Option<&DragonflyClusterStatus>,
    now: &Time,
) -> DragonflyClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let message = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    set_condition(
        &mut status.conditions,
        Cond {
            type_: READY,
            ok: false,
            reason: reason.into(),
            message,
        },
        generation,
        now,
    );
    status
}

/// The API server refused some of the operator's writes: `Ready` says so,
/// naming each object and quoting the server (the component conditions
/// beside it still describe what is running).
pub fn apply_failed(
    status: &mut DragonflyClusterStatus,
    failures: &[String],
    generation: Option<i64>,
    now: &Time,
) {
    const SHOWN: usize = 5;
    let mut message = failures
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("; ");
    if failures.len() > SHOWN {
        message.push_str(&format!("; and {} more", failures.len() - SHOWN));
    }
    set_condition(
        &mut status.conditions,
        Cond {
            type_: READY,
            ok: false,
            reason: "ApplyFailed".into(),
            message: clip(&message),
        },
        generation,
        now,
    );
}

/// Condition messages stay readable and the object small.
fn clip(s: &str) -> String {
    const MAX: usize = 2000;
    if s.chars().count() > MAX {
        s.chars().take(MAX).collect::<String>() + "…"
    } else {
        s.to_string()
    }
}

fn deployment_state(want: i32, d: Option<&Deployment>) -> (ComponentStatus, Cond, Workload) {
    let st = d.and_then(|d| d.status.clone()).unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let current = d.is_some_and(|d| st.observed_generation >= d.metadata.generation);
    let updated = st.updated_replicas.unwrap_or(0) >= want;
    replica_cond(
        SCHEDULER_READY,
        "scheduler",
        want,
        ready,
        current && updated,
        d.is_some(),
    )
}

fn statefulset_state(want: i32, s: Option<&StatefulSet>) -> (ComponentStatus, Cond, Workload) {
    let st = s.and_then(|s| s.status.clone()).unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let current = s.is_some_and(|s| st.observed_generation >= s.metadata.generation);
    let updated = st.updated_replicas.unwrap_or(0) >= want;
    replica_cond(
        SEED_PEERS_READY,
        "seed peer",
        want,
        ready,
        current && updated,
        s.is_some(),
    )
}

fn replica_cond(
    type_: &'static str,
    what: &'static str,
    want: i32,
    ready: i32,
    rolled_out: bool,
    present: bool,
) -> (ComponentStatus, Cond, Workload) {
    let ok = ready >= want && rolled_out;
    let (reason, message) = if ok {
        (
            "AllReplicasReady",
            format!("{ready}/{want} {what} replicas ready"),
        )
    } else if ready >= want {
        ("RollingOut", format!("{what} replicas are being updated"))
    } else {
        (
            "ReplicasNotReady",
            format!("{ready}/{want} {what} replicas ready"),
        )
    };
    (
        ComponentStatus::new(want, ready),
        Cond {
            type_,
            ok,
            reason: reason.into(),
            message,
        },
        Workload {
            what,
            want,
            ready,
            rolled_out,
            present,
        },
    )
}

fn daemonset_state(ds: Option<&DaemonSet>) -> (ComponentStatus, Cond, Workload) {
    let st = ds.and_then(|d| d.status.clone()).unwrap_or_default();
    let want = st.desired_number_scheduled;
    let ready = st.number_ready;
    let updated = st.updated_number_scheduled.unwrap_or(0);
    let current = ds.is_some_and(|d| st.observed_generation >= d.metadata.generation);
    let (ok, reason, message) = if ds.is_none() || !current {
        (
            false,
            "Pending",
            "the dfdaemon DaemonSet is being rolled out".to_string(),
        )
    } else if want == 0 {
        (
            false,
            "NoNodes",
            "no node matches the dfdaemon node selector and tolerations".to_string(),
        )
    } else if ready < want {
        (
            false,
            "DaemonsNotReady",
            format!("{ready}/{want} dfdaemons ready"),
        )
    } else if updated < want {
        (
            false,
            "RollingOut",
            format!("{updated}/{want} dfdaemons updated"),
        )
    } else {
        (
            true,
            "AllDaemonsReady",
            format!("{ready}/{want} dfdaemons ready"),
        )
    };
    (
        ComponentStatus::new(want, ready),
        Cond {
            type_: DAEMONS_READY,
            ok,
            reason: reason.into(),
            message,
        },
        Workload {
            what: "dfdaemon",
            want,
            ready,
            rolled_out: current && updated >= want,
            present: ds.is_some(),
        },
    )
}

fn nodes_state(nodes: &[(String, NodeState)], status: &mut DragonflyClusterStatus) -> Cond {
    let mut problems: Vec<NodeProblem> = nodes
        .iter()
        .filter_map(|(node, s)| match s {
            NodeState::Problems(p) => Some(NodeProblem {
                node: node.clone(),
                problems: p.clone(),
            }),
            _ => None,
        })
        .collect();
    problems.sort_by(|a, b| a.node.cmp(&b.node));
    let configured = nodes
        .iter()
        .filter(|(_, s)| matches!(s, NodeState::Configured | NodeState::InUse))
        .count();
    let not_yet_used: Vec<&str> = nodes
        .iter()
        .filter(|(_, s)| *s == NodeState::Configured)
        .map(|(n, _)| n.as_str())
        .collect();
    let in_use = configured - not_yet_used.len();
    status.nodes_pulling_through_mirror = i32::try_from(in_use).unwrap_or(i32::MAX);
    let pending = nodes
        .iter()
        .filter(|(_, s)| *s == NodeState::Pending)
        .count();
    status.nodes_configured = i32::try_from(configured).unwrap_or(i32::MAX);
    status.nodes_with_problems = i32::try_from(problems.len()).unwrap_or(i32::MAX);

    let cond = if !problems.is_empty() {
        let sample: Vec<String> = problems
            .iter()
            .take(3)
            .map(|p| {
                let codes: Vec<&str> = p.problems.iter().map(|x| x.code.as_str()).collect();
                format!("{}: {}", p.node, codes.join(","))
            })
            .collect();
        let more = if problems.len() > 3 {
            format!(" and {} more", problems.len() - 3)
        } else {
            String::new()
        };
        Cond {
            type_: NODES_CONFIGURED,
            ok: false,
            reason: "ProblemsReported".into(),
            message: format!(
                "{} node(s) report problems ({}{more}); see status.nodeProblems",
                problems.len(),
                sample.join("; ")
            ),
        }
    } else if nodes.is_empty() {
        Cond {
            type_: NODES_CONFIGURED,
            ok: false,
            reason: "NoNodes".into(),
            message: "no dfdaemon is running yet".into(),
        }
    } else if pending > 0 {
        Cond {
            type_: NODES_CONFIGURED,
            ok: false,
            reason: "AwaitingReports".into(),
            message: format!(
                "{configured}/{} nodes reported their mirror configuration",
                nodes.len()
            ),
        }
    } else {
        Cond {
            type_: NODES_CONFIGURED,
            ok: true,
            reason: "AllNodesConfigured".into(),
            message: nodes_in_use_message(configured, &not_yet_used),
        }
    };
    problems.truncate(MAX_NODE_PROBLEMS);
    status.node_problems = problems;
    cond
}

/// "3 node(s) configured; 2 pulled through their mirror (not yet: c)".
fn nodes_in_use_message(configured: usize, not_yet_used: &[&str]) -> String {
    let in_use = configured - not_yet_used.len();
    let mut message =
        format!("{configured} node(s) configured; {in_use} pulled through their mirror");
    if !not_yet_used.is_empty() {
        let mut sorted = not_yet_used.to_vec();
        sorted.sort_unstable();
        let more = sorted.len().saturating_sub(5);
        let shown = sorted.into_iter().take(5).collect::<Vec<_>>().join(", ");
        message.push_str(&format!(" (not yet: {shown}"));
        if more > 0 {
            message.push_str(&format!(" and {more} more"));
        }
        message.push(')');
    }
    message
}

/// Upsert one condition, keeping `lastTransitionTime` unless the status flips,
/// so an unchanged world yields a byte-identical status (and no write).
fn set_condition(list: &mut Vec<Condition>, c: Cond, generation: Option<i64>, now: &Time) {
    let status = if c.ok { "True" } else { "False" }.to_string();
    let last_transition_time = list
        .iter()
        .find(|x| x.type_ == c.type_ && x.status == status)
        .map(|x| x.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let new = Condition {
        type_: c.type_.to_string(),
        status,
        reason: c.reason,
        message: c.message,
        observed_generation: generation,
        last_transition_time,
    };
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(slot) => *slot = new,
        None => list.push(new),
    }
}

pub fn condition<'a>(
    status: Option<&'a DragonflyClusterStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DaemonSetStatus, DeploymentStatus, StatefulSetStatus};
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid time"))
    }

    fn healthy() -> Observed {
        let mut dep = Deployment::default();
        dep.metadata.generation = Some(2);
        dep.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            ready_replicas: Some(3),
            updated_replicas: Some(3),
            ..Default::default()
        });
        let mut sts = StatefulSet::default();
        sts.metadata.generation = Some(1);
        sts.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            ready_replicas: Some(2),
            updated_replicas: Some(2),
            ..Default::default()
        });
        let mut ds = DaemonSet::default();
        ds.metadata.generation = Some(1);
        ds.status = Some(DaemonSetStatus {
            observed_generation: Some(1),
            desired_number_scheduled: 2,
            number_ready: 2,
            updated_number_scheduled: Some(2),
            ..Default::default()
        });
        Observed {
            scheduler: Some(dep),
            seed_peer: Some(sts),
            dfdaemon: Some(ds),
            nodes: vec![
                ("a".into(), NodeState::Configured),
                ("b".into(), NodeState::Configured),
            ],
        }
    }

    fn cond<'a>(s: &'a DragonflyClusterStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn healthy_cluster_is_ready_and_stable() {
        let spec = DragonflyClusterSpec::default();
        let s1 = derive(&spec, Some(7), &healthy(), None, &t(100));
        assert_eq!(cond(&s1, READY).status, "True");
        assert_eq!(cond(&s1, NODES_CONFIGURED).status, "True");
        assert_eq!(
            s1.scheduler.as_ref().map(|c| c.summary.as_str()),
            Some("3/3")
        );
        assert_eq!(s1.observed_generation, Some(7));
        // A later pass over the same world changes nothing, timestamps included.
        let s2 = derive(&spec, Some(7), &healthy(), Some(&s1), &t(200));
        assert_eq!(s1, s2);
    }

    #[test]
    fn a_booting_node_in_a_fleet_keeps_ready_and_shows_degraded() {
        let mut obs = healthy();
        let ds = obs
            .dfdaemon
            .as_mut()
            .and_then(|d| d.status.as_mut())
            .unwrap();
        ds.desired_number_scheduled = 40;
        ds.updated_number_scheduled = Some(40);
        ds.number_ready = 38;
        let spec = DragonflyClusterSpec::default();
        let s = derive(&spec, Some(1), &obs, None, &t(1));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Available")
        );
        assert!(ready.message.contains("38/40"), "{}", ready.message);
        assert_eq!(cond(&s, AVAILABLE).status, "True");
        assert_eq!(cond(&s, DAEMONS_READY).status, "False");
        let degraded = cond(&s, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "DaemonsNotReady")
        );
        assert_eq!(cond(&s, PROGRESSING).status, "False");

        // Past the default 10 % (4 of 40): not Ready, and the reason says why.
        let ds = obs
            .dfdaemon
            .as_mut()
            .and_then(|d| d.status.as_mut())
            .unwrap();
        ds.number_ready = 35;
        let s = derive(&spec, Some(1), &obs, None, &t(2));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, AVAILABLE).reason, "DaemonsUnavailable");
    }

    #[test]
    fn a_rollout_is_progressing_not_degraded() {
        let mut obs = healthy();
        let ds = obs.dfdaemon.as_mut().unwrap();
        ds.metadata.generation = Some(2);
        let s = derive(&DragonflyClusterSpec::default(), Some(1), &obs, None, &t(1));
        let progressing = cond(&s, PROGRESSING);
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "RollingOut")
        );
        assert_eq!(cond(&s, DEGRADED).status, "False");
    }

    #[test]
    fn missing_workloads_name_the_first_blocker() {
        let s = derive(
            &DragonflyClusterSpec::default(),
            Some(1),
            &Observed::default(),
            None,
            &t(1),
        );
        let ready = cond(&s, READY);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "SchedulerReadyFalse");
        assert!(
            ready.message.contains("0/3 scheduler replicas ready"),
            "{}",
            ready.message
        );
        assert_eq!(cond(&s, DAEMONS_READY).reason, "Pending");
        assert_eq!(cond(&s, NODES_CONFIGURED).reason, "NoNodes");
    }

    #[test]
    fn node_problems_degrade_nodes_not_readiness() {
        let mut obs = healthy();
        obs.nodes.push((
            "c".into(),
            NodeState::Problems(vec![crate::crd::ProblemReport {
                code: "NoConfigPath".into(),
                message: "containerd has no config_path".into(),
            }]),
        ));
        let s = derive(&DragonflyClusterSpec::default(), Some(1), &obs, None, &t(1));
        assert_eq!(cond(&s, READY).status, "True");
        let nodes = cond(&s, NODES_CONFIGURED);
        assert_eq!(
            (nodes.status.as_str(), nodes.reason.as_str()),
            ("False", "ProblemsReported")
        );
        assert!(
            nodes.message.contains("c: NoConfigPath"),
            "{}",
            nodes.message
        );
        assert_eq!(s.nodes_with_problems, 1);
        assert_eq!(s.nodes_configured, 2);
        assert_eq!(s.node_problems[0].node, "c");
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let spec = DragonflyClusterSpec::default();
        let s1 = derive(&spec, Some(1), &Observed::default(), None, &t(10));
        let s2 = derive(&spec, Some(1), &healthy(), Some(&s1), &t(20));
        assert_eq!(cond(&s2, READY).last_transition_time, t(20));
        let s3 = derive(&spec, Some(2), &healthy(), Some(&s2), &t(30));
        assert_eq!(cond(&s3, READY).last_transition_time, t(20));
    }

    #[test]
    fn disabled_seed_peers_are_ready_by_definition() {
        let mut spec = DragonflyClusterSpec::default();
        spec.seed_peer.enabled = false;
        let mut obs = healthy();
        obs.seed_peer = None;
        let s = derive(&spec, Some(1), &obs, None, &t(1));
        assert_eq!(cond(&s, SEED_PEERS_READY).reason, "Disabled");
        assert_eq!(s.seed_peer, None);
        assert_eq!(cond(&s, READY).status, "True");
    }

    #[test]
    fn invalid_spec_keeps_component_conditions() {
        let spec = DragonflyClusterSpec::default();
        let before = derive(&spec, Some(1), &healthy(), None, &t(1));
        let problems = vec![SpecProblem {
            field: "spec.dfdaemon.cacheSize".into(),
            message: "\"x\" is not a size such as 20GiB".into(),
        }];
        let s = invalid(&problems, Some(2), Some(&before), &t(2));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(ready.message.starts_with("spec.dfdaemon.cacheSize:"));
        assert_eq!(cond(&s, SCHEDULER_READY).status, "True");
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn apply_failure_makes_ready_false_naming_the_objects() {
        let mut st = derive(
            &DragonflyClusterSpec::default(),
            Some(1),
            &healthy(),
            None,
            &t(10),
        );
        let failures: Vec<String> = (0..7)
            .map(|i| format!("apply DaemonSet ds-{i}: is invalid"))
            .collect();
        apply_failed(&mut st, &failures, Some(1), &t(20));
        let c = cond(&st, READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ApplyFailed")
        );
        assert!(
            c.message.starts_with("apply DaemonSet ds-0: is invalid; "),
            "{}",
            c.message
        );
        assert!(c.message.ends_with("; and 2 more"), "{}", c.message);
        assert_eq!(c.last_transition_time, t(20));
        // The component conditions still describe the workloads.
        assert_eq!(cond(&st, SCHEDULER_READY).status, "True");
    }
}
