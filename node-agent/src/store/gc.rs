//! Which tasks to evict when the cache passes its quota: least recently used
//! first, never a pinned task, from the high watermark down to the low one.

#[derive(Debug, Clone, Copy)]
pub struct Watermarks {
    /// Start evicting above this share of the quota.
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

/// `in_flight`: bytes reserved by writes not yet stored, counted as used.
pub fn plan_eviction(
    candidates: &[GcCandidate],
    in_flight: u64,
    quota: u64,
    marks: Watermarks,
) -> Vec<String> {
    let mut used: u64 = candidates.iter().map(|c| c.bytes).sum::<u64>() + in_flight;
    if (used as f64) <= quota as f64 * marks.high {
        return Vec::new();
    }
    let target = (quota as f64 * marks.low) as u64;
    let mut order: Vec<&GcCandidate> = candidates.iter().filter(|c| !c.pinned).collect();
    order.sort_by_key(|c| c.last_access_unix);
    let mut victims = Vec::new();
    for candidate in order {
        if used <= target {
            break;
        }
        used = used.saturating_sub(candidate.bytes);
        victims.push(candidate.task_id.clone());
    }
    victims
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
}
