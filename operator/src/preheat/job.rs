//! One run of a Preheat generation, shared by the controller and
//! `preheat-local`: resolve the images once, then tick (drive the peers,
//! fold their reports into the status) until it finishes. Kept in memory
//! between reconciles; everything that must survive a restart is in the
//! status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::{info_span, Instrument};

use super::crd::{PreheatSpec, PreheatStatus};
use super::credentials::Credentials;
use super::execute::{Dfdaemons, Plan, Tracker};
use super::platform::Platform;
use super::reference::ImageRef;
use super::resolve::{Registries, Resolution, ResolveError};
use super::status::{self, Verdict};
use super::targets::Target;
use super::validate::Validated;

/// Registry tokens (Docker Hub's last 5 minutes) are fetched again after this.
const AUTH_REFRESH: Duration = Duration::from_secs(60);

pub struct Job {
    /// (uid, generation) of the Preheat this run belongs to.
    pub id: (String, Option<i64>),
    spec: PreheatSpec,
    images: Vec<ImageRef>,
    registries: Registries,
    dfdaemons: Dfdaemons,
    tracker: Tracker,
    auth: HashMap<usize, (Instant, Option<String>)>,
    pub last_tick: Option<Instant>,
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
    ) -> Result<Self, String> {
        let mut hosts = spec.insecure_registries.clone();
        hosts.extend(plain_http.iter().cloned());
        let dfdaemons = Dfdaemons::new(spec.backoff_limit)
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Job {
            id,
            spec: spec.clone(),
            images: validated.images.clone(),
            registries: Registries::for_images(&validated.images, &hosts, credentials),
            dfdaemons,
            tracker: Tracker::default(),
            auth: HashMap::new(),
            last_tick: None,
            last_used: Instant::now(),
        })
    }

    pub fn has_images(&self) -> bool {
        !self.images.is_empty()
    }

    /// Resolves every image for `platforms`; the first failure names its image.
    pub async fn resolve(
        &self,
        platforms: &[Platform],
    ) -> Result<Vec<Resolution>, (usize, ResolveError)> {
        let mut out = Vec::with_capacity(self.images.len());
        for (i, image) in self.images.iter().enumerate() {
            out.push(
                self.registries
                    .resolve(image, platforms)
                    .await
                    .map_err(|e| (i, e))?,
            );
        }
        Ok(out)
    }

    /// The `Authorization` for each image's registry, fetched again once old.
    pub async fn refresh_auth(&mut self) -> Result<(), (usize, ResolveError)> {
        for (i, image) in self.images.iter().enumerate() {
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
    }

    /// Drives every target once and folds what they report into `st`.
    pub async fn tick(
        &mut self,
        st: &mut PreheatStatus,
        targets: &[Target],
        now: &Time,
    ) -> Verdict {
        let plan = Plan::build(&self.images, &st.images, &self.spec.urls, &self.registries);
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
        self.last_tick = Some(Instant::now());
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        status::apply_tick(st, &plan, &names, &report, self.spec.backoff_limit, now)
    }
}
