//! Mirror metrics: requests by route and result, blob bytes by where they
//! came from, and upstream authorization checks.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// base, manifest, blob or invalid
    pub route: &'static str,
    /// The status class answered: 2xx, 3xx, 4xx, 5xx.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlobSourceLabel {
    /// For bytes: local (complete in this node's store when asked), swarm
    /// (fetched from peers or the origin while streaming; the download
    /// metrics split those), upstream (proxied unchanged, e.g. behind a
    /// loop guard). For whole blobs: local, peer, origin or mixed.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthResultLabel {
    /// cached, allowed, denied, offline_allowed, offline_allowed_public
    /// (seen read anonymously by another member), offline_denied
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct MirrorMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub blob_bytes: Family<BlobSourceLabel, Counter>,
    pub auth_checks: Family<AuthResultLabel, Counter>,
    pub blobs_served: Family<BlobSourceLabel, Counter>,
    pub range_requests: Family<BlobSourceLabel, Counter>,
    /// containerd's manifest requests answered 2xx: pulls that really came
    /// through the mirror.
    pub containerd_pulls: Counter,
    pub last_containerd_pull: Gauge,
}

impl MirrorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = MirrorMetrics::default();
        registry.register(
            "mirror_requests",
            "Registry mirror requests, by route and answered status class",
            m.requests.clone(),
        );
        registry.register(
            "mirror_blob_bytes",
            "Blob bytes the mirror sent to clients, by source",
            m.blob_bytes.clone(),
        );
        registry.register(
            "mirror_blobs_served",
            "Whole blobs the mirror sent to clients, by where their bytes came from (local, peer, origin, mixed)",
            m.blobs_served.clone(),
        );
        registry.register(
            "mirror_range_requests",
            "Blob range requests answered, by where the touched pieces came from (local, peer, origin)",
            m.range_requests.clone(),
        );
        registry.register(
            "mirror_containerd_manifests",
            "Manifest requests from containerd (they carry ?ns=) answered 2xx: pulls that came through the mirror",
            m.containerd_pulls.clone(),
        );
        registry.register(
            "mirror_last_containerd_pull_timestamp_seconds",
            "When containerd last pulled a manifest through the mirror (Unix time; 0: never since start)",
            m.last_containerd_pull.clone(),
        );
        registry.register(
            "mirror_auth_checks",
            "Upstream authorization checks before serving a blob, by result",
            m.auth_checks.clone(),
        );
        m
    }

    pub fn request(&self, route: &'static str, status: u16) {
        let result = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels { route, result })
            .inc();
    }

    pub fn blob_bytes(&self, source: &'static str, n: u64) {
        self.blob_bytes
            .get_or_create(&BlobSourceLabel { source })
            .inc_by(n);
    }

    pub fn blob_served(&self, source: &'static str) {
        self.blobs_served
            .get_or_create(&BlobSourceLabel { source })
            .inc();
    }

    pub fn range_served(&self, source: &'static str) {
        self.range_requests
            .get_or_create(&BlobSourceLabel { source })
            .inc();
    }

    pub fn auth(&self, result: &'static str) {
        self.auth_checks
            .get_or_create(&AuthResultLabel { result })
            .inc();
    }
}
