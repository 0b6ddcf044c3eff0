//! One run of a Preheat generation, shared by the controller and
//! `preheat-local`: resolve the images once, then tick (drive the peers,
//! fold their reports into the status) until it finishes. Kept in memory
//! between reconciles; everything that must survive a restart is in the
//! status. [`Job::step`] is the one sequence both callers run, and the job
//! remembers when the next step is due, so a caller woken early (the
//! controller, by its own status write) can wait instead of retrying.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::{info, info_span, Instrument};

use super::crd::{PreheatSpec, PreheatStatus};
use super::credentials::Credentials;
use super::execute::{Dfdaemons, Owner, Plan, Tracker};
use super::platform::Platform;
use super::reference::ImageRef;
use super::resolve::{Registries, Resolution, ResolveError};
use super::status::{self, Verdict};
use super::targets::{Target, TargetError};
use super::validate::Validated;

/// Registry tokens (Docker Hub's last 5 minutes) are fetched again after this.
const AUTH_REFRESH: Duration = Duration::from_secs(60);
/// Images resolved at once.
const RESOLVE_CONCURRENCY: usize = 4;

/// How a run paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Between looks at the peers while all goes well.
    pub poll: Duration,
    /// Wait after the first transient failure; doubles per retry.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Bound on resolving every image, and on refreshing their tokens.
    pub registry_timeout: Duration,
}

