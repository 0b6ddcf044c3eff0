//! Whether the mirror can serve promptly, for `/server/ping` (nydusd
//! re-enables a failed mirror whenever its ping answers below 500, so the
//! ping must tell the truth) and for failing fast: an upstream that just
//! failed is not waited on again by every request until it answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::upstream::Upstream;

/// An upstream that failed is refused at once for this long; then the next
/// request re-checks it (the ping's own re-check may be sooner). Short: a
/// registry that restarts is back within seconds, and every pull refused
/// meanwhile goes around the mirror.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// A range read that could not be served promptly counts against the ping
/// this long, unless a read is served promptly after it.
const STALL_MEMORY: Duration = Duration::from_secs(10);
/// Upstreams unused for this long no longer count for the ping.
const RECENT: Duration = Duration::from_secs(300);
/// More mirror requests in flight than this: overloaded.
pub const MAX_IN_FLIGHT: usize = 1024;

#[derive(Debug, Clone)]
struct Broken {
    reason: String,
    retry_at: Instant,
}

#[derive(Debug)]
struct UpstreamState {
    upstream: Upstream,
    last_used: Instant,
    broken: Option<Broken>,
    /// When the upstream last answered (below 500).
    last_success: Option<Instant>,
}

/// A request refused without asking the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// Re-check the upstream now (see [`probe`]).
    pub recheck: bool,
}

/// How long a re-check waits on the upstream.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Re-checks an upstream with `GET /v2/` (any answer below 500 means it is
/// reachable: 401 is the usual one) and records the outcome.
pub async fn probe(clients: &super::upstream::Clients, health: &MirrorHealth, upstream: &Upstream) {
    let Ok(client) = clients.for_upstream(upstream) else {
        return;
    };
    let started = Instant::now();
    match client
        .get(upstream.url("/v2/"))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
    {
        Ok(resp) if !resp.status().is_server_error() => health.succeeded(upstream),
        Ok(resp) => health.failed_since(
            upstream,
            started,
            format!("re-check answered {}", resp.status()),
        ),
        Err(e) => health.failed_since(upstream, started, format!("re-check failed: {e}")),
    }
}

#[derive(Default)]
pub struct MirrorHealth {
    upstreams: Mutex<HashMap<String, UpstreamState>>,
    in_flight: AtomicUsize,
    /// The last range read not served in time, and why; cleared by the next
    /// one served promptly.
    stall: Mutex<Option<(Instant, String)>>,
}

