//! Upload bandwidth cap: a token bucket shared by all uploads. Waiters queue
//! on the lock, so bandwidth is handed out in arrival order.

use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct RateLimiter {
    bytes_per_sec: f64,
    burst: f64,
    /// Tokens (negative: a debt being slept off) as of the instant.
    state: Mutex<(f64, Instant)>,
}

/// The least burst: two of the piece server's paced slices, so a slice
/// never waits for more than the bucket can hold.
const MIN_BURST: f64 = (128 << 10) as f64;

impl RateLimiter {
    /// At most 10 ms of traffic goes out at once (it was 250 ms): a capped
    /// uplink then does not fill its link's queue after a pause, where this
    /// host's own acknowledgements of what it downloads would wait behind
    /// its uploads. A seed whose uplink queued fetched from the origin at
    /// 88-91 % of the link, one whose uplink was paced with room to spare
    /// at 94 %.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Self::with_burst(rate, (rate / 100.0).max(MIN_BURST))
    }

    fn with_burst(bytes_per_sec: f64, burst: f64) -> Self {
        RateLimiter {
            bytes_per_sec,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let mut state = self.state.lock().await;
        let (tokens, at) = &mut *state;
        let now = Instant::now();
        if now > *at {
            *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.bytes_per_sec)
                .min(self.burst);
            *at = now;
        }
        *tokens -= bytes as f64;
        if *tokens < 0.0 {
            // The debt stays on the books as of `at`: the next call credits
            // the time slept past the deadline. Timers wake a millisecond or
            // so late; restarting the clock on waking lost that each time,
            // and 64 KiB slices got 90 % of a 12.5 MB/s cap, 41 % of
            // 125 MB/s and 13 % of 1.25 GB/s (`upload_cap_accuracy`).
            let paid_at = *at + Duration::from_secs_f64(-*tokens / self.bytes_per_sec);
            tokio::time::sleep_until(paid_at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_backlog_goes_out_at_the_rate_after_the_burst() {
        let limiter = RateLimiter::with_burst(1000.0, 100.0);
        let start = Instant::now();
        for _ in 0..20 {
            limiter.acquire(100).await;
        }
        // 100 bytes from the burst, the other 1900 at 1000 B/s.
        assert_eq!(start.elapsed(), Duration::from_millis(1900));
    }

    #[tokio::test(start_paused = true)]
    async fn time_past_a_deadline_pays_for_the_next_send() {
        let limiter = RateLimiter::with_burst(1000.0, 100.0);
        limiter.acquire(100).await;
        limiter.acquire(100).await;
        // The sender came back 50 ms after its debt was paid: those 50 ms
        // pay for the next 50 bytes.
        tokio::time::advance(Duration::from_millis(50)).await;
        let before = Instant::now();
        limiter.acquire(50).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn idling_saves_up_at_most_the_burst() {
        let limiter = RateLimiter::new(1 << 20);
        tokio::time::advance(Duration::from_secs(10)).await;
        let start = Instant::now();
        limiter.acquire(MIN_BURST as u64).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire(1 << 20).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    /// Prints what share of the configured rate a backlog of 64 KiB slices
    /// (the piece server's paced slice) really gets, in real time:
    /// `cargo test --release -p dragonfly-node-agent --lib upload_cap_accuracy -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "a measurement (3 s per rate), not a check"]
    async fn upload_cap_accuracy() {
        for rate in [12_500_000_u64, 125_000_000, 1_250_000_000] {
            let limiter = RateLimiter::new(rate);
            let start = std::time::Instant::now();
            let mut sent = 0_u64;
            while start.elapsed() < Duration::from_secs(3) {
                limiter.acquire(64 << 10).await;
                sent += 64 << 10;
            }
            let achieved = sent as f64 / start.elapsed().as_secs_f64();
            println!(
                "cap {rate} B/s: achieved {:.3} of it",
                achieved / rate as f64
            );
        }
    }
}
