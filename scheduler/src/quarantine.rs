//! Hosts no peer is sent to any more: parents that served pieces failing
//! the digests recorded from the task's back-to-source peer. One child's
//! word blocks a parent for that child only (any member could lie about
//! another); reports from distinct peers quarantine it for the cluster.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Distinct peers whose reports quarantine a parent.
pub const REPORTERS: usize = 2;
/// How long a quarantine lasts (re-announcing does not end it).
pub const QUARANTINE_FOR: Duration = Duration::from_secs(3600);
/// Reports older than this no longer count toward a quarantine.
const REPORT_WINDOW: Duration = Duration::from_secs(600);
/// Accused hosts tracked at most; past it the oldest accusation goes.
const MAX_ACCUSED: usize = 20_000;

#[derive(Debug, Default)]
pub struct Quarantine {
    /// Accused host → who reported it, since when.
    reports: HashMap<String, (HashSet<String>, Instant)>,
    /// Quarantined host → until when.
    until: HashMap<String, Instant>,
}

impl Quarantine {
    /// `reporter` received a piece from `parent` that failed its recorded
    /// digest under the digest `parent` claimed for it. True when this
    /// report puts `parent` in quarantine.
    pub fn accuse(&mut self, parent: &str, reporter: &str, now: Instant) -> bool {
        if parent == reporter || self.is_quarantined(parent, now) {
            return false;
        }
        if !self.reports.contains_key(parent) && self.reports.len() >= MAX_ACCUSED {
            if let Some(oldest) = self
                .reports
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(id, _)| id.clone())
            {
                self.reports.remove(&oldest);
            }
        }
        let entry = self
            .reports
            .entry(parent.to_string())
            .or_insert_with(|| (HashSet::new(), now));
        if now.saturating_duration_since(entry.1) > REPORT_WINDOW {
            *entry = (HashSet::new(), now);
        }
        entry.0.insert(reporter.to_string());
        if entry.0.len() < REPORTERS {
            return false;
        }
        self.reports.remove(parent);
        if self.until.len() >= MAX_ACCUSED {
            self.sweep(now);
        }
        self.until.insert(parent.to_string(), now + QUARANTINE_FOR);
        true
    }

    pub fn is_quarantined(&self, id: &str, now: Instant) -> bool {
        self.until.get(id).is_some_and(|&until| now < until)
    }

    pub fn sweep(&mut self, now: Instant) {
        self.until.retain(|_, until| now < *until);
        self.reports
            .retain(|_, (_, since)| now.saturating_duration_since(*since) <= REPORT_WINDOW);
    }

    pub fn list(&self, now: Instant) -> Vec<String> {
        let mut ids: Vec<String> = self
            .until
            .iter()
            .filter(|(_, &until)| now < until)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_reporters_quarantine_for_a_while() {
        let mut q = Quarantine::default();
        let t0 = Instant::now();
        assert!(!q.accuse("evil", "a", t0));
        // The same reporter again, or the parent itself: not enough.
        assert!(!q.accuse("evil", "a", t0));
        assert!(!q.accuse("evil", "evil", t0));
        assert!(!q.is_quarantined("evil", t0));
        assert!(q.accuse("evil", "b", t0));
        assert!(q.is_quarantined("evil", t0 + Duration::from_secs(60)));
        assert_eq!(q.list(t0), vec!["evil".to_string()]);
        assert!(!q.is_quarantined("evil", t0 + QUARANTINE_FOR));
        q.sweep(t0 + QUARANTINE_FOR);
        assert!(q.list(t0 + QUARANTINE_FOR).is_empty());
    }

    #[test]
    fn old_reports_do_not_add_up() {
        let mut q = Quarantine::default();
        let t0 = Instant::now();
        assert!(!q.accuse("p", "a", t0));
        assert!(!q.accuse("p", "b", t0 + REPORT_WINDOW + Duration::from_secs(1)));
        assert!(!q.is_quarantined("p", t0 + REPORT_WINDOW + Duration::from_secs(1)));
    }
}
