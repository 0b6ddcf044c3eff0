//! Calls per member: a token bucket per caller identity, so one member
//! (one certificate) cannot keep the scheduler's single state lock busy for
//! everyone else. Generous for an honest dfdaemon, which batches its piece
//! reports and asks for parents a few times a second per download.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Sustained calls per second one member may make.
pub const CALLS_PER_SECOND: f64 = 500.0;
/// Calls a member may make at once after a quiet while.
pub const BURST: f64 = 2000.0;
/// Members tracked at most (the scheduler knows at most this many hosts);
/// past it, buckets that are full again are forgotten.
const MAX_MEMBERS: usize = 20_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one call for `member`; false when it is over its rate.
    pub fn allow(&self, member: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(member) && buckets.len() >= MAX_MEMBERS {
            buckets.retain(|_, b| refill(b, now) < BURST);
            if buckets.len() >= MAX_MEMBERS {
                return false;
            }
        }
        let bucket = buckets.entry(member.to_string()).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        bucket.tokens = refill(bucket, now);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }
}

fn refill(bucket: &Bucket, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * CALLS_PER_SECOND).min(BURST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_member_gets_its_burst_then_its_rate() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let allowed = (0..3000).filter(|_| limiter.allow("m", t0)).count();
        assert_eq!(allowed, BURST as usize);
        // Others are not affected.
        assert!(limiter.allow("other", t0));
        // A second later, one second's worth more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..3000).filter(|_| limiter.allow("m", t1)).count();
        assert_eq!(allowed, CALLS_PER_SECOND as usize);
    }
}
