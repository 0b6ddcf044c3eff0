//! Spaces background work (a paced prefetch) so it averages a byte rate.

use std::time::Duration;
use tokio::time::Instant;

pub struct Pacer {
    bytes_per_sec: u64,
    /// When the next unit of work may start.
    pub next: Instant,
}

impl Pacer {
    pub fn new(bytes_per_sec: u64) -> Self {
        Pacer {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Instant::now(),
        }
    }

    pub fn ready(&self, now: Instant) -> bool {
        self.next <= now
    }

    /// Books `bytes` of work starting now (or when the last booking ends).
    pub fn spend(&mut self, bytes: u64, now: Instant) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        self.next = self.next.max(now) + cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_spaced_by_its_size_over_the_rate() {
        let mut pacer = Pacer::new(1000);
        let now = Instant::now();
        assert!(pacer.ready(now));
        pacer.spend(500, now);
        assert!(!pacer.ready(now + Duration::from_millis(400)));
        assert!(pacer.ready(now + Duration::from_millis(500)));
        // Bookings queue behind each other rather than overlap.
        pacer.spend(1000, now);
        assert!(!pacer.ready(now + Duration::from_millis(1400)));
        assert!(pacer.ready(now + Duration::from_millis(1500)));
    }
}
