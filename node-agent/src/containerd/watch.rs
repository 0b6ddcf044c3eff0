//! Keeps containerd pointed at the mirror for as long as dfdaemon runs: the
//! hosts.toml files are applied and containerd's config checked at start,
//! then again every `recheck_interval`, so another writer's change (an
//! admin's edit, a tool rewriting certs.d, a containerd upgrade changing
//! config.toml) shows within one period. A writer that keeps replacing a
//! file is reported and left alone for a while instead of fought.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::apply::{self, Applied};
use super::check;
use super::config::ContainerdConfig;
use super::error::ContainerdError;
use super::hosts::Registry;
use crate::mirror::usage::MirrorUse;
use crate::node_report::{camel_code, NodeProblem, NodeReport};

/// Another writer replacing a file this many times within [`FIGHT_WINDOW`]
/// is a fight: dfdaemon stops rewriting that file for [`FIGHT_WINDOW`].
pub const FIGHT_LIMIT: usize = 3;
pub const FIGHT_WINDOW: Duration = Duration::from_secs(600);
/// Publishing only a newer pull time waits this long after the last
/// publication, so busy nodes do not patch their pod on every pull.
const PULL_TIME_EVERY: Duration = Duration::from_secs(60);

/// One registry directory's history of being taken back from other writers.
#[derive(Debug, Default)]
struct Fight {
    readopted: VecDeque<Instant>,
    yielded_until: Option<Instant>,
}

pub struct Watcher {
    config: ContainerdConfig,
    mirror: String,
    fights: HashMap<String, Fight>,
}

impl Watcher {
    pub fn new(config: ContainerdConfig, mirror: String) -> Watcher {
        Watcher {
            config,
            mirror,
            fights: HashMap::new(),
        }
    }

    /// Applies and checks once; the report says what is wrong, if anything.
    /// Never fails: a node without the mirror still pulls straight from its
    /// registries.
    pub fn pass(&mut self, now: Instant) -> NodeReport {
        let mut report = NodeReport {
            configured: true,
            ..NodeReport::default()
        };
        if let Some(problem) = managed_distribution(&self.config) {
            report.configured = false;
            report.problems.push(problem);
            return report;
        }
        match self.config.parsed_registries() {
            Ok(registries) => {
                for registry in registries {
                    self.apply_registry(&registry, now, &mut report);
                }
            }
            Err(e) => apply_failed(&mut report, &e),
        }
        if let Some(path) = &self.config.containerd_config {
            match check::check_file(path, Some(&self.config.config_path)) {
                Ok(mut found) => {
                    if let Some(version) = &self.config.runtime_version {
                        found = found.for_runtime(version);
                    }
                    for p in found.problems {
                        report.problems.push(node_problem(&p));
                    }
                    for w in found.warnings {
                        report.warnings.push(node_problem(&w));
                    }
                }
                Err(e) => report.problems.push(NodeProblem {
                    code: "ConfigUnreadable".into(),
                    message: e.to_string(),
                    ..NodeProblem::default()
                }),
            }
        }
        report
    }

    fn apply_registry(&mut self, registry: &Registry, now: Instant, report: &mut NodeReport) {
        let fight = self.fights.entry(registry.dir.clone()).or_default();
        if let Some(until) = fight.yielded_until {
            if now < until {
                report.configured = false;
                report.problems.push(contested(&self.config, registry));
                return;
            }
            *fight = Fight::default();
        }
        // The writer that would take the file back for the FIGHT_LIMIT-th
        // time keeps it: yield before overwriting its version again.
        let taken_back =
            apply::mirror_removed_by_other_writer(&self.config.config_path, registry, &self.mirror)
                .unwrap_or(false);
        if taken_back {
            forget_before(&mut fight.readopted, now);
            if fight.readopted.len() + 1 >= FIGHT_LIMIT {
                tracing::error!(dir = %registry.dir, "another writer keeps replacing containerd's hosts.toml; leaving it alone");
                fight.yielded_until = Some(now + FIGHT_WINDOW);
                report.configured = false;
                report.problems.push(contested(&self.config, registry));
                return;
            }
        }
        match apply::apply_one(&self.config.config_path, registry, &self.mirror) {
            Ok(Applied::Unchanged(_)) => {}
            Ok(Applied::Written(path)) => {
                tracing::info!(path = %path.display(), mirror = %self.mirror, "containerd hosts.toml written");
            }
            Ok(Applied::Readopted(path)) => {
                tracing::warn!(
                    path = %path.display(),
                    "another writer changed containerd's hosts.toml: its version is kept as the original and the mirror merged into it"
                );
                fight.readopted.push_back(now);
            }
            Err(e) => apply_failed(report, &e),
        }
    }
}

