//! Upload bandwidth cap: a token bucket shared by all uploads. Waiters queue
//! on the lock, so bandwidth is handed out in arrival order.

use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct RateLimiter {
    bytes_per_sec: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        RateLimiter {
            bytes_per_sec: rate,
            // A quarter second of traffic may go out at once.
            burst: rate / 4.0,
            state: Mutex::new((rate / 4.0, Instant::now())),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let mut state = self.state.lock().await;
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.bytes_per_sec)
            .min(self.burst);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens < 0.0 {
            let wait = Duration::from_secs_f64(-*tokens / self.bytes_per_sec);
            tokio::time::sleep(wait).await;
            *tokens = 0.0;
            *last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sending_twice_the_rate_takes_about_two_seconds() {
        let limiter = RateLimiter::new(1000);
        let start = Instant::now();
        for _ in 0..20 {
            limiter.acquire(100).await;
        }
        let took = start.elapsed();
        // 2000 bytes at 1000 B/s with a 250-byte burst: 1.75 s of waiting.
        assert!(
            took >= Duration::from_millis(1700) && took <= Duration::from_millis(1800),
            "{took:?}"
        );
    }
}
