//! Objects dfdaemons saw their registry serve without credentials. While a
//! registry is down, a node that never read an object itself may serve it
//! from the cluster to an anonymous caller when some member saw it public
//! (the default offline policy), and never otherwise.
//!
//! One member's word is not enough: a compromised node holding a private
//! blob (read with its pod's credentials) would otherwise make every node
//! serve it to anonymous callers during an outage. An object counts as
//! anonymously readable when a seed saw it so, or two distinct members did.
//! Soft state: forgotten after the TTL, re-learned from the next pulls.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::RegistryObject;

use crate::state::ScheduleError;

/// Objects kept in all; the least recently seen 1 % go when it is full.
const MAX_OBJECTS: usize = 200_000;
/// Objects seen by one member so far, awaiting a second: kept apart, so a
/// flood of claims never pushes confirmed objects out.
const MAX_PENDING: usize = 50_000;
/// Distinct members whose reports confirm an object.
const REPORTERS: usize = 2;
const MAX_FIELD: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    registry: String,
    repository: String,
    digest: String,
}

fn key_of(object: Option<&RegistryObject>) -> Result<Key, ScheduleError> {
    let object =
        object.ok_or_else(|| ScheduleError::InvalidArgument("object is missing".into()))?;
    for (what, value) in [
        ("registry", &object.registry),
        ("repository", &object.repository),
    ] {
        if value.is_empty() || value.len() > MAX_FIELD {
            return Err(ScheduleError::InvalidArgument(format!(
                "{what} must be 1 to {MAX_FIELD} bytes"
            )));
        }
    }
    if crate::digests::parse(&object.digest).is_none() {
        return Err(ScheduleError::InvalidArgument(format!(
            "digest {:?} is not sha256:<64 lower-case hex>",
            object.digest
        )));
    }
    Ok(Key {
        registry: object.registry.to_ascii_lowercase(),
        repository: object.repository.clone(),
        digest: object.digest.clone(),
    })
}

#[derive(Debug, Default)]
pub struct AnonymousReads {
    seen: HashMap<Key, Instant>,
    /// Object → the members that reported it so far, since when.
    pending: HashMap<Key, (Vec<String>, Instant)>,
}

impl AnonymousReads {
    /// `reporter` saw `object` read without credentials; `trusted` when it
    /// is a seed.
    pub fn report(
        &mut self,
        object: Option<&RegistryObject>,
        reporter: &str,
        trusted: bool,
        now: Instant,
    ) -> Result<(), ScheduleError> {
        let key = key_of(object)?;
        if !trusted && !self.seen.contains_key(&key) {
            if !self.pending.contains_key(&key) && self.pending.len() >= MAX_PENDING {
                self.pending.retain(|_, (_, at)| {
                    now.saturating_duration_since(*at) < std::time::Duration::from_secs(60)
                });
                if self.pending.len() >= MAX_PENDING {
                    return Ok(());
                }
            }
            let (reporters, at) = self
                .pending
                .entry(key.clone())
                .or_insert_with(|| (Vec::new(), now));
            if !reporters.iter().any(|r| r == reporter) {
                reporters.push(reporter.to_string());
            }
            *at = now;
            if reporters.len() < REPORTERS {
                return Ok(());
            }
            self.pending.remove(&key);
        }
        if !self.seen.contains_key(&key) && self.seen.len() >= MAX_OBJECTS {
            self.evict_oldest();
        }
        self.seen.insert(key, now);
        Ok(())
    }

    /// How long ago an anonymous read of `object` was last seen, within `ttl`.
    pub fn check(
        &self,
        object: Option<&RegistryObject>,
        now: Instant,
        ttl: Duration,
    ) -> Result<Option<Duration>, ScheduleError> {
        let key = key_of(object)?;
        Ok(self
            .seen
            .get(&key)
            .map(|at| now.saturating_duration_since(*at))
            .filter(|age| *age <= ttl))
    }

    pub fn sweep(&mut self, now: Instant, ttl: Duration) {
        self.seen
            .retain(|_, at| now.saturating_duration_since(*at) <= ttl);
        self.pending
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= ttl);
    }

    pub fn count(&self) -> usize {
        self.seen.len()
    }

    fn evict_oldest(&mut self) {
        let mut by_age: Vec<(Instant, Key)> =
            self.seen.iter().map(|(k, at)| (*at, k.clone())).collect();
        by_age.sort_by_key(|(at, _)| *at);
        let drop = (MAX_OBJECTS / 100).max(1);
        for (_, key) in by_age.into_iter().take(drop) {
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(repo: &str, c: char) -> RegistryObject {
        RegistryObject {
            registry: "Registry.example".into(),
            repository: repo.into(),
            digest: format!("sha256:{}", c.to_string().repeat(64)),
        }
    }

    #[test]
    fn seen_objects_within_the_ttl_only() {
        let mut reads = AnonymousReads::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        reads
            .report(Some(&object("public", 'a')), "seed", true, now)
            .unwrap();
        assert!(reads
            .check(Some(&object("public", 'a')), now, ttl)
            .unwrap()
            .is_some());
        // Registry names are case-insensitive; repositories and digests not.
        let mut lower = object("public", 'a');
        lower.registry = "registry.example".into();
        assert!(reads.check(Some(&lower), now, ttl).unwrap().is_some());
        // Another repository, another blob: not seen.
        assert!(reads
            .check(Some(&object("private", 'a')), now, ttl)
            .unwrap()
            .is_none());
        assert!(reads
            .check(Some(&object("public", 'b')), now, ttl)
            .unwrap()
            .is_none());
        let later = now + Duration::from_secs(61);
        assert!(reads
            .check(Some(&object("public", 'a')), later, ttl)
            .unwrap()
            .is_none());
        reads.sweep(later, ttl);
        assert_eq!(reads.count(), 0);
    }

    #[test]
    fn one_member_cannot_make_an_object_public() {
        let mut reads = AnonymousReads::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let private = object("private", 'f');
        for _ in 0..3 {
            reads.report(Some(&private), "evil", false, now).unwrap();
        }
        assert!(reads.check(Some(&private), now, ttl).unwrap().is_none());
        // A second member seeing it served anonymously: it is public.
        reads.report(Some(&private), "other", false, now).unwrap();
        assert!(reads.check(Some(&private), now, ttl).unwrap().is_some());
        // A flood of single claims is bounded and pushes nothing out.
        for i in 0..MAX_PENDING + 10 {
            let o = RegistryObject {
                repository: format!("r{i}"),
                ..object("x", 'a')
            };
            reads.report(Some(&o), "evil", false, now).unwrap();
        }
        assert!(reads.pending.len() <= MAX_PENDING);
        assert!(reads.check(Some(&private), now, ttl).unwrap().is_some());
    }

    #[test]
    fn malformed_objects_are_refused_and_the_book_is_bounded() {
        let mut reads = AnonymousReads::default();
        let now = Instant::now();
        let mut bad = object("public", 'a');
        bad.digest = "sha256:ABC".into();
        assert!(reads.report(Some(&bad), "seed", true, now).is_err());
        assert!(reads.report(None, "seed", true, now).is_err());
        let mut long = object("public", 'a');
        long.repository = "r".repeat(MAX_FIELD + 1);
        assert!(reads.report(Some(&long), "seed", true, now).is_err());
        for i in 0..MAX_OBJECTS + 10 {
            let o = RegistryObject {
                repository: format!("r{i}"),
                ..object("x", 'a')
            };
            reads.report(Some(&o), "seed", true, now).unwrap();
        }
        assert!(reads.count() <= MAX_OBJECTS);
    }
}