/// Decrements the in-flight count when a mirror request ends.
pub struct InFlight<'a>(&'a MirrorHealth);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MirrorHealth {
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }

    /// Runs `f` on `upstream`'s state. `used`: a real request (not a
    /// re-check), which keeps the upstream counting for the ping.
    fn with_state<R>(
        &self,
        upstream: &Upstream,
        used: bool,
        f: impl FnOnce(&mut UpstreamState) -> R,
    ) -> R {
        let mut map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let key = upstream.url("");
        if !map.contains_key(&key) {
            // Forget upstreams nobody asked for lately (the forward proxy
            // can name any host).
            map.retain(|_, s| s.last_used.elapsed() < RECENT);
        }
        let state = map.entry(key).or_insert_with(|| UpstreamState {
            upstream: upstream.clone(),
            last_used: Instant::now(),
            broken: None,
            last_success: None,
        });
        if used {
            state.last_used = Instant::now();
        }
        f(state)
    }

    /// The upstream answered (below 500).
    pub fn succeeded(&self, upstream: &Upstream) {
        self.with_state(upstream, false, |s| {
            s.last_success = Some(Instant::now());
            if s.broken.take().is_some() {
                tracing::info!(upstream = %upstream.url(""), "upstream reachable again");
            }
        });
    }

    /// The upstream (or the mirror's path through it) failed just now.
    pub fn failed(&self, upstream: &Upstream, reason: impl Into<String>) {
        self.failed_since(upstream, Instant::now(), reason);
    }

    /// A request sent at `started` failed. It does not count when the
    /// upstream answered another request since: a request stuck through an
    /// outage fails after the upstream came back, and must not mark it
    /// unavailable again (every pull would be refused for another while).
    pub fn failed_since(&self, upstream: &Upstream, started: Instant, reason: impl Into<String>) {
        let reason = reason.into();
        self.with_state(upstream, false, |s| {
            if s.last_success.is_some_and(|ok| ok > started) {
                tracing::debug!(upstream = %upstream.url(""), %reason, "a failure older than the last answer; not counted");
                return;
            }
            if s.broken.is_none() {
                tracing::warn!(upstream = %upstream.url(""), %reason, "upstream marked unavailable");
            }
            s.broken = Some(Broken {
                reason,
                retry_at: Instant::now() + RETRY_AFTER,
            });
        });
    }

    /// Why requests to `upstream` should fail at once instead of waiting on
    /// it (`None`: go ahead). Once per retry window the caller is told to
    /// re-check the upstream in the background, so recovery is noticed
    /// without any request waiting on a path that may still be cut.
    pub fn fail_fast(&self, upstream: &Upstream) -> Option<Refusal> {
        self.with_state(upstream, true, |s| {
            let broken = s.broken.as_mut()?;
            let now = Instant::now();
            let recheck = now >= broken.retry_at;
            if recheck {
                broken.retry_at = now + RETRY_AFTER;
            }
            Some(Refusal {
                reason: broken.reason.clone(),
                recheck,
            })
        })
    }

    /// Whether `upstream` is marked unavailable right now.
    pub fn is_broken(&self, upstream: &Upstream) -> bool {
        let map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&upstream.url(""))
            .is_some_and(|s| s.broken.is_some())
    }

    /// A range read could not be served within its timeout (the swarm or
    /// the origin path is stuck): the ping reports it for a while.
    pub fn range_stalled(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::warn!(%reason, "range read not served in time");
        *self.stall.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), reason));
    }

    /// A range read was served promptly: earlier stalls no longer count.
    pub fn range_served(&self) {
        self.stall.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Why range reads are failing right now, if they are.
    pub fn stalled(&self) -> Option<String> {
        let stall = self.stall.lock().unwrap_or_else(|e| e.into_inner());
        stall
            .as_ref()
            .filter(|(at, _)| at.elapsed() < STALL_MEMORY)
            .map(|(_, reason)| reason.clone())
    }

    /// Recently used upstreams currently marked broken.
    pub fn broken(&self) -> Vec<(Upstream, String)> {
        let map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|s| s.last_used.elapsed() < RECENT)
            .filter_map(|s| Some((s.upstream.clone(), s.broken.as_ref()?.reason.clone())))
            .collect()
    }

    /// Problems that keep the mirror from serving promptly (empty: healthy).
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .broken()
            .into_iter()
            .map(|(u, reason)| format!("upstream {} unavailable: {reason}", u.url("")))
            .collect();
        if let Some(reason) = self.stalled() {
            out.push(format!("range reads not served in time: {reason}"));
        }
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        if in_flight > MAX_IN_FLIGHT {
            out.push(format!("overloaded: {in_flight} requests in flight"));
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream {
            scheme: "http",
            host: "registry:5000".into(),
        }
    }

    #[test]
    fn a_failed_upstream_fails_fast_until_it_answers() {
        let health = MirrorHealth::default();
        assert!(health.fail_fast(&upstream()).is_none());
        health.failed(&upstream(), "timed out");
        let refusal = health.fail_fast(&upstream()).unwrap();
        assert_eq!(refusal.reason, "timed out");
        assert!(!refusal.recheck, "just failed: no re-check yet");
        assert_eq!(health.problems().len(), 1);
        health.succeeded(&upstream());
        assert!(health.fail_fast(&upstream()).is_none());
        assert!(health.problems().is_empty());
    }

    /// A request stuck through an outage fails after the upstream came
    /// back: the mirror must not refuse the next pulls because of it.
    #[test]
    fn a_failure_older_than_the_last_answer_does_not_count() {
        let health = MirrorHealth::default();
        let stuck_since = Instant::now();
        health.failed(&upstream(), "connection refused");
        health.succeeded(&upstream());
        health.failed_since(&upstream(), stuck_since, "timed out");
        assert!(health.fail_fast(&upstream()).is_none());
        // A failure sent after the answer still counts.
        health.failed_since(&upstream(), Instant::now(), "refused again");
        assert!(health.fail_fast(&upstream()).is_some());
    }

    #[test]
    fn a_stalled_range_counts_until_one_is_served() {
        let health = MirrorHealth::default();
        health.range_stalled("piece 3 not available within 4s");
        assert!(health.stalled().is_some());
        assert_eq!(health.problems().len(), 1);
        health.range_served();
        assert!(health.problems().is_empty());
    }

    #[test]
    fn re_checks_do_not_keep_an_unused_upstream_counting() {
        let health = MirrorHealth::default();
        assert!(health.fail_fast(&upstream()).is_none());
        health.failed(&upstream(), "refused");
        // Age the entry past the window: only real requests refresh it.
        if let Some(s) = health
            .upstreams
            .lock()
            .unwrap()
            .get_mut(&upstream().url(""))
        {
            s.last_used = Instant::now() - RECENT - Duration::from_secs(1);
        }
        health.failed(&upstream(), "re-check failed");
        assert!(health.broken().is_empty());
        assert!(health.problems().is_empty());
    }

    #[test]
    fn too_many_requests_in_flight_is_a_problem() {
        let health = MirrorHealth::default();
        let guards: Vec<_> = (0..=MAX_IN_FLIGHT)
            .map(|_| health.request_started())
            .collect();
        assert_eq!(health.problems().len(), 1);
        drop(guards);
        assert!(health.problems().is_empty());
    }
}
