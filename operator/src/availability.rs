//! Available, Progressing and Degraded, per the Kubernetes API conventions:
//! Available says the cluster serves (a scheduler, a seed peer when
//! enabled, and all but a tolerated number of dfdaemons are ready);
//! Progressing says a rollout is under way; Degraded says something runs
//! below what the spec asks outside a rollout. Pure, like `status`.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One workload as the status sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub what: &'static str,
    pub want: i32,
    pub ready: i32,
    /// Its controller has seen the latest spec and updated every replica.
    pub rolled_out: bool,
    /// It exists at all.
    pub present: bool,
}

impl Workload {
    fn short(&self) -> i32 {
        (self.want - self.ready).max(0)
    }
}

/// Everything the three conditions are derived from.
pub struct Inputs<'a> {
    pub scheduler: Workload,
    /// `None` when seed peers are disabled.
    pub seed_peer: Option<Workload>,
    pub dfdaemon: Workload,
    pub max_unavailable_daemons: &'a IntOrString,
    pub nodes_with_problems: i32,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub holds: bool,
    pub reason: &'static str,
    pub message: String,
}

/// How many of `scheduled` dfdaemons may be unready: a percentage rounds
/// down (10% of 9 is 0), a malformed value tolerates none.
pub fn tolerated(max: &IntOrString, scheduled: i32) -> i32 {
    let scheduled = scheduled.max(0);
    let n = match max {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.trim().strip_suffix('%').map(|p| p.trim().parse::<i64>())
        {
            Some(Ok(pct)) => {
                i32::try_from(i64::from(scheduled) * pct.clamp(0, 100) / 100).unwrap_or(0)
            }
            _ => s.trim().parse::<i32>().unwrap_or(0),
        },
    };
    n.clamp(0, scheduled)
}

pub fn available(i: &Inputs) -> Verdict {
    let mut missing = Vec::new();
    if i.scheduler.ready < 1 {
        missing.push(format!(
            "no scheduler replica is ready ({}/{})",
            i.scheduler.ready, i.scheduler.want
        ));
    }
    if let Some(seed) = &i.seed_peer {
        if seed.want > 0 && seed.ready < 1 {
            missing.push(format!(
                "no seed peer is ready ({}/{})",
                seed.ready, seed.want
            ));
        }
    }
    let d = &i.dfdaemon;
    let allowed = tolerated(i.max_unavailable_daemons, d.want);
    if !d.present || d.want == 0 {
        missing.push("no dfdaemon is scheduled".to_string());
    } else if d.short() > allowed {
        missing.push(format!(
            "{}/{} dfdaemons ready, {} may be unavailable",
            d.ready, d.want, allowed
        ));
    }
    if missing.is_empty() {
        let message = if d.short() > 0 {
            format!(
                "serving; {}/{} dfdaemons ready ({} may be unavailable)",
                d.ready, d.want, allowed
            )
        } else {
            "serving: schedulers, seed peers and dfdaemons are ready".to_string()
        };
        Verdict {
            holds: true,
            reason: "MinimumComponentsAvailable",
            message,
        }
    } else {
        let reason = if i.scheduler.ready < 1 {
            "SchedulerUnavailable"
        } else if i
            .seed_peer
            .as_ref()
            .is_some_and(|s| s.want > 0 && s.ready < 1)
        {
            "SeedPeersUnavailable"
        } else {
            "DaemonsUnavailable"
        };
        Verdict {
            holds: false,
            reason,
            message: missing.join("; "),
        }
    }
}

