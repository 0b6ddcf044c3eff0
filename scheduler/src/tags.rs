//! Image tags dfdaemons resolved at their registries (tag -> manifest
//! digest), kept so a node that never saw a tag can resolve it from the
//! cluster while the registry is down. Soft state like everything here:
//! forgotten after a TTL, re-learned from the next pulls.
//!
//! A tag is resolved only to what a seed reported, or what two distinct
//! members reported alike: one compromised member cannot point a tag at a
//! manifest of its choosing (an old, vulnerable image). Until a new answer
//! is confirmed, the confirmed one stands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::{ImageTag, ReportTagRequest, TagRecord};

use crate::state::ScheduleError;

/// Representations kept per tag (an index for some clients, a single
/// manifest for others).
const MAX_RECORDS_PER_TAG: usize = 4;
/// Tags kept in all; the least recently seen go first.
const MAX_TAGS: usize = 100_000;
const MAX_FIELD: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    registry: String,
    repository: String,
    tag: String,
}

/// Distinct members whose alike reports confirm an answer.
const REPORTERS: usize = 2;
/// Unconfirmed answers kept per tag; the oldest goes first.
const MAX_PENDING_PER_TAG: usize = 8;
/// Unconfirmed answers one reporter backs per tag.
const MAX_PENDING_PER_REPORTER: usize = 2;

#[derive(Debug, Clone)]
struct Record {
    digest: String,
    media_type: String,
    seen: Instant,
    /// Who reported it while unconfirmed (at most `REPORTERS`).
    reporters: Vec<String>,
    confirmed: bool,
}

#[derive(Debug, Default)]
pub struct TagBook {
    tags: HashMap<Key, Vec<Record>>,
}

fn key_of(tag: Option<&ImageTag>) -> Result<Key, ScheduleError> {
    let tag = tag.ok_or_else(|| ScheduleError::InvalidArgument("tag is missing".into()))?;
    for (what, value) in [
        ("registry", &tag.registry),
        ("repository", &tag.repository),
        ("tag", &tag.tag),
    ] {
        if value.is_empty() || value.len() > MAX_FIELD {
            return Err(ScheduleError::InvalidArgument(format!(
                "{what} must be 1 to {MAX_FIELD} bytes"
            )));
        }
    }
    Ok(Key {
        registry: tag.registry.to_ascii_lowercase(),
        repository: tag.repository.clone(),
        tag: tag.tag.clone(),
    })
}

fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl TagBook {
    /// Takes `req` from its host; `trusted` when that host is a seed.
    pub fn report(
        &mut self,
        req: &ReportTagRequest,
        trusted: bool,
        now: Instant,
    ) -> Result<(), ScheduleError> {
        let key = key_of(req.tag.as_ref())?;
        if !valid_digest(&req.digest) {
            return Err(ScheduleError::InvalidArgument(format!(
                "digest {:?} is not sha256:<64 hex>",
                req.digest
            )));
        }
        if req.media_type.len() > MAX_FIELD {
            return Err(ScheduleError::InvalidArgument("media type too long".into()));
        }
        if !self.tags.contains_key(&key) && self.tags.len() >= MAX_TAGS {
            self.evict_oldest();
        }
        let records = self.tags.entry(key).or_default();
        let same = |r: &Record| r.media_type == req.media_type && r.digest == req.digest;
        // A reporter backs one pending answer per media type: its latest.
        for r in records.iter_mut().filter(|r| !r.confirmed && !same(r)) {
            if r.media_type == req.media_type {
                r.reporters.retain(|h| *h != req.host_id);
            }
        }
        records.retain(|r| r.confirmed || !r.reporters.is_empty());
        let index = match records.iter().position(same) {
            Some(i) => i,
            None => {
                records.push(Record {
                    digest: req.digest.clone(),
                    media_type: req.media_type.clone(),
                    seen: now,
                    reporters: Vec::new(),
                    confirmed: false,
                });
                records.len() - 1
            }
        };
        let record = &mut records[index];
        if !record.confirmed && !record.reporters.contains(&req.host_id) {
            record.reporters.push(req.host_id.clone());
        }
        record.seen = now;
        // A reporter backs a few pending answers per tag at most (its
        // latest), so one member's flood cannot push out others' answers.
        let mut backed = 0;
        for (i, r) in records.iter_mut().enumerate().rev() {
            if i != index && !r.confirmed && r.reporters.contains(&req.host_id) {
                backed += 1;
                if backed >= MAX_PENDING_PER_REPORTER {
                    r.reporters.retain(|h| *h != req.host_id);
                }
            }
        }
        let record = &mut records[index];
        if trusted || record.reporters.len() >= REPORTERS {
            record.confirmed = true;
            record.reporters.clear();
            let digest = record.digest.clone();
            // The tag moved: the confirmed answer replaces the older one.
            records
                .retain(|r| !(r.confirmed && r.media_type == req.media_type && r.digest != digest));
        }
        records.retain(|r| r.confirmed || !r.reporters.is_empty());
        records.sort_by_key(|r| std::cmp::Reverse(r.seen));
        let mut confirmed = 0;
        let mut pending = 0;
        records.retain(|r| {
            let n = if r.confirmed {
                &mut confirmed
            } else {
                &mut pending
            };
            *n += 1;
            *n <= if r.confirmed {
                MAX_RECORDS_PER_TAG
            } else {
                MAX_PENDING_PER_TAG
            }
        });
        Ok(())
    }

    /// What the tag resolved to, most recent first, within `ttl`.
    pub fn resolve(
        &self,
        tag: Option<&ImageTag>,
        now: Instant,
        ttl: Duration,
    ) -> Result<Vec<TagRecord>, ScheduleError> {
        let key = key_of(tag)?;
        Ok(self
            .tags
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|r| r.confirmed && now.saturating_duration_since(r.seen) <= ttl)
            .map(|r| TagRecord {
                digest: r.digest.clone(),
                media_type: r.media_type.clone(),
                age_ms: now.saturating_duration_since(r.seen).as_millis() as u64,
            })
            .collect())
    }

    /// Forgets records older than `ttl`.
    pub fn sweep(&mut self, now: Instant, ttl: Duration) {
        for records in self.tags.values_mut() {
            records.retain(|r| now.saturating_duration_since(r.seen) <= ttl);
        }
        self.tags.retain(|_, records| !records.is_empty());
    }

    pub fn count(&self) -> usize {
        self.tags.len()
    }

    /// Makes room by dropping the least recently seen 1 % at once, so a
    /// full book is not scanned again for every new tag.
    fn evict_oldest(&mut self) {
        let mut by_age: Vec<(Instant, Key)> = self
            .tags
            .iter()
            .filter_map(|(k, records)| Some((records.first()?.seen, k.clone())))
            .collect();
        if by_age.is_empty() {
            return;
        }
        let drop = (by_age.len() / 100).max(1);
        by_age.select_nth_unstable_by_key(drop - 1, |(seen, _)| *seen);
        for (_, key) in by_age.into_iter().take(drop) {
            self.tags.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(t: &str) -> ImageTag {
        ImageTag {
            registry: "Registry:5000".into(),
            repository: "library/app".into(),
            tag: t.into(),
        }
    }

    fn report(digest_char: char, media_type: &str) -> ReportTagRequest {
        ReportTagRequest {
            tag: Some(tag("v1")),
            digest: format!("sha256:{}", digest_char.to_string().repeat(64)),
            media_type: media_type.into(),
            host_id: "h1".into(),
        }
    }

    #[test]
    fn latest_answer_per_media_type_most_recent_first() {
        let mut book = TagBook::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        book.report(&report('a', "index"), true, t0).unwrap();
        book.report(&report('b', "manifest"), true, t0 + Duration::from_secs(1))
            .unwrap();
        book.report(&report('c', "index"), true, t0 + Duration::from_secs(2))
            .unwrap();
        let found = book
            .resolve(Some(&tag("v1")), t0 + Duration::from_secs(3), ttl)
            .unwrap();
        let digests: Vec<char> = found
            .iter()
            .map(|r| r.digest.chars().last().unwrap())
            .collect();
        assert_eq!(digests, vec!['c', 'b']);
        assert_eq!(found[0].age_ms, 1000);
        // Registry host names are case-insensitive.
        let mut lower = tag("v1");
        lower.registry = "registry:5000".into();
        assert_eq!(book.resolve(Some(&lower), t0, ttl).unwrap().len(), 2);
    }

    #[test]
    fn one_member_cannot_point_a_tag_elsewhere() {
        let mut book = TagBook::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let from = |c: char, host: &str| ReportTagRequest {
            host_id: host.into(),
            ..report(c, "index")
        };
        let resolved = |book: &TagBook| -> Vec<char> {
            book.resolve(Some(&tag("v1")), t0, ttl)
                .unwrap()
                .iter()
                .map(|r| r.digest.chars().last().unwrap())
                .collect()
        };
        // One member's word is not an answer; a second member's alike is.
        book.report(&from('a', "h1"), false, t0).unwrap();
        assert!(resolved(&book).is_empty());
        book.report(&from('a', "h1"), false, t0).unwrap();
        assert!(resolved(&book).is_empty(), "the same member twice");
        book.report(&from('a', "h2"), false, t0).unwrap();
        assert_eq!(resolved(&book), vec!['a']);
        // The attacker, however often, and under many media types: the
        // confirmed answer stands.
        for n in 0..20 {
            book.report(&from('e', "evil"), false, t0).unwrap();
            let mut other = from('e', "evil");
            other.media_type = format!("type-{n}");
            book.report(&other, false, t0).unwrap();
        }
        assert_eq!(resolved(&book), vec!['a']);
        // The tag really moves: two members (or a seed) see it.
        book.report(&from('b', "h1"), false, t0).unwrap();
        book.report(&from('b', "h3"), false, t0).unwrap();
        assert_eq!(resolved(&book), vec!['b']);
        book.report(&from('c', "seed"), true, t0).unwrap();
        assert_eq!(resolved(&book), vec!['c']);
        assert!(book
            .tags
            .values()
            .all(|r| r.len() <= MAX_RECORDS_PER_TAG + MAX_PENDING_PER_TAG));
    }

    #[test]
    fn records_expire() {
        let mut book = TagBook::default();
        let t0 = Instant::now();
        book.report(&report('a', "index"), true, t0).unwrap();
        let later = t0 + Duration::from_secs(61);
        let ttl = Duration::from_secs(60);
        assert!(book
            .resolve(Some(&tag("v1")), later, ttl)
            .unwrap()
            .is_empty());
        book.sweep(later, ttl);
        assert_eq!(book.count(), 0);
    }

    #[test]
    fn bad_reports_are_refused() {
        let mut book = TagBook::default();
        let now = Instant::now();
        let mut bad = report('a', "index");
        bad.digest = "sha256:xyz".into();
        assert!(book.report(&bad, true, now).is_err());
        let mut no_tag = report('a', "index");
        no_tag.tag = None;
        assert!(book.report(&no_tag, true, now).is_err());
        let mut empty = report('a', "index");
        empty.tag = Some(tag(""));
        assert!(book.report(&empty, true, now).is_err());
        assert!(book.resolve(None, now, Duration::from_secs(1)).is_err());
    }
}