impl Pace {
    /// The wait before retry number `retries` (1 is the first):
    /// `backoff_base` doubling per retry, at most `backoff_max`.
    pub fn retry_delay(&self, retries: i32) -> Duration {
        let doublings = u32::try_from(retries.saturating_sub(1))
            .unwrap_or(0)
            .min(10);
        self.backoff_base
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

pub struct Job {
    /// (uid, generation) of the Preheat this run belongs to.
    pub id: (String, Option<i64>),
    spec: PreheatSpec,
    pace: Pace,
    images: Vec<ImageRef>,
    registries: Registries,
    dfdaemons: Dfdaemons,
    tracker: Tracker,
    /// Every image's manifests and blobs, in spec order: the status holds
    /// only counts (it must stay small), so this is what the plan is built from.
    resolutions: Option<Vec<Resolution>>,
    auth: HashMap<usize, (Instant, Option<String>)>,
    /// When the next step is due: `poll` after a good tick, the retry
    /// backoff after a transient failure or a troubled tick.
    due: Option<Instant>,
    pub last_used: Instant,
}

impl Job {
    /// `plain_http`: registries reached over HTTP besides the spec's own list.
    pub fn new(
        id: (String, Option<i64>),
        spec: &PreheatSpec,
        validated: &Validated,
        plain_http: &[String],
        credentials: Credentials,
        pace: Pace,
        tls: Option<&identity::MemberTls>,
    ) -> Result<Self, String> {
        let mut hosts = spec.insecure_registries.clone();
        hosts.extend(plain_http.iter().cloned());
        let dfdaemons = Dfdaemons::new(spec.backoff_limit, tls)
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Job {
            id,
            spec: spec.clone(),
            pace,
            images: validated.images.clone(),
            registries: Registries::for_images(&validated.images, &hosts, credentials),
            dfdaemons,
            tracker: Tracker::default(),
            resolutions: None,
            auth: HashMap::new(),
            due: None,
            last_used: Instant::now(),
        })
    }

    pub fn has_images(&self) -> bool {
        !self.images.is_empty()
    }

    /// How long until the next step is due; `None` when it is due now.
    pub fn wait_left(&self) -> Option<Duration> {
        let left = self.due?.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Makes the next step due now, as if its wait had passed.
    #[cfg(test)]
    pub fn skip_wait(&mut self) {
        self.due = None;
    }

    /// One step of the run: resolve the images (once per run, for
    /// `platforms`), take the `targets`, refresh registry tokens, tick.
    /// Every outcome is written into `st`: a transient failure counts one
    /// retry, past `spec.backoffLimit` the run fails. Returns the wait
    /// before the next step (also kept as when it is due), `None` once
    /// the run finished.
    pub async fn step(
        &mut self,
        st: &mut PreheatStatus,
        platforms: &[Platform],
        targets: Result<Vec<Target>, TargetError>,
        now: &Time,
    ) -> Option<Duration> {
        let wait = self.run_step(st, platforms, targets, now).await;
        self.due = wait.map(|w| Instant::now() + w);
        wait
    }

    async fn run_step(
        &mut self,
        st: &mut PreheatStatus,
        platforms: &[Platform],
        targets: Result<Vec<Target>, TargetError>,
        now: &Time,
    ) -> Option<Duration> {
        if !status::is_resolved(st) {
            match self.resolve(platforms).await {
                Ok(resolved) => {
                    info!(
                        platforms = %platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                        "images resolved"
                    );
                    status::resolved(st, &resolved, now);
                    self.resolutions = Some(resolved);
                }
                Err((i, e)) => return self.registry_failed(st, i, &e, now),
            }
        } else if self.resolutions.is_none() {
            // Resolved by an earlier process (the status says so) whose
            // blob lists went with it: read them again by digest.
            match self.reread(st).await {
                Ok(resolved) => {
                    info!("blob lists read again by the recorded digests");
                    self.resolutions = Some(resolved);
                }
                Err((i, e)) => return self.registry_failed(st, i, &e, now),
            }
        }
        let targets = match targets {
            Ok(t) => t,
            Err(TargetError::NotYet(message)) => {
                return self.retry(st, "NoReadyPeer", &message, now)
            }
            Err(TargetError::Impossible(message)) => {
                status::fail(st, "NoTargets", &message, None, now);
                return None;
            }
        };
        if let Err((i, e)) = self.refresh_auth().await {
            return self.registry_failed(st, i, &e, now);
        }
        match self.tick(st, &targets, now).await {
            Verdict::Running { troubled: false } => Some(self.pace.poll),
            Verdict::Running { troubled: true } => Some(self.pace.retry_delay(st.retries)),
            Verdict::Succeeded | Verdict::Failed => None,
        }
    }

    /// A registry error about image `i`: retried when transient, else the end.
    fn registry_failed(
        &self,
        st: &mut PreheatStatus,
        i: usize,
        e: &ResolveError,
        now: &Time,
    ) -> Option<Duration> {
        if e.is_transient() {
            return self.retry(st, e.reason(), &e.to_string(), now);
        }
        status::fail(st, e.reason(), &e.to_string(), Some(Owner::Image(i)), now);
        None
    }

    /// Counts a transient failure: the backoff, or `None` past the limit.
    fn retry(
        &self,
        st: &mut PreheatStatus,
        reason: &str,
        message: &str,
        now: &Time,
    ) -> Option<Duration> {
        if status::transient(st, self.spec.backoff_limit, reason, message, now) {
            return None;
        }
        Some(self.pace.retry_delay(st.retries))
    }

    /// Resolves every image for `platforms`, a few at a time, within
    /// `registry_timeout` overall; the first failure names its image.
    async fn resolve(
        &self,
        platforms: &[Platform],
    ) -> Result<Vec<Resolution>, (usize, ResolveError)> {
        let mut out = Vec::with_capacity(self.images.len());
        // Built in a loop: a `map` closure here makes the future not `Send`.
        let mut calls = Vec::with_capacity(self.images.len());
        for image in &self.images {
            calls.push(self.registries.resolve(image, platforms));
        }
        let mut results = futures::stream::iter(calls).buffered(RESOLVE_CONCURRENCY);
        let all = async {
            while let Some(r) = results.next().await {
                let i = out.len();
                out.push(r.map_err(|e| (i, e))?);
            }
            Ok::<(), (usize, ResolveError)>(())
        };
        let finished = tokio::time::timeout(self.pace.registry_timeout, all).await;
        match finished {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.timed_out(out.len(), "resolving")),
        }
    }

    /// The blob lists of images the status already records as resolved,
    /// within `registry_timeout` overall.
    async fn reread(&self, st: &PreheatStatus) -> Result<Vec<Resolution>, (usize, ResolveError)> {
        let mut out = Vec::with_capacity(self.images.len());
        let all = async {
            for (i, (image, img)) in self.images.iter().zip(&st.images).enumerate() {
                let digest = img.digest.as_deref().unwrap_or_default();
                let r = self
                    .registries
                    .reread(image, digest, &img.manifests)
                    .await
                    .map_err(|e| (i, e))?;
                out.push(r);
            }
            Ok::<(), (usize, ResolveError)>(())
        };
        let finished = tokio::time::timeout(self.pace.registry_timeout, all).await;
        match finished {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.timed_out(out.len(), "reading the manifests of")),
        }
    }

