//! Status derived only from what was applied and observed: pure, so every
//! condition and reason is tested from fixtures.
//!
//! `Ready` follows the serving path (schedulers, seed peers, dfdaemons).
//! `NodesConfigured` is reported beside it: one node with a containerd
//! problem degrades that node, not the whole cluster.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::availability::{self, Workload};
use crate::causes::{self, Evidence};
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
    /// What the cluster says about a component that is not ready, gathered
    /// only then (see [`unready`]); `None` otherwise.
    pub scheduler_evidence: Option<Evidence>,
    pub seed_peer_evidence: Option<Evidence>,
    pub dfdaemon_evidence: Option<Evidence>,
    /// Why the seed peers keep their cache in an emptyDir, when they do.
    pub seed_cache_ephemeral: Option<String>,
}

struct Cond {
    type_: &'static str,
    ok: bool,
    reason: String,
    message: String,
    /// The reason came from what the cluster says (`causes`).
    caused: bool,
}

/// Which components are not ready, so the controller gathers evidence
/// about those only: a ready cluster costs no extra API call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unready {
    pub scheduler: bool,
    pub seed_peer: bool,
    pub dfdaemon: bool,
}

pub fn unready(spec: &DragonflyClusterSpec, observed: &Observed) -> Unready {
    let (_, sched, _) = deployment_state(spec.scheduler.replicas, observed.scheduler.as_ref());
    let seed = spec.seed_peer.enabled
        && !statefulset_state(spec.seed_peer.replicas, observed.seed_peer.as_ref())
            .1
            .ok;
    let (_, daemon, _) = daemonset_state(observed.dfdaemon.as_ref());
    Unready {
        scheduler: !sched.ok,
        seed_peer: seed,
        dfdaemon: !daemon.ok,
    }
}

