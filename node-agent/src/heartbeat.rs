//! Whether the daemon's runtime still runs: a task ticks every
//! [`TICK`]; `/healthz` (served on a thread of its own, so a busy or
//! stuck runtime cannot keep it from answering) fails once the last tick
//! is older than [`STALL_LIMIT`]. The kubelet then restarts dfdaemon, and
//! containerd, whose connections to the mirror are cut, moves on to the
//! registry: a hung mirror must not hold the node's pulls for minutes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const TICK: Duration = Duration::from_millis(250);
/// Far above any pause of a healthy runtime on a loaded node, far below
/// the seconds a hung one may cost the node's pulls.
pub const STALL_LIMIT: Duration = Duration::from_secs(3);

pub struct Heartbeat {
    start: Instant,
    /// Milliseconds after `start` of the last tick.
    last: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    pub fn tick(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.start).as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last tick, when that is past [`STALL_LIMIT`].
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
        let since = now.saturating_duration_since(last);
        (since > STALL_LIMIT).then_some(since)
    }

    /// Ticks on the calling runtime until `stop`.
    pub async fn run(self: std::sync::Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.tick(Instant::now()),
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_that_stops_ticking_is_stalled() {
        let beat = Heartbeat::default();
        let t0 = Instant::now();
        beat.tick(t0);
        assert_eq!(beat.stalled(t0 + Duration::from_secs(1)), None);
        let late = t0 + STALL_LIMIT + Duration::from_secs(1);
        assert!(beat.stalled(late).is_some());
        beat.tick(late);
        assert_eq!(beat.stalled(late), None);
    }
}