    /// The `Authorization` for each image's registry, fetched again once
    /// old, within `registry_timeout` overall.
    async fn refresh_auth(&mut self) -> Result<(), (usize, ResolveError)> {
        let limit = self.pace.registry_timeout;
        let mut current = 0;
        let all = async {
            for (i, image) in self.images.iter().enumerate() {
                current = i;
                if self
                    .auth
                    .get(&i)
                    .is_some_and(|(at, _)| at.elapsed() < AUTH_REFRESH)
                {
                    continue;
                }
                let value = self
                    .registries
                    .authorization(image)
                    .await
                    .map_err(|e| (i, e))?;
                self.auth.insert(i, (Instant::now(), value));
            }
            Ok(())
        };
        let finished = tokio::time::timeout(limit, all).await;
        match finished {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(current, "fetching a token for")),
        }
    }

    /// `registry_timeout` ran out while `doing` image `i`.
    fn timed_out(&self, i: usize, doing: &str) -> (usize, ResolveError) {
        let i = i.min(self.images.len().saturating_sub(1));
        let detail = format!(
            "{doing} the image took longer than {:?}",
            self.pace.registry_timeout
        );
        (i, self.registries.unreachable(&self.images[i], &detail))
    }

    /// Drives every target once and folds what they report into `st`.
    async fn tick(&mut self, st: &mut PreheatStatus, targets: &[Target], now: &Time) -> Verdict {
        let resolved = self.resolutions.as_deref().unwrap_or_default();
        let plan = Plan::build(&self.images, resolved, &self.spec.urls, &self.registries);
        let auth: HashMap<usize, Option<String>> = self
            .auth
            .iter()
            .map(|(i, (_, v))| (*i, v.clone()))
            .collect();
        let span = info_span!(
            "tick",
            downloads = plan.downloads.len(),
            targets = targets.len()
        );
        let report = self
            .dfdaemons
            .tick(&plan, targets, &auth, &mut self.tracker)
            .instrument(span)
            .await;
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        status::apply_tick(st, &plan, &names, &report, self.spec.backoff_limit, now)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;
    use crate::preheat::validate::validate;

    const PACE: Pace = Pace {
        poll: Duration::ZERO,
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
        registry_timeout: Duration::from_millis(300),
    };

    #[test]
    fn retry_delays_double_from_the_base_and_cap() {
        let delays: Vec<u64> = [0, 1, 2, 3, 5, 6, 100]
            .iter()
            .map(|&r| PACE.retry_delay(r).as_secs())
            .collect();
        assert_eq!(delays, [1, 1, 2, 4, 16, 30, 30]);
    }

    #[tokio::test]
    async fn a_silent_registry_costs_one_bounded_retry() {
        // Accepts connections (the kernel's backlog) but never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let host = silent.local_addr().expect("addr");
        let spec: PreheatSpec = serde_json::from_value(json!({
            "cluster": "c", "platforms": ["linux/amd64"],
            "images": [format!("{host}/a:v1"), format!("{host}/b:v1")]
        }))
        .expect("spec");
        let validated = validate(&spec).expect("valid");
        let mut job = Job::new(
            (String::new(), Some(1)),
            &spec,
            &validated,
            &[],
            Credentials::default(),
            PACE,
            None,
        )
        .expect("job");
        let now = Time(Timestamp::UNIX_EPOCH);
        let mut st = status::start(&spec, Some(1), &now);
        assert_eq!(job.wait_left(), None, "a new run steps at once");

        let started = Instant::now();
        let wait = tokio::time::timeout(
            Duration::from_secs(10),
            job.step(
                &mut st,
                &validated.platforms,
                Err(TargetError::NotYet("no peer yet".into())),
                &now,
            ),
        )
        .await
        .expect("the step is bounded by registry_timeout");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(wait, Some(Duration::from_secs(1)));
        assert_eq!(st.retries, 1);
        assert!(
            st.message.contains(&format!(
                "image {host}/a:v1: registry http://{host} unreachable (resolving the image took longer than 300ms)"
            )),
            "{}",
            st.message
        );
        assert!(job
            .wait_left()
            .is_some_and(|left| left <= Duration::from_secs(1)));
        drop(silent);
    }
}
