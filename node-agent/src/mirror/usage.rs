//! Proof that containerd really pulls through this mirror: the last time a
//! manifest request from containerd (it names the registry in `?ns=`; other
//! clients do not) was answered with a 2xx. Written hosts.toml files prove
//! nothing on their own: a runtime that ignores them never shows up here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct MirrorUse {
    /// Seconds since the epoch of the last such request; 0: none yet.
    last: AtomicU64,
}

impl MirrorUse {
    pub fn record(&self, at: SystemTime) {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last.fetch_max(secs, Ordering::Relaxed);
    }

    pub fn last(&self) -> Option<SystemTime> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }

    /// RFC 3339, as the node report carries it.
    pub fn last_rfc3339(&self) -> Option<String> {
        self.last()
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_pull_only() {
        let usage = MirrorUse::default();
        assert_eq!(usage.last_rfc3339(), None);
        let t = UNIX_EPOCH + Duration::from_secs(1_796_680_800);
        usage.record(t);
        usage.record(t - Duration::from_secs(60));
        assert_eq!(usage.last(), Some(t));
        assert_eq!(
            usage.last_rfc3339().as_deref(),
            Some("2026-12-07T22:00:00Z")
        );
    }
}
