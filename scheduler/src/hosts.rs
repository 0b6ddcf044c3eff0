//! The host registry: who is out there, when we last heard from them, and
//! how often others failed to fetch from them lately.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use proto::{Host, HostType};

/// Failures reported against a host count for this long in parent ranking.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Only the most recent failures are kept: a host that failed this often in
/// a minute already ranks last.
const MAX_FAILURES_KEPT: usize = 32;

#[derive(Debug, Clone)]
pub struct HostEntry {
    pub host: Host,
    pub last_seen: Instant,
    /// The address its announcements came from, when known.
    pub client: Option<std::net::IpAddr>,
    failures: VecDeque<Instant>,
}

impl HostEntry {
    pub fn is_seed(&self) -> bool {
        self.host.r#type == HostType::Seed as i32
    }
}

#[derive(Debug)]
pub struct Hosts {
    entries: HashMap<String, HostEntry>,
    ttl: Duration,
}

impl Hosts {
    pub fn new(ttl: Duration) -> Self {
        Hosts {
            entries: HashMap::new(),
            ttl,
        }
    }

    /// Inserts or refreshes a host. Returns whether it was already known,
    /// which tells a host whether it must re-report what it holds.
    pub fn announce(&mut self, host: Host, now: Instant) -> bool {
        self.announce_from(host, None, now)
    }

    pub fn announce_from(
        &mut self,
        host: Host,
        client: Option<std::net::IpAddr>,
        now: Instant,
    ) -> bool {
        match self.entries.get_mut(&host.id) {
            Some(entry) => {
                entry.host = host;
                entry.last_seen = now;
                entry.client = client.or(entry.client);
                true
            }
            None => {
                self.entries.insert(
                    host.id.clone(),
                    HostEntry {
                        host,
                        last_seen: now,
                        client,
                        failures: VecDeque::new(),
                    },
                );
                false
            }
        }
    }

    /// Live hosts announced from `client`.
    pub fn from_client(&self, client: std::net::IpAddr, now: Instant) -> usize {
        self.entries
            .values()
            .filter(|e| {
                e.client == Some(client) && now.saturating_duration_since(e.last_seen) <= self.ttl
            })
            .count()
    }

    /// Moves every heartbeat `gap` later (never past `now`): the time a
    /// paused scheduler could not hear them does not count against hosts.
    pub fn excuse(&mut self, gap: Duration, now: Instant) {
        for entry in self.entries.values_mut() {
            entry.last_seen = (entry.last_seen + gap).min(now);
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<HostEntry> {
        self.entries.remove(id)
    }

    pub fn get(&self, id: &str) -> Option<&HostEntry> {
        self.entries.get(id)
    }

    /// A host counts only while its heartbeat is fresh, even before the
    /// sweeper gets around to forgetting it.
    pub fn alive(&self, id: &str, now: Instant) -> Option<&HostEntry> {
        self.entries
            .get(id)
            .filter(|e| now.saturating_duration_since(e.last_seen) <= self.ttl)
    }

    pub fn is_alive(&self, id: &str, now: Instant) -> bool {
        self.alive(id, now).is_some()
    }

    pub fn is_known(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// Forgets every host whose heartbeat is older than the TTL and returns
    /// their ids so the caller can drop their peers.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let ttl = self.ttl;
        let expired: Vec<String> = self
            .entries
            .values()
            .filter(|e| now.saturating_duration_since(e.last_seen) > ttl)
            .map(|e| e.host.id.clone())
            .collect();
        for id in &expired {
            self.entries.remove(id);
        }
        expired
    }

    pub fn live_seeds(&self, now: Instant) -> impl Iterator<Item = &HostEntry> {
        self.entries
            .values()
            .filter(move |e| e.is_seed() && now.saturating_duration_since(e.last_seen) <= self.ttl)
    }

    pub fn record_failure(&mut self, id: &str, now: Instant) {
        if let Some(entry) = self.entries.get_mut(id) {
            if entry.failures.len() >= MAX_FAILURES_KEPT {
                entry.failures.pop_front();
            }
            entry.failures.push_back(now);
        }
    }

    pub fn recent_failures(&self, id: &str, now: Instant) -> u32 {
        self.entries.get(id).map_or(0, |e| {
            e.failures
                .iter()
                .filter(|&&t| now.saturating_duration_since(t) < FAILURE_WINDOW)
                .count() as u32
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &HostEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, ty: HostType) -> Host {
        Host {
            id: id.into(),
            r#type: ty as i32,
            ..Default::default()
        }
    }

    #[test]
    fn announce_reports_whether_known() {
        let now = Instant::now();
        let mut hosts = Hosts::new(Duration::from_secs(15));
        assert!(!hosts.announce(host("a", HostType::Normal), now));
        assert!(hosts.announce(host("a", HostType::Normal), now));
        hosts.remove("a");
        assert!(!hosts.announce(host("a", HostType::Normal), now));
    }

    #[test]
    fn hosts_expire_after_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(15);
        let mut hosts = Hosts::new(ttl);
        hosts.announce(host("a", HostType::Normal), t0);
        hosts.announce(host("b", HostType::Seed), t0);
        hosts.announce(host("b", HostType::Seed), t0 + Duration::from_secs(10));

        let later = t0 + ttl + Duration::from_secs(1);
        assert!(!hosts.is_alive("a", later), "stale before the sweep");
        assert!(hosts.is_alive("b", later));
        assert_eq!(hosts.expire(later), vec!["a".to_string()]);
        assert!(!hosts.is_known("a"));
        assert_eq!(hosts.live_seeds(later).count(), 1);
        assert!(hosts
            .expire(t0 + Duration::from_secs(60))
            .contains(&"b".into()));
        assert!(hosts.is_empty());
    }

    #[test]
    fn failures_age_out_of_the_window() {
        let t0 = Instant::now();
        let mut hosts = Hosts::new(Duration::from_secs(15));
        hosts.announce(host("a", HostType::Normal), t0);
        hosts.record_failure("a", t0);
        hosts.record_failure("a", t0 + Duration::from_secs(30));
        hosts.record_failure("unknown", t0);
        assert_eq!(hosts.recent_failures("a", t0 + Duration::from_secs(31)), 2);
        assert_eq!(hosts.recent_failures("a", t0 + Duration::from_secs(61)), 1);
        assert_eq!(hosts.recent_failures("unknown", t0), 0);
        for _ in 0..100 {
            hosts.record_failure("a", t0);
        }
        assert_eq!(hosts.recent_failures("a", t0), MAX_FAILURES_KEPT as u32);
    }
}
