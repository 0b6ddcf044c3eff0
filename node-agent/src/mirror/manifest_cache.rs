//! Manifests seen recently, kept in memory so images whose manifests were
//! pulled before still start while the registry is down. Tags expire after
//! the configured TTL; digests are content-addressed and never go stale.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The distribution spec caps manifests at 4 MiB.
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Total bytes kept; the oldest entries go first.
const MAX_TOTAL: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ManifestKey {
    pub registry: String,
    pub name: String,
    pub reference: String,
    /// A tag can resolve to an index or a single manifest depending on
    /// what the client accepts.
    pub accept: String,
}

#[derive(Debug, Clone)]
pub struct CachedManifest {
    pub content_type: Option<String>,
    pub digest: Option<String>,
    pub body: Bytes,
    pub fetched: Instant,
}

pub struct ManifestCache {
    tag_ttl: Duration,
    entries: Mutex<HashMap<ManifestKey, CachedManifest>>,
}

impl ManifestCache {
    pub fn new(tag_ttl: Duration) -> Self {
        ManifestCache {
            tag_ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn put(&self, key: ManifestKey, manifest: CachedManifest) {
        if manifest.body.len() > MAX_MANIFEST {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(key, manifest);
        let mut total: usize = entries.values().map(|m| m.body.len()).sum();
        while total > MAX_TOTAL {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, m)| m.fetched)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(m) = entries.remove(&oldest) {
                total -= m.body.len();
            }
        }
    }

    /// A cached manifest still usable for `key`: any age for a digest, at
    /// most the TTL for a tag.
    pub fn get(&self, key: &ManifestKey, by_digest: bool) -> Option<CachedManifest> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let found = entries.get(key)?;
        (by_digest || found.fetched.elapsed() < self.tag_ttl).then(|| found.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reference: &str) -> ManifestKey {
        ManifestKey {
            registry: "r".into(),
            name: "app".into(),
            reference: reference.into(),
            accept: "*/*".into(),
        }
    }

    fn manifest(body: &'static [u8]) -> CachedManifest {
        CachedManifest {
            content_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            digest: None,
            body: Bytes::from_static(body),
            fetched: Instant::now(),
        }
    }

    #[test]
    fn tags_expire_digests_do_not() {
        let cache = ManifestCache::new(Duration::from_millis(30));
        cache.put(key("v1"), manifest(b"{}"));
        cache.put(key("sha256:x"), manifest(b"{}"));
        assert!(cache.get(&key("v1"), false).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(&key("v1"), false).is_none());
        assert!(cache.get(&key("sha256:x"), true).is_some());
        assert!(cache.get(&key("v2"), false).is_none());
    }

    #[test]
    fn oversized_manifests_are_not_kept() {
        let cache = ManifestCache::new(Duration::from_secs(60));
        let mut big = manifest(b"");
        big.body = Bytes::from(vec![0u8; MAX_MANIFEST + 1]);
        cache.put(key("v1"), big);
        assert!(cache.get(&key("v1"), false).is_none());
    }
}
