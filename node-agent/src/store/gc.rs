//! Which tasks to evict: those not accessed within the task TTL, then,
//! when the cache passes its quota's high watermark or the filesystem
//! holding it passes its own, least recently used first down to the low
//! watermark. Never a pinned task.

use std::time::Duration;

use super::disk::FsUsage;

#[derive(Debug, Clone, Copy)]
pub struct Watermarks {
    /// Start evicting above this share of the quota (or of the
    /// filesystem).
    pub high: f64,
    /// Stop once usage is at or below this share.
    pub low: f64,
}

impl Default for Watermarks {
    fn default() -> Self {
        Watermarks {
            high: 0.9,
            low: 0.7,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GcCandidate {
    pub task_id: String,
    pub bytes: u64,
    pub last_access_unix: u64,
    pub pinned: bool,
}

/// Why a task was evicted (the metrics' `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictReason {
    /// Not accessed for longer than the task TTL.
    Ttl,
    /// The cache passed its quota's high watermark.
    Quota,
    /// The filesystem holding the cache passed its high watermark.
    Watermark,
}

impl EvictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Ttl => "ttl",
            EvictReason::Quota => "quota",
            EvictReason::Watermark => "watermark",
        }
    }
}

/// What one collection looks at besides the candidates.
#[derive(Debug, Clone, Copy)]
pub struct GcLimits {
    /// Bytes reserved by writes not yet stored, counted as used.
    pub in_flight: u64,
    pub quota: u64,
    /// Shares of the quota, and of the filesystem when `fs` is given.
    pub marks: Watermarks,
    /// The filesystem holding the cache; None: not watched.
    pub fs: Option<FsUsage>,
    pub now_unix: u64,
    /// Tasks not accessed for longer go whatever the usage; None: kept.
    pub ttl: Option<Duration>,
}

/// Plans one collection: expired tasks first, then least recently used
/// ones until both the quota and the filesystem are at or below the low
/// watermark (whichever needs more freed wins). Pinned tasks (being read
/// or written) are never chosen. Freed bytes are estimated from the
/// tasks' stored bytes; the caller measures the filesystem again.
pub fn plan(candidates: &[GcCandidate], limits: &GcLimits) -> Vec<(String, EvictReason)> {
    let mut order: Vec<&GcCandidate> = candidates.iter().filter(|c| !c.pinned).collect();
    order.sort_by_key(|c| c.last_access_unix);
    let mut victims = Vec::new();
    let mut freed: u64 = 0;
    if let Some(ttl) = limits.ttl.filter(|t| !t.is_zero()) {
        let expired_before = limits.now_unix.saturating_sub(ttl.as_secs());
        order.retain(|c| {
            let expired = c.last_access_unix < expired_before;
            if expired {
                freed += c.bytes;
                victims.push((c.task_id.clone(), EvictReason::Ttl));
            }
            !expired
        });
    }
    let marks = limits.marks;
    let used: u64 = candidates.iter().map(|c| c.bytes).sum::<u64>() + limits.in_flight;
    let used_now = used.saturating_sub(freed);
    let quota_need = if used_now as f64 > limits.quota as f64 * marks.high {
        used_now.saturating_sub((limits.quota as f64 * marks.low) as u64)
    } else {
        0
    };
    // The filesystem as it will be once the expired tasks are gone.
    let fs_need = limits.fs.map_or(0, |fs| {
        let after = FsUsage {
            available: fs.available.saturating_add(freed).min(fs.total),
            ..fs
        };
        if after.above(marks.high) {
            after.excess_over(marks.low)
        } else {
            0
        }
    });
    let mut freed_now: u64 = 0;
    for candidate in order {
        if freed_now >= quota_need && freed_now >= fs_need {
            break;
        }
        // The quota's share is named first: it is the cache's own limit.
        let reason = if freed_now < quota_need {
            EvictReason::Quota
        } else {
            EvictReason::Watermark
        };
        freed_now += candidate.bytes;
        victims.push((candidate.task_id.clone(), reason));
    }
    victims
}

