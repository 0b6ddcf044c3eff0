//! Telling a parent that is still fetching a piece from one that is gone.
//! A parent asked for a piece it does not hold yet may rightly take many
//! seconds to answer; a frozen one (connections open, nothing answers)
//! must not hold the piece that long. While such an answer is awaited the
//! parent must show life every [`CHECK_EVERY`]: bytes from it on any
//! request, or an answer to a cheap probe.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How often a waiting child checks that its parent is alive.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long the parent has to answer a check: generous, because a live
/// parent on a loaded node (a new TLS connection, a busy runtime) can take
/// over a second, and leaving a live source sends readers elsewhere; a
/// frozen one is still left within seconds, well inside a reader's stall
/// limit.
pub const PROBE_ANSWER: Duration = Duration::from_secs(3);

/// Parents remembered at most: one entry per member this daemon fetched
/// from recently; older entries go first when full.
const MAX_PARENTS: usize = 4096;

/// When each parent (by address) was last heard from.
#[derive(Default)]
pub struct Liveness {
    heard: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn heard(&self, base: &str, now: Instant) {
        let mut heard = self.lock();
        if let Some(at) = heard.get_mut(base) {
            *at = now;
            return;
        }
        if heard.len() >= MAX_PARENTS {
            let cutoff = now.checked_sub(CHECK_EVERY * 60).unwrap_or(now);
            heard.retain(|_, at| *at > cutoff);
            if heard.len() >= MAX_PARENTS {
                heard.clear();
            }
        }
        heard.insert(base.to_string(), now);
    }

    pub fn heard_within(&self, base: &str, within: Duration, now: Instant) -> bool {
        self.lock()
            .get(base)
            .is_some_and(|at| now.saturating_duration_since(*at) <= within)
    }
}

/// The parent showed no life: no answer within the patience, or a check
/// unanswered.
#[derive(Debug, PartialEq, Eq)]
pub struct Silent;

/// Waits up to `patience` for `answer`. Every [`CHECK_EVERY`] without it,
/// the parent must have been heard from within that time (`heard`) or
/// answer `probe` (true: it answered) within [`PROBE_ANSWER`].
pub async fn await_answer<T, P, F>(
    answer: impl Future<Output = T>,
    patience: Duration,
    heard: impl Fn(Instant) -> bool,
    probe: P,
) -> Result<T, Silent>
where
    P: Fn() -> F,
    F: Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    tokio::pin!(answer);
    loop {
        let check_at = (Instant::now() + CHECK_EVERY).min(deadline);
        tokio::select! {
            value = &mut answer => return Ok(value),
            _ = tokio::time::sleep_until(check_at) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Silent);
        }
        if heard(now) {
            continue;
        }
        // The answer may still come while the parent is checked.
        let check = tokio::time::timeout(PROBE_ANSWER, probe());
        tokio::select! {
            value = &mut answer => return Ok(value),
            alive = check => {
                if !matches!(alive, Ok(true)) {
                    return Err(Silent);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn never_heard(_: Instant) -> bool {
        false
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_parent_may_take_its_time() {
        let probes = AtomicU32::new(0);
        let started = Instant::now();
        let answer = async {
            tokio::time::sleep(Duration::from_secs(8)).await;
            7
        };
        let probe = || async {
            probes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            true
        };
        let got = await_answer(answer, Duration::from_secs(30), never_heard, probe).await;
        assert_eq!(got, Ok(7));
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        assert!((6..=8).contains(&probes.load(Ordering::SeqCst)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_parent_is_left_after_one_unanswered_check() {
        let started = Instant::now();
        let answer = std::future::pending::<()>();
        let probe = || std::future::pending::<bool>();
        let got = await_answer(answer, Duration::from_secs(30), never_heard, probe).await;
        assert_eq!(got, Err(Silent));
        assert_eq!(started.elapsed(), CHECK_EVERY + PROBE_ANSWER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_parent_heard_from_is_not_probed() {
        let started = Instant::now();
        let answer = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
        };
        let probe = || async { panic!("probed a parent heard from") };
        let got = await_answer(answer, Duration::from_secs(30), |_| true, probe).await;
        assert_eq!(got, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn patience_bounds_the_wait_and_refusals_count_as_silence() {
        let started = Instant::now();
        let answer = std::future::pending::<()>();
        let got = await_answer(answer, Duration::from_millis(2500), never_heard, || async {
            true
        })
        .await;
        assert_eq!(got, Err(Silent));
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        let got = await_answer(
            std::future::pending::<()>(),
            Duration::from_secs(30),
            never_heard,
            || async { false },
        )
        .await;
        assert_eq!(got, Err(Silent));
    }

    #[test]
    fn memory_of_parents_is_bounded() {
        let liveness = Liveness::default();
        let now = Instant::now();
        for i in 0..MAX_PARENTS + 10 {
            liveness.heard(&format!("10.0.0.1:{i}"), now);
        }
        assert!(liveness.lock().len() <= MAX_PARENTS);
        let later = now + Duration::from_millis(500);
        liveness.heard("p", later);
        assert!(liveness.heard_within("p", CHECK_EVERY, later + CHECK_EVERY));
        assert!(!liveness.heard_within("p", CHECK_EVERY, later + CHECK_EVERY * 2));
        assert!(!liveness.heard_within("unknown", CHECK_EVERY, later));
    }
}