/// k3s and RKE2 generate containerd's config.toml and certs.d from
/// `/etc/rancher/<dist>/registries.yaml` whenever their agent starts:
/// files written there (and a backup kept beside them) would be lost, so
/// dfdaemon writes nothing and says what to set instead.
pub fn managed_distribution(config: &ContainerdConfig) -> Option<NodeProblem> {
    let paths =
        std::iter::once(config.config_path.as_path()).chain(config.containerd_config.as_deref());
    let dist = paths.into_iter().find_map(|p| {
        let p = p.to_string_lossy();
        if p.contains("/rancher/k3s/") {
            Some("k3s")
        } else if p.contains("/rancher/rke2/") {
            Some("rke2")
        } else {
            None
        }
    })?;
    let name = if dist == "k3s" { "K3s" } else { "Rke2" };
    Some(NodeProblem {
        code: format!("ManagedBy{name}"),
        message: format!(
            "{dist} regenerates {} from /etc/rancher/{dist}/registries.yaml at every agent start, so dfdaemon writes nothing there; list the mirror in registries.yaml instead (mirrors: {{\"<registry>\": {{endpoint: [\"http://<node-ip>:65001\"]}}}}) and restart the {dist} agent",
            config.config_path.display()
        ),
        ..NodeProblem::default()
    })
}

fn forget_before(readopted: &mut VecDeque<Instant>, now: Instant) {
    while readopted
        .front()
        .is_some_and(|at| now.saturating_duration_since(*at) > FIGHT_WINDOW)
    {
        readopted.pop_front();
    }
}

fn node_problem(p: &check::Problem) -> NodeProblem {
    let runtimes = if p.runtimes.is_all() {
        String::new()
    } else {
        p.runtimes.to_string()
    };
    NodeProblem {
        code: camel_code(p.code),
        message: p.message.clone(),
        runtimes,
    }
}

fn apply_failed(report: &mut NodeReport, e: &ContainerdError) {
    tracing::error!(error = %e, "configuring containerd to use the mirror failed");
    report.configured = false;
    report.problems.push(NodeProblem {
        code: "ApplyFailed".into(),
        message: e.to_string(),
        ..NodeProblem::default()
    });
}

fn contested(config: &ContainerdConfig, registry: &Registry) -> NodeProblem {
    NodeProblem {
        code: "HostsTomlContested".into(),
        message: format!(
            "another writer replaced {} {FIGHT_LIMIT} times within {} min; dfdaemon leaves it to that writer for {} min, and pulls from {} bypass the mirror meanwhile (k3s and RKE2 rewrite certs.d from registries.yaml at agent start; configuration management may too)",
            config.config_path.join(&registry.dir).join("hosts.toml").display(),
            FIGHT_WINDOW.as_secs() / 60,
            FIGHT_WINDOW.as_secs() / 60,
            registry.server.as_deref().unwrap_or("every registry"),
        ),
        ..NodeProblem::default()
    }
}

