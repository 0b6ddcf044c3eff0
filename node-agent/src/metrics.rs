//! Prometheus metrics of one dfdaemon.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// origin, peer or cache
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// mirror, peer, admin or api
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: String,
}

pub struct Metrics {
    pub registry: Registry,
    /// Bytes obtained, by where they came from.
    pub bytes: Family<SourceLabel, Counter>,
    pub pieces: Family<SourceLabel, Counter>,
    pub upload_bytes: Counter,
    pub upload_pieces: Counter,
    pub upload_rejected: Counter,
    /// Connections turned away for being over a listener's limits.
    pub connections_refused: Family<ListenerLabel, Counter>,
    pub tasks: Family<ResultLabel, Counter>,
    pub failures: Family<ReasonLabel, Counter>,
    pub cache_bytes: Gauge<u64, AtomicU64>,
    pub evictions: Counter,
    /// Bytes evicted, by reason (quota, watermark, ttl).
    pub evicted_bytes: Family<ReasonLabel, Counter>,
    /// Used share (0..1) of the filesystem holding the cache, as kubelet
    /// counts it (blocks not available to ordinary writers).
    pub cache_fs_used_ratio: Gauge<f64, AtomicU64>,
    /// Requests to and bytes from the origin, per task (dropped when the
    /// task leaves the store): N nodes reading the same data should cost
    /// the origin one read.
    pub origin_requests: Family<TaskLabel, Counter>,
    pub origin_task_bytes: Family<TaskLabel, Counter>,
    /// Scheduler replicas this host currently resolves and announces to.
    pub schedulers_resolved: Gauge,
    pub mirror: crate::mirror::metrics::MirrorMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dfdaemon");
        let bytes = Family::<SourceLabel, Counter>::default();
        let pieces = Family::<SourceLabel, Counter>::default();
        let upload_bytes = Counter::default();
        let upload_pieces = Counter::default();
        let upload_rejected = Counter::default();
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections turned away for being over a listener's connection limits",
            connections_refused.clone(),
        );
        let tasks = Family::<ResultLabel, Counter>::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let cache_bytes = Gauge::<u64, AtomicU64>::default();
        let evictions = Counter::default();
        let evicted_bytes = Family::<ReasonLabel, Counter>::default();
        // Every reason from the start, at 0, so rates exist before the
        // first eviction.
        for reason in ["quota", "watermark", "ttl"] {
            evicted_bytes
                .get_or_create(&ReasonLabel { reason })
                .inc_by(0);
        }
        let cache_fs_used_ratio = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "cache_evicted_bytes",
            "Bytes evicted from the content store, by reason (quota, watermark, ttl)",
            evicted_bytes.clone(),
        );
        registry.register(
            "cache_fs_used_ratio",
            "Used share of the filesystem holding the content store (0..1)",
            cache_fs_used_ratio.clone(),
        );
        let origin_requests = Family::<TaskLabel, Counter>::default();
        let origin_task_bytes = Family::<TaskLabel, Counter>::default();
        registry.register(
            "origin_requests",
            "Requests sent to the origin, per task",
            origin_requests.clone(),
        );
        registry.register(
            "origin_task_bytes",
            "Bytes fetched from the origin, per task",
            origin_task_bytes.clone(),
        );
        registry.register(
            "download_bytes",
            "Bytes obtained, by source (origin, peer, cache)",
            bytes.clone(),
        );
        registry.register(
            "download_pieces",
            "Pieces obtained, by source",
            pieces.clone(),
        );
        registry.register(
            "upload_bytes",
            "Piece bytes served to other peers",
            upload_bytes.clone(),
        );
        registry.register(
            "upload_pieces",
            "Pieces served to other peers",
            upload_pieces.clone(),
        );
        registry.register(
            "upload_rejected",
            "Piece requests refused because every upload slot was busy",
            upload_rejected.clone(),
        );
        registry.register("tasks", "Finished downloads, by result", tasks.clone());
        registry.register("failures", "Failures, by reason", failures.clone());
        registry.register(
            "cache_bytes",
            "Bytes held in the content store",
            cache_bytes.clone(),
        );
        registry.register(
            "cache_evictions",
            "Tasks evicted by garbage collection",
            evictions.clone(),
        );
        let schedulers_resolved = Gauge::default();
        registry.register(
            "schedulers_resolved",
            "Scheduler replicas this host resolves and announces to",
            schedulers_resolved.clone(),
        );
        let mirror = crate::mirror::metrics::MirrorMetrics::register(&mut registry);
        Metrics {
            schedulers_resolved,
            mirror,
            registry,
            bytes,
            pieces,
            upload_bytes,
            upload_pieces,
            upload_rejected,
            connections_refused,
            tasks,
            failures,
            cache_bytes,
            evictions,
            evicted_bytes,
            cache_fs_used_ratio,
            origin_requests,
            origin_task_bytes,
        }
    }

    pub fn obtained(&self, source: &'static str, bytes: u64) {
        self.bytes
            .get_or_create(&SourceLabel { source })
            .inc_by(bytes);
        self.pieces.get_or_create(&SourceLabel { source }).inc();
    }

    pub fn origin_request(&self, task: &str) {
        self.origin_requests
            .get_or_create(&TaskLabel {
                task: task.to_string(),
            })
            .inc();
    }

    pub fn origin_bytes(&self, task: &str, bytes: u64) {
        self.origin_task_bytes
            .get_or_create(&TaskLabel {
                task: task.to_string(),
            })
            .inc_by(bytes);
    }

    /// Drops a task's per-task series (it left the store).
    pub fn forget_task(&self, task: &str) {
        let label = TaskLabel {
            task: task.to_string(),
        };
        self.origin_requests.remove(&label);
        self.origin_task_bytes.remove(&label);
    }

    pub fn evicted(&self, reason: &'static str, bytes: u64) {
        self.evictions.inc();
        self.evicted_bytes
            .get_or_create(&ReasonLabel { reason })
            .inc_by(bytes);
    }

    pub fn failure(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn task_done(&self, result: &'static str) {
        self.tasks.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicted_bytes_by_reason_and_the_filesystem_share() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for reason in ["quota", "watermark", "ttl"] {
            let line = format!("dfdaemon_cache_evicted_bytes_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{text}");
        }
        metrics.evicted("watermark", 4096);
        metrics.cache_fs_used_ratio.set(0.5);
        let text = metrics.encode();
        assert!(text.contains("dfdaemon_cache_evicted_bytes_total{reason=\"watermark\"} 4096"));
        assert!(text.contains("dfdaemon_cache_evictions_total 1"));
        assert!(text.contains("dfdaemon_cache_fs_used_ratio 0.5"));
    }
}
