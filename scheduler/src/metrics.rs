//! Prometheus metrics, exposed in the OpenMetrics text format on the admin
//! port's `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use proto::{Decision, FailureReason};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostTypeLabels {
    host_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: String,
}

/// Point-in-time sizes of the state, computed at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub normal_hosts: usize,
    pub seed_hosts: usize,
    pub tasks: usize,
    pub peers: usize,
}

pub struct Metrics {
    registry: Registry,
    hosts: Family<HostTypeLabels, Gauge>,
    tasks: Gauge,
    peers: Gauge,
    registrations: Family<DecisionLabels, Counter>,
    source_elections: Counter,
    parent_failures: Family<ReasonLabels, Counter>,
    host_expiries: Counter,
    quarantines: Counter,
    requests: Family<RequestLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dragonfly_scheduler");
        let m = Metrics {
            hosts: Family::default(),
            tasks: Gauge::default(),
            peers: Gauge::default(),
            registrations: Family::default(),
            source_elections: Counter::default(),
            parent_failures: Family::default(),
            host_expiries: Counter::default(),
            quarantines: Counter::default(),
            requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register("hosts", "Known hosts by type", m.hosts.clone());
        registry.register("tasks", "Known tasks", m.tasks.clone());
        registry.register("peers", "Peers over all tasks", m.peers.clone());
        registry.register(
            "registrations",
            "Peer registrations by scheduling decision",
            m.registrations.clone(),
        );
        registry.register(
            "source_elections",
            "Back-to-source downloaders elected (including seeds triggered)",
            m.source_elections.clone(),
        );
        registry.register(
            "parent_failures",
            "Parent failures reported by peers, by reason",
            m.parent_failures.clone(),
        );
        registry.register(
            "host_expiries",
            "Hosts forgotten because their heartbeat stopped",
            m.host_expiries.clone(),
        );
        registry.register(
            "host_quarantines",
            "Hosts quarantined for serving pieces that fail the recorded digests",
            m.quarantines.clone(),
        );
        registry.register(
            "requests",
            "gRPC requests by method and status code",
            m.requests.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn registration(&self, decision: Decision) {
        let decision = match decision {
            Decision::FromPeers => "from_peers",
            Decision::BackToSource => "back_to_source",
            Decision::TriggerSeed => "trigger_seed",
        };
        self.registrations
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    pub fn source_elected(&self) {
        self.source_elections.inc();
    }

    pub fn host_quarantined(&self) {
        self.quarantines.inc();
    }

    pub fn parent_failure(&self, reason: i32) {
        let reason = match FailureReason::try_from(reason) {
            Ok(FailureReason::Unspecified) => "unspecified",
            Ok(FailureReason::Connect) => "connect",
            Ok(FailureReason::Timeout) => "timeout",
            Ok(FailureReason::DigestMismatch) => "digest_mismatch",
            Ok(FailureReason::NotFound) => "not_found",
            Ok(FailureReason::Slow) => "slow",
            Ok(FailureReason::ServerError) => "server_error",
            Err(_) => "unknown",
        };
        self.parent_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn hosts_expired(&self, count: usize) {
        self.host_expiries.inc_by(count as u64);
    }

    pub fn request(&self, method: &'static str, code: tonic::Code) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                code: format!("{code:?}"),
            })
            .inc();
    }

    pub fn set_gauges(&self, g: Gauges) {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.hosts
            .get_or_create(&HostTypeLabels {
                host_type: "normal",
            })
            .set(as_i64(g.normal_hosts));
        self.hosts
            .get_or_create(&HostTypeLabels { host_type: "seed" })
            .set(as_i64(g.seed_hosts));
        self.tasks.set(as_i64(g.tasks));
        self.peers.set(as_i64(g.peers));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let m = Metrics::new();
        m.registration(Decision::TriggerSeed);
        m.source_elected();
        m.parent_failure(FailureReason::Connect as i32);
        m.parent_failure(999);
        m.hosts_expired(2);
        m.request("register_peer", tonic::Code::Ok);
        m.set_gauges(Gauges {
            normal_hosts: 3,
            seed_hosts: 1,
            tasks: 5,
            peers: 7,
        });
        let text = m.encode().unwrap();
        for needle in [
            "dragonfly_scheduler_hosts{host_type=\"normal\"} 3",
            "dragonfly_scheduler_hosts{host_type=\"seed\"} 1",
            "dragonfly_scheduler_tasks 5",
            "dragonfly_scheduler_peers 7",
            "dragonfly_scheduler_registrations_total{decision=\"trigger_seed\"} 1",
            "dragonfly_scheduler_source_elections_total 1",
            "dragonfly_scheduler_parent_failures_total{reason=\"connect\"} 1",
            "dragonfly_scheduler_parent_failures_total{reason=\"unknown\"} 1",
            "dragonfly_scheduler_host_expiries_total 2",
            "dragonfly_scheduler_requests_total{method=\"register_peer\",code=\"Ok\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