/// Re-applies and re-checks every `every` until `stop`; publishes the
/// report (with the last mirrored pull) whenever it changes.
pub async fn run(
    mut watcher: Watcher,
    first: NodeReport,
    every: Duration,
    usage: Arc<MirrorUse>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    publish: impl Fn(NodeReport) -> futures::future::BoxFuture<'static, ()>,
) {
    let mut published: Option<(NodeReport, Instant)> = None;
    let mut report = first;
    loop {
        report.last_mirrored_pull = usage.last_rfc3339();
        let now = Instant::now();
        let due = match &published {
            None => true,
            Some((last, at)) => {
                let same_but_time = NodeReport {
                    last_mirrored_pull: last.last_mirrored_pull.clone(),
                    ..report.clone()
                } == *last;
                // The first pull is news at once; later ones wait their turn.
                !same_but_time
                    || (last.last_mirrored_pull.is_none() && report.last_mirrored_pull.is_some())
                    || (last.last_mirrored_pull != report.last_mirrored_pull
                        && now.saturating_duration_since(*at) >= PULL_TIME_EVERY)
            }
        };
        if due {
            publish(report.clone()).await;
            published = Some((report.clone(), now));
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let pass = tokio::task::spawn_blocking(move || {
            let report = watcher.pass(Instant::now());
            (watcher, report)
        })
        .await;
        match pass {
            Ok((w, r)) => {
                watcher = w;
                report = r;
            }
            Err(e) => {
                tracing::error!(error = %e, "containerd watcher pass panicked; stopping the watcher");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(certs: &std::path::Path) -> Watcher {
        let config = ContainerdConfig {
            enabled: true,
            config_path: certs.to_path_buf(),
            registries: vec!["registry.example.com".into()],
            ..ContainerdConfig::default()
        };
        Watcher::new(config, "http://127.0.0.1:65001".into())
    }

    #[test]
    fn k3s_and_rke2_directories_are_refused_not_written() {
        for (dir, code) in [
            (
                "var/lib/rancher/k3s/agent/etc/containerd/certs.d",
                "ManagedByK3s",
            ),
            (
                "var/lib/rancher/rke2/agent/etc/containerd/certs.d",
                "ManagedByRke2",
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let certs = tmp.path().join(dir);
            let mut w = watcher(&certs);
            let report = w.pass(Instant::now());
            assert!(!report.configured);
            assert_eq!(report.problems[0].code, code);
            assert!(report.problems[0].message.contains("registries.yaml"));
            assert!(!certs.exists(), "nothing written under {dir}");
        }
    }

    #[test]
    fn another_writers_edit_is_kept_and_a_fight_is_reported_not_looped() {
        let tmp = tempfile::tempdir().unwrap();
        let certs = tmp.path();
        let hosts = certs.join("registry.example.com/hosts.toml");
        let mut w = watcher(certs);
        let t0 = Instant::now();
        let report = w.pass(t0);
        assert!(
            report.configured && report.problems.is_empty(),
            "{report:?}"
        );
        let ours = std::fs::read_to_string(&hosts).unwrap();
        assert_eq!(w.pass(t0).problems, vec![]);
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), ours);

        // An admin replaces the file: the edit stays, the mirror goes back in front.
        let admin = "server = \"https://registry.example.com\"\n[host.\"https://cache.internal\"]\ncapabilities = [\"pull\"]\n";
        std::fs::write(&hosts, admin).unwrap();
        let report = w.pass(t0 + Duration::from_secs(10));
        assert!(report.problems.is_empty(), "{report:?}");
        let merged = std::fs::read_to_string(&hosts).unwrap();
        assert!(merged.contains("cache.internal") && merged.contains("127.0.0.1:65001"));

        // A writer that keeps putting its version back wins after FIGHT_LIMIT rounds.
        let mut last = NodeReport::default();
        for round in 1..FIGHT_LIMIT as u64 {
            std::fs::write(&hosts, admin).unwrap();
            last = w.pass(t0 + Duration::from_secs(10 + round * 10));
        }
        assert!(!last.configured, "{last:?}");
        assert_eq!(last.problems[0].code, "HostsTomlContested");
        assert!(last.problems[0]
            .message
            .contains("registry.example.com/hosts.toml"));
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), admin);
        // Left alone while yielding, tried again after.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(w.pass(later).problems[0].code, "HostsTomlContested");
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), admin);
        let after = w.pass(t0 + FIGHT_WINDOW + Duration::from_secs(61));
        assert!(after.configured && after.problems.is_empty(), "{after:?}");
        assert!(std::fs::read_to_string(&hosts)
            .unwrap()
            .contains("127.0.0.1:65001"));
    }
}
