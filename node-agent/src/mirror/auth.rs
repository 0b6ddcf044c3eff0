//! Remembers which credentials the upstream let read what, so content
//! cached in the cluster is only handed to callers the registry itself would
//! serve, without asking the registry on every request.
//!
//! A blob's yes is for that blob in that repository: a registry scopes blobs
//! to repositories, so a yes for one repository says nothing about a blob
//! linked only to another (a private layer asked for under a public name).

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::OfflinePolicy;

/// Entries kept at most; past that the oldest are dropped (a dropped entry
/// only costs one more upstream check).
const MAX_ENTRIES: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthKey {
    pub registry: String,
    pub repository: String,
    /// The blob's digest, or "" for the repository itself (its manifests
    /// and listings, which are found under the repository's name).
    pub object: String,
    /// sha256 of the Authorization header ("" without one): the credential
    /// itself is never kept in memory.
    pub credential: String,
}

impl AuthKey {
    /// The key of a repository's manifests and listings.
    pub fn repository(registry: &str, repository: &str, authorization: Option<&[u8]>) -> Self {
        Self::blob(registry, repository, "", authorization)
    }

    /// The key of one blob read under `repository`.
    pub fn blob(
        registry: &str,
        repository: &str,
        digest: &str,
        authorization: Option<&[u8]>,
    ) -> Self {
        AuthKey {
            registry: registry.to_string(),
            repository: repository.to_string(),
            object: digest.to_string(),
            credential: authorization
                .map(|a| hex::encode(Sha256::digest(a)))
                .unwrap_or_default(),
        }
    }

    /// The same object, asked for without credentials.
    pub fn anonymous(&self) -> AuthKey {
        AuthKey {
            credential: String::new(),
            ..self.clone()
        }
    }
}

pub struct AuthCache {
    ttl: Duration,
    allowed: Mutex<HashMap<AuthKey, Instant>>,
}

impl AuthCache {
    pub fn new(ttl: Duration) -> Self {
        AuthCache {
            ttl,
            allowed: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AuthKey, Instant>> {
        self.allowed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The upstream allowed `key` within the TTL.
    pub fn is_fresh(&self, key: &AuthKey) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    pub fn record_allowed(&self, key: &AuthKey) {
        let mut allowed = self.lock();
        if allowed.len() >= MAX_ENTRIES && !allowed.contains_key(key) {
            if let Some(oldest) = allowed
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            {
                allowed.remove(&oldest);
            }
        }
        allowed.insert(key.clone(), Instant::now());
    }

    /// The upstream denied `key`: forget any earlier yes.
    pub fn record_denied(&self, key: &AuthKey) {
        self.lock().remove(key);
    }

    /// Whether cached content may be served to `key` while the upstream
    /// cannot be asked.
    pub fn allowed_offline(&self, key: &AuthKey, policy: OfflinePolicy) -> bool {
        let allowed = self.lock();
        match policy {
            OfflinePolicy::Deny => false,
            OfflinePolicy::Any => true,
            OfflinePolicy::Anonymous => allowed.contains_key(&key.anonymous()),
            OfflinePolicy::Credentials => {
                allowed.contains_key(&key.anonymous()) || allowed.contains_key(key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_within_ttl_and_denial_forgets() {
        let cache = AuthCache::new(Duration::from_millis(50));
        let key = AuthKey::blob("r", "app", "sha256:a", Some(b"Bearer x"));
        assert!(!cache.is_fresh(&key));
        cache.record_allowed(&key);
        assert!(cache.is_fresh(&key));
        assert!(!cache.is_fresh(&AuthKey::blob("r", "app", "sha256:a", Some(b"Bearer y"))));
        assert!(!cache.is_fresh(&AuthKey::blob("r", "other", "sha256:a", Some(b"Bearer x"))));
        // A yes for one blob (or the repository) is no yes for another blob.
        assert!(!cache.is_fresh(&AuthKey::blob("r", "app", "sha256:b", Some(b"Bearer x"))));
        assert!(!cache.is_fresh(&AuthKey::repository("r", "app", Some(b"Bearer x"))));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.is_fresh(&key));
        cache.record_allowed(&key);
        cache.record_denied(&key);
        assert!(!cache.is_fresh(&key));
        assert!(!key.credential.contains('x'));
    }

    #[test]
    fn offline_policies() {
        let cache = AuthCache::new(Duration::from_secs(60));
        let private = AuthKey::blob("r", "private", "sha256:p", Some(b"Basic abc"));
        let public_anon = AuthKey::blob("r", "public", "sha256:q", None);
        let public_cred = AuthKey::blob("r", "public", "sha256:q", Some(b"Basic abc"));
        cache.record_allowed(&private);
        cache.record_allowed(&public_anon);
        for policy in [OfflinePolicy::Anonymous, OfflinePolicy::Credentials] {
            assert!(cache.allowed_offline(&public_cred, policy));
            assert!(cache.allowed_offline(&public_anon, policy));
        }
        assert!(!cache.allowed_offline(&private, OfflinePolicy::Anonymous));
        assert!(cache.allowed_offline(&private, OfflinePolicy::Credentials));
        assert!(!cache.allowed_offline(
            &AuthKey::blob("r", "private", "sha256:p", Some(b"Basic other")),
            OfflinePolicy::Credentials
        ));
        // The private blob asked for under the public name: never read there.
        for policy in [OfflinePolicy::Anonymous, OfflinePolicy::Credentials] {
            assert!(!cache.allowed_offline(&AuthKey::blob("r", "public", "sha256:p", None), policy));
        }
        assert!(!cache.allowed_offline(&public_anon, OfflinePolicy::Deny));
    }
}