pub fn progressing(i: &Inputs) -> Verdict {
    let rolling: Vec<&Workload> = workloads(i)
        .into_iter()
        .filter(|w| !w.present || !w.rolled_out)
        .collect();
    if rolling.is_empty() {
        Verdict {
            holds: false,
            reason: "RolloutComplete",
            message: "every workload runs the current spec".into(),
        }
    } else {
        Verdict {
            holds: true,
            reason: "RollingOut",
            message: format!(
                "rolling out: {}",
                rolling
                    .iter()
                    .map(|w| w.what)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Below spec outside a rollout (a rollout makes replicas unready by
/// design), or nodes reporting problems.
pub fn degraded(i: &Inputs) -> Verdict {
    let mut causes: Vec<(&'static str, String)> = Vec::new();
    for w in workloads(i) {
        if w.present && w.rolled_out && w.short() > 0 {
            let reason = match w.what {
                "scheduler" => "SchedulerReplicasNotReady",
                "seed peer" => "SeedPeersNotReady",
                _ => "DaemonsNotReady",
            };
            causes.push((reason, format!("{}/{} {} ready", w.ready, w.want, w.what)));
        }
    }
    if i.nodes_with_problems > 0 {
        causes.push((
            "NodeProblems",
            format!(
                "{} node(s) report problems (status.nodeProblems)",
                i.nodes_with_problems
            ),
        ));
    }
    match causes.first() {
        None => Verdict {
            holds: false,
            reason: "AsExpected",
            message: "nothing runs below the spec".into(),
        },
        Some((reason, _)) => Verdict {
            holds: true,
            reason,
            message: causes
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}

fn workloads<'a>(i: &'a Inputs) -> Vec<&'a Workload> {
    let mut all = vec![&i.scheduler];
    if let Some(seed) = &i.seed_peer {
        all.push(seed);
    }
    all.push(&i.dfdaemon);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(what: &'static str, want: i32, ready: i32) -> Workload {
        Workload {
            what,
            want,
            ready,
            rolled_out: true,
            present: true,
        }
    }

    fn inputs(daemons_ready: i32, max: &IntOrString) -> Inputs<'_> {
        Inputs {
            scheduler: w("scheduler", 3, 3),
            seed_peer: Some(w("seed peer", 2, 2)),
            dfdaemon: w("dfdaemon", 100, daemons_ready),
            max_unavailable_daemons: max,
            nodes_with_problems: 0,
        }
    }

    #[test]
    fn tolerance_rounds_down_and_is_bounded() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(tolerated(&pct("10%"), 100), 10);
        assert_eq!(tolerated(&pct("10%"), 9), 0);
        assert_eq!(tolerated(&pct("10%"), 3), 0);
        assert_eq!(tolerated(&pct("150%"), 4), 4);
        assert_eq!(tolerated(&IntOrString::Int(2), 1), 1);
        assert_eq!(tolerated(&IntOrString::Int(-3), 10), 0);
        assert_eq!(tolerated(&pct("nonsense"), 10), 0);
        assert_eq!(tolerated(&pct("3"), 10), 3);
    }

    #[test]
    fn a_few_booting_nodes_leave_the_fleet_available_and_degraded() {
        let max = IntOrString::String("10%".into());
        let i = inputs(95, &max);
        let a = available(&i);
        assert!(a.holds, "{a:?}");
        assert!(a.message.contains("95/100"), "{}", a.message);
        let d = degraded(&i);
        assert_eq!((d.holds, d.reason), (true, "DaemonsNotReady"));
        assert!(!progressing(&i).holds);
    }

    #[test]
    fn past_the_tolerance_the_fleet_is_unavailable() {
        let max = IntOrString::String("10%".into());
        let a = available(&inputs(89, &max));
        assert_eq!((a.holds, a.reason), (false, "DaemonsUnavailable"));
        assert!(a.message.contains("89/100"), "{}", a.message);
    }

    #[test]
    fn one_ready_scheduler_and_seed_peer_suffice() {
        let max = IntOrString::Int(0);
        let mut i = inputs(100, &max);
        i.scheduler.ready = 1;
        i.seed_peer = Some(w("seed peer", 2, 1));
        assert!(available(&i).holds);
        i.scheduler.ready = 0;
        assert_eq!(available(&i).reason, "SchedulerUnavailable");
        i.scheduler.ready = 1;
        i.seed_peer = Some(w("seed peer", 2, 0));
        assert_eq!(available(&i).reason, "SeedPeersUnavailable");
        i.seed_peer = None;
        assert!(available(&i).holds, "disabled seed peers are not required");
    }

    #[test]
    fn a_rollout_progresses_without_degrading() {
        let max = IntOrString::Int(0);
        let mut i = inputs(97, &max);
        i.dfdaemon.rolled_out = false;
        let p = progressing(&i);
        assert_eq!((p.holds, p.reason), (true, "RollingOut"));
        assert!(p.message.contains("dfdaemon"), "{}", p.message);
        assert!(
            !degraded(&i).holds,
            "unready pods of a rollout are expected"
        );
        i.nodes_with_problems = 2;
        let d = degraded(&i);
        assert_eq!((d.holds, d.reason), (true, "NodeProblems"));
    }

    #[test]
    fn nothing_scheduled_is_unavailable() {
        let max = IntOrString::String("100%".into());
        let mut i = inputs(0, &max);
        i.dfdaemon.want = 0;
        let a = available(&i);
        assert!(!a.holds);
        assert!(
            a.message.contains("no dfdaemon is scheduled"),
            "{}",
            a.message
        );
    }
}