/// A component condition that is not ok takes the cause's reason and adds
/// its line to the message; with no cause found it stays as it was.
fn explain(cond: &mut Cond, evidence: Option<&Evidence>, want: i32) {
    if cond.ok {
        return;
    }
    if let Some(c) = evidence.and_then(|e| causes::find(e, want)) {
        cond.reason = c.reason.into();
        cond.message = format!("{}: {}", cond.message, c.message);
        cond.caused = true;
    }
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

    let (sched, mut sched_cond, sched_w) =
        deployment_state(spec.scheduler.replicas, observed.scheduler.as_ref());
    explain(
        &mut sched_cond,
        observed.scheduler_evidence.as_ref(),
        spec.scheduler.replicas,
    );
    status.scheduler = Some(sched);

    let (seed_cond, seed_w) = if spec.seed_peer.enabled {
        let (seed, mut cond, w) =
            statefulset_state(spec.seed_peer.replicas, observed.seed_peer.as_ref());
        explain(
            &mut cond,
            observed.seed_peer_evidence.as_ref(),
            spec.seed_peer.replicas,
        );
        if let Some(why) = &observed.seed_cache_ephemeral {
            if cond.ok {
                cond.reason = "EphemeralCache".into();
            }
            cond.message = clip(&format!("{}; {why}", cond.message));
        }
        status.seed_peer = Some(seed);
        (cond, Some(w))
    } else {
        let cond = Cond {
            type_: SEED_PEERS_READY,
            ok: true,
            reason: "Disabled".into(),
            message: "seed peers are disabled; regular nodes fetch from the origin".into(),
            caused: false,
        };
        (cond, None)
    };

    let (daemons, mut daemon_cond, daemon_w) = daemonset_state(observed.dfdaemon.as_ref());
    explain(
        &mut daemon_cond,
        observed.dfdaemon_evidence.as_ref(),
        daemon_w.want,
    );
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
        caused: false,
    });

    // Ready summarises Available: the cluster serves. Every component
    // condition beside it still says what is short, and why when the
    // cluster says (the first cause is Ready's reason: `kubectl get dfc`
    // shows it).
    let serving = [&sched_cond, &seed_cond, &daemon_cond];
    let not_ready: Vec<&&Cond> = serving.iter().filter(|c| !c.ok).collect();
    let first_cause = not_ready.iter().find(|c| c.caused);
    let ready_cond = match (available.ok, not_ready.first()) {
        (true, None) => Cond {
            type_: READY,
            ok: true,
            reason: "AllComponentsReady".into(),
            message: "schedulers, seed peers and dfdaemons are ready".into(),
            caused: false,
        },
        (true, Some(_)) => {
            let mut message = available.message.clone();
            for c in not_ready.iter().filter(|c| c.caused) {
                message.push_str("; ");
                message.push_str(&c.message);
            }
            Cond {
                type_: READY,
                ok: true,
                reason: "Available".into(),
                message: clip(&message),
                caused: false,
            }
        }
        (false, None) => Cond {
            type_: READY,
            ok: false,
            reason: available.reason.clone(),
            message: available.message.clone(),
            caused: false,
        },
        (false, Some(first)) => Cond {
            type_: READY,
            ok: false,
            reason: match first_cause {
                Some(c) => c.reason.clone(),
                None => format!("{}False", first.type_),
            },
            message: clip(
                &not_ready
                    .iter()
                    .map(|c| c.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            caused: first_cause.is_some(),
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
            caused: false,
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
            caused: false,
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
            caused: false,
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
            caused: false,
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
            caused: false,
        }
    } else if nodes.is_empty() {
        Cond {
            type_: NODES_CONFIGURED,
            ok: false,
            reason: "NoNodes".into(),
            message: "no dfdaemon is running yet".into(),
            caused: false,
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
            caused: false,
        }
    } else {
        Cond {
            type_: NODES_CONFIGURED,
            ok: true,
            reason: "AllNodesConfigured".into(),
            message: nodes_in_use_message(configured, &not_yet_used),
            caused: false,
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
            ..Observed::default()
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

    /// A dfdaemon pod whose image tag does not exist, as kubelet reports it.
    fn pulling_pod(name: &str, node: &str) -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "dfdaemon", "image": "dragonfly:nope"}]},
            "status": {"containerStatuses": [{
                "name": "dfdaemon", "image": "dragonfly:nope", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"dragonfly:nope\": ErrImagePull: dragonfly:nope: not found"}}}]}
        }))
        .expect("pod fixture")
    }

    fn daemons_unready(obs: &mut Observed, ready: i32) {
        if let Some(ds) = obs.dfdaemon.as_mut().and_then(|d| d.status.as_mut()) {
            ds.number_ready = ready;
        }
    }

    fn dfdaemon_evidence(pods: Vec<k8s_openapi::api::core::v1::Pod>) -> Evidence {
        Evidence {
            pods,
            ..Evidence::new(causes::Creator::Named {
                kind: "DaemonSet",
                name: "dragonfly-dfdaemon".into(),
            })
        }
    }

    #[test]
    fn a_cause_is_the_component_reason_and_readys() {
        let mut obs = healthy();
        daemons_unready(&mut obs, 0);
        obs.dfdaemon_evidence = Some(dfdaemon_evidence(vec![
            pulling_pod("dragonfly-dfdaemon-a", "n1"),
            pulling_pod("dragonfly-dfdaemon-b", "n2"),
        ]));
        let s = derive(&DragonflyClusterSpec::default(), Some(1), &obs, None, &t(1));
        let daemons = cond(&s, DAEMONS_READY);
        assert_eq!(
            (daemons.status.as_str(), daemons.reason.as_str()),
            ("False", "ImagePullBackOff")
        );
        assert_eq!(
            daemons.message,
            "0/2 dfdaemons ready: pod dragonfly-dfdaemon-a on node n1 and 1 more: cannot pull image \"dragonfly:nope\": \
             dragonfly:nope: not found"
        );
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ImagePullBackOff")
        );
        assert!(
            ready.message.contains("cannot pull image"),
            "{}",
            ready.message
        );
        // Available keeps its own reasons.
        assert_eq!(cond(&s, AVAILABLE).reason, "DaemonsUnavailable");
        // The same world gives the same status: no write on the next pass.
        let again = derive(
            &DragonflyClusterSpec::default(),
            Some(1),
            &obs,
            Some(&s),
            &t(2),
        );
        assert_eq!(s, again);
    }

    #[test]
    fn the_first_component_with_a_cause_names_readys_reason() {
        let mut obs = healthy();
        // The scheduler is short with nothing said; the dfdaemons have a cause.
        if let Some(st) = obs.scheduler.as_mut().and_then(|d| d.status.as_mut()) {
            st.ready_replicas = Some(0);
        }
        obs.scheduler_evidence = Some(Evidence::new(causes::Creator::ReplicaSetsOf(
            "dragonfly-scheduler".into(),
        )));
        daemons_unready(&mut obs, 0);
        obs.dfdaemon_evidence = Some(dfdaemon_evidence(vec![pulling_pod("d", "n1")]));
        let s = derive(&DragonflyClusterSpec::default(), Some(1), &obs, None, &t(1));
        assert_eq!(cond(&s, SCHEDULER_READY).reason, "ReplicasNotReady");
        assert_eq!(cond(&s, READY).reason, "ImagePullBackOff");
        assert!(
            cond(&s, READY)
                .message
                .starts_with("0/3 scheduler replicas ready; 0/2 dfdaemons ready: pod d"),
            "{}",
            cond(&s, READY).message
        );
    }

    #[test]
    fn no_cause_found_keeps_the_counts_reason() {
        let mut obs = healthy();
        if let Some(st) = obs.seed_peer.as_mut().and_then(|d| d.status.as_mut()) {
            st.ready_replicas = Some(0);
        }
        obs.seed_peer_evidence = Some(Evidence::new(causes::Creator::Named {
            kind: "StatefulSet",
            name: "dragonfly-seed-peer".into(),
        }));
        let s = derive(&DragonflyClusterSpec::default(), Some(1), &obs, None, &t(1));
        let seeds = cond(&s, SEED_PEERS_READY);
        assert_eq!(
            (seeds.reason.as_str(), seeds.message.as_str()),
            ("ReplicasNotReady", "0/2 seed peer replicas ready")
        );
        assert_eq!(cond(&s, READY).reason, "SeedPeersReadyFalse");
    }

    #[test]
    fn a_tolerated_cause_shows_in_readys_message_not_its_reason() {
        let mut obs = healthy();
        if let Some(ds) = obs.dfdaemon.as_mut().and_then(|d| d.status.as_mut()) {
            ds.desired_number_scheduled = 40;
            ds.updated_number_scheduled = Some(40);
            ds.number_ready = 39;
        }
        obs.dfdaemon_evidence = Some(dfdaemon_evidence(vec![pulling_pod("d", "n7")]));
        let s = derive(&DragonflyClusterSpec::default(), Some(1), &obs, None, &t(1));
        let ready = cond(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Available")
        );
        assert!(
            ready.message.contains("pod d on node n7"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn only_unready_components_are_explained() {
        let spec = DragonflyClusterSpec::default();
        assert_eq!(unready(&spec, &healthy()), Unready::default());
        let mut obs = healthy();
        daemons_unready(&mut obs, 1);
        assert_eq!(
            unready(&spec, &obs),
            Unready {
                dfdaemon: true,
                ..Unready::default()
            }
        );
        let none = unready(&spec, &Observed::default());
        assert!(none.scheduler && none.seed_peer && none.dfdaemon);
        let mut off = DragonflyClusterSpec::default();
        off.seed_peer.enabled = false;
        assert!(!unready(&off, &Observed::default()).seed_peer);
    }

    #[test]
    fn an_ephemeral_seed_cache_is_said_while_ready() {
        let mut obs = healthy();
        obs.seed_cache_ephemeral = Some("seed peers cache in an emptyDir: no StorageClass".into());
        let s = derive(&DragonflyClusterSpec::default(), Some(1), &obs, None, &t(1));
        let seeds = cond(&s, SEED_PEERS_READY);
        assert_eq!(
            (seeds.status.as_str(), seeds.reason.as_str()),
            ("True", "EphemeralCache")
        );
        assert_eq!(
            seeds.message,
            "2/2 seed peer replicas ready; seed peers cache in an emptyDir: no StorageClass"
        );
        assert_eq!(cond(&s, READY).status, "True");
    }
}