/// `in_flight`: bytes reserved by writes not yet stored, counted as used.
/// The quota alone, no filesystem and no TTL.
pub fn plan_eviction(
    candidates: &[GcCandidate],
    in_flight: u64,
    quota: u64,
    marks: Watermarks,
) -> Vec<String> {
    let limits = GcLimits {
        in_flight,
        quota,
        marks,
        fs: None,
        now_unix: 0,
        ttl: None,
    };
    plan(candidates, &limits)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, bytes: u64, at: u64, pinned: bool) -> GcCandidate {
        GcCandidate {
            task_id: id.into(),
            bytes,
            last_access_unix: at,
            pinned,
        }
    }

    #[test]
    fn below_high_watermark_nothing_happens() {
        let marks = Watermarks {
            high: 0.9,
            low: 0.5,
        };
        assert!(plan_eviction(&[c("a", 89, 1, false)], 0, 100, marks).is_empty());
    }

    #[test]
    fn evicts_oldest_unpinned_down_to_low_watermark() {
        let marks = Watermarks {
            high: 0.9,
            low: 0.5,
        };
        let tasks = [
            c("old-pinned", 30, 1, true),
            c("old", 30, 2, false),
            c("mid", 30, 3, false),
            c("new", 30, 4, false),
        ];
        // 120 used, target 50: drop old (90), mid (60), new (30).
        assert_eq!(
            plan_eviction(&tasks, 0, 100, marks),
            vec!["old", "mid", "new"]
        );
        let tasks = [c("a", 50, 1, false), c("b", 50, 2, false)];
        assert_eq!(plan_eviction(&tasks, 0, 100, marks), vec!["a"]);
        // Writes waiting for room count: 80 stored is below 90, but with
        // 15 reserved it is over.
        let tasks = [c("a", 50, 1, false), c("b", 30, 2, false)];
        assert!(plan_eviction(&tasks, 0, 100, marks).is_empty());
        assert_eq!(plan_eviction(&tasks, 15, 100, marks), vec!["a"]);
    }

    fn limits(quota: u64, fs: Option<FsUsage>, ttl: Option<u64>) -> GcLimits {
        GcLimits {
            in_flight: 0,
            quota,
            marks: Watermarks {
                high: 0.9,
                low: 0.7,
            },
            fs,
            now_unix: 1_000_000,
            ttl: ttl.map(Duration::from_secs),
        }
    }

    #[test]
    fn the_filesystem_watermark_evicts_down_to_the_low_mark() {
        let tasks = [
            c("old", 100, 1, false),
            c("pinned", 100, 0, true),
            c("mid", 100, 2, false),
            c("new", 100, 3, false),
        ];
        // Quota far away; the filesystem 95 % used of 1000: 250 bytes to
        // free to reach 70 %, so three tasks of 100, oldest first, the
        // pinned one skipped.
        let fs = FsUsage {
            total: 1000,
            available: 50,
        };
        let got = plan(&tasks, &limits(1 << 30, Some(fs), None));
        assert_eq!(
            got,
            vec![
                ("old".to_string(), EvictReason::Watermark),
                ("mid".to_string(), EvictReason::Watermark),
                ("new".to_string(), EvictReason::Watermark),
            ]
        );
        // At exactly 90 % nothing happens (above, not at, the mark).
        let fs = FsUsage {
            total: 1000,
            available: 100,
        };
        assert!(plan(&tasks, &limits(1 << 30, Some(fs), None)).is_empty());
        // Other writers hold the disk: everything evictable goes, and no
        // more (the pinned task stays).
        let fs = FsUsage {
            total: 10_000,
            available: 0,
        };
        assert_eq!(plan(&tasks, &limits(1 << 30, Some(fs), None)).len(), 3);
    }

    #[test]
    fn whichever_limit_needs_more_wins() {
        let tasks = [
            c("a", 100, 1, false),
            c("b", 100, 2, false),
            c("c", 100, 3, false),
            c("d", 100, 4, false),
        ];
        // Quota 400 full (100 %): down to 280 means 120, two tasks. The
        // filesystem needs 250 freed: three tasks, the third for it.
        let fs = FsUsage {
            total: 1000,
            available: 50,
        };
        let got = plan(&tasks, &limits(400, Some(fs), None));
        let reasons: Vec<EvictReason> = got.iter().map(|(_, r)| *r).collect();
        assert_eq!(
            reasons,
            vec![
                EvictReason::Quota,
                EvictReason::Quota,
                EvictReason::Watermark
            ]
        );
        // A roomy filesystem: the quota alone decides.
        let fs = FsUsage {
            total: 1 << 40,
            available: 1 << 39,
        };
        assert_eq!(plan(&tasks, &limits(400, Some(fs), None)).len(), 2);
    }

    #[test]
    fn expired_tasks_go_even_under_quota_and_count_as_freed() {
        let now = 1_000_000;
        let tasks = [
            c("stale", 100, now - 7200, false),
            c("stale-pinned", 100, now - 7200, true),
            c("fresh", 100, now - 60, false),
        ];
        let got = plan(&tasks, &limits(1 << 30, None, Some(3600)));
        assert_eq!(got, vec![("stale".to_string(), EvictReason::Ttl)]);
        // TTL 0 (or none) disables it.
        assert!(plan(&tasks, &limits(1 << 30, None, Some(0))).is_empty());
        assert!(plan(&tasks, &limits(1 << 30, None, None)).is_empty());
        // The expired task's bytes count toward the filesystem's need:
        // 920 used of 1000, 100 freed by the TTL -> 820, under 90 %.
        let fs = FsUsage {
            total: 1000,
            available: 80,
        };
        let got = plan(&tasks, &limits(1 << 30, Some(fs), Some(3600)));
        assert_eq!(got, vec![("stale".to_string(), EvictReason::Ttl)]);
    }
}
