//! The Preheat reconcile: validate → find the cluster → read pull secrets →
//! resolve (once per generation) → choose peers → tick → status → events.
//!
//! A reconcile never waits for a download: it asks the peers once and
//! requeues (every `poll` while running, with backoff after errors). Its
//! own calls are bounded: resolving all images (and refreshing their
//! tokens) takes at most `Pace::registry_timeout` (60 s), each peer call
//! at most 60 s. Every status write, ours included, wakes the controller
//! at once; such a wake-up before the next step is due (poll interval or
//! retry backoff, kept in the in-memory `Job`) only requeues for the rest
//! of the wait. A finished Preheat is left alone until its spec changes,
//! except for its TTL. Every failure that waiting cannot fix ends the
//! Preheat as Failed with a message; the rest are retried at most
//! `spec.backoffLimit` times.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, info_span, warn, Instrument};

use super::crd::{Phase, Preheat, PreheatSpec, PreheatStatus, Scope};
use super::credentials::{Credentials, DOCKER_CONFIG_KEY, DOCKER_CONFIG_TYPE};
use super::job::{Job, Pace};
use super::platform::{self, Platform};
use super::status::{self, Next};
use super::targets::{self, Target, TargetError};
use super::validate::{validate, Validated};
use crate::build::{Component, LABEL_COMPONENT, LABEL_INSTANCE, MANAGER};
use crate::crd::DragonflyCluster;
use crate::metrics::Metrics;

/// Poll every 5 s; back off from 5 s doubling to 5 min.
const PACE: Pace = Pace {
    poll: Duration::from_secs(5),
    backoff_base: Duration::from_secs(5),
    backoff_max: Duration::from_secs(300),
    registry_timeout: Duration::from_secs(60),
};
/// Runs of Preheats not seen for this long (deleted mid-run) are dropped.
const JOB_IDLE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("Preheat has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "PreheatApiForbidden",
            Error::Kube(_) => "PreheatApiError",
            Error::NoNamespace => "PreheatNoNamespace",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Injected so tests get stable timestamps.
    pub clock: Box<dyn Fn() -> Time + Send + Sync>,
    /// How often a running Preheat looks at its peers, how it backs off.
    pub pace: Pace,
    /// The operator's member certificate for the dfdaemons' peer ports.
    pub tls: Option<identity::MemberTls>,
    jobs: Mutex<HashMap<String, Job>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            clock: Box::new(|| Time(Timestamp::now())),
            pace: PACE,
            tls: None,
            jobs: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// The run kept for `key`, if it belongs to this uid and generation.
    fn take_job(&self, key: &str, id: &(String, Option<i64>)) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.retain(|_, j| j.last_used.elapsed() < JOB_IDLE);
        jobs.remove(key).filter(|j| &j.id == id)
    }

    fn drop_job(&self, key: &str) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    fn put_job(&self, key: String, mut job: Job) {
        job.last_used = Instant::now();
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, job);
    }

    fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        self.pace.retry_delay(i32::try_from(*n).unwrap_or(i32::MAX))
    }

    fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

fn key(ph: &Preheat) -> String {
    format!("{}/{}", ph.namespace().unwrap_or_default(), ph.name_any())
}

pub async fn reconcile(ph: Arc<Preheat>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "preheat",
        namespace = %ph.namespace().unwrap_or_default(),
        name = %ph.name_any(),
        generation = ph.metadata.generation.unwrap_or(0)
    );
    async move {
        let result = reconcile_one(&ph, &ctx).await;
        if result.is_ok() {
            ctx.reset_backoff(&key(&ph));
        }
        result
    }
    .instrument(span)
    .await
}

/// API errors (not the Preheat's own failures, which live in its status)
/// are retried with a per-object exponential backoff.
pub fn error_policy(ph: Arc<Preheat>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.reason());
    let delay = ctx.backoff(&key(&ph));
    warn!(name = %ph.name_any(), reason = error.reason(), %error, retry_in = ?delay, "preheat reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_one(ph: &Preheat, ctx: &Context) -> Result<Action, Error> {
    let ns = ph.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Preheat> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(ph);
    let now = (ctx.clock)();
    let generation = ph.metadata.generation;
    let next = status::next(ph.status.as_ref(), generation);
    if next == Next::Finished {
        ctx.drop_job(&k);
        return expire(&api, ph, ctx, &now).await;
    }
    let id = (ph.uid().unwrap_or_default(), generation);
    let mut job = ctx.take_job(&k, &id);
    // Status writes (our own after each step) wake us at once: the next
    // step still waits for its poll interval or retry backoff.
    if let Some(left) = job.as_ref().and_then(Job::wait_left) {
        if let Some(j) = job.take() {
            ctx.put_job(k, j);
        }
        return Ok(Action::requeue(left));
    }

    let previous = ph.status.clone();
    let mut st = match (next, previous.clone()) {
        (Next::Continue, Some(s)) => s,
        _ => status::start(&ph.spec, generation, &now),
    };
    let before_phase = match next {
        Next::Continue => st.phase,
        _ => Phase::Pending,
    };
    let before_retries = st.retries;
    let action = step(ph, &ns, &mut st, &mut job, ctx, &now).await;
    if let Some(j) = job {
        if !st.phase.is_finished() {
            ctx.put_job(k, j);
        }
    }
    let action = action?;
    if previous.as_ref() != Some(&st) {
        write_status(&api, ph, &st).await?;
    }
    publish_transitions(ctx, ph, before_phase, before_retries, &st).await;
    Ok(action)
}

/// One step of the run; every outcome is written into `st`.
async fn step(
    ph: &Preheat,
    ns: &str,
    st: &mut PreheatStatus,
    job: &mut Option<Job>,
    ctx: &Context,
    now: &Time,
) -> Result<Action, Error> {
    let spec = &ph.spec;
    let validated = match validate(spec) {
        Ok(v) => v,
        Err(message) => {
            status::fail(st, "InvalidSpec", &message, None, now);
            return Ok(finished(spec));
        }
    };
    let clusters: Api<DragonflyCluster> = Api::namespaced(ctx.client.clone(), ns);
    let Some(dfc) = clusters.get_opt(&spec.cluster).await? else {
        let message = format!(
            "DragonflyCluster {:?} not found in namespace {ns}",
            spec.cluster
        );
        status::fail(st, "ClusterNotFound", &message, None, now);
        return Ok(finished(spec));
    };

    let j = match job {
        Some(j) => j,
        None => match new_job(ph, ns, &dfc, &validated, ctx).await? {
            Ok(j) => job.insert(j),
            Err((reason, message)) => {
                status::fail(st, reason, &message, None, now);
                return Ok(finished(spec));
            }
        },
    };

    let platforms = if status::is_resolved(st) || !j.has_images() {
        vec![]
    } else if !validated.platforms.is_empty() {
        validated.platforms.clone()
    } else {
        let platforms = node_platforms(ctx, &dfc).await?;
        if platforms.is_empty() {
            let message = format!(
                "cannot tell the platforms of DragonflyCluster {}'s nodes (no node reports kubernetes.io/os and kubernetes.io/arch); set spec.platforms",
                dfc.name_any()
            );
            status::fail(st, "NoPlatforms", &message, None, now);
            return Ok(finished(spec));
        }
        platforms
    };
    let targets = find_targets(ctx, ns, &dfc, spec, &st.targets).await?;
    Ok(match j.step(st, &platforms, targets, now).await {
        Some(wait) => Action::requeue(wait),
        None => finished(spec),
    })
}

/// After the run: wake up for the TTL, if any.
fn finished(spec: &PreheatSpec) -> Action {
    match spec.ttl_seconds_after_finished {
        Some(ttl) => Action::requeue(Duration::from_secs(u64::try_from(ttl).unwrap_or(0))),
        None => Action::await_change(),
    }
}

/// A finished Preheat: deleted once its TTL passed.
async fn expire(
    api: &Api<Preheat>,
    ph: &Preheat,
    ctx: &Context,
    now: &Time,
) -> Result<Action, Error> {
    let (Some(ttl), Some(done)) = (
        ph.spec.ttl_seconds_after_finished,
        ph.status.as_ref().and_then(|s| s.completion_time.as_ref()),
    ) else {
        return Ok(Action::await_change());
    };
    let due = done.0.as_second().saturating_add(i64::from(ttl));
    let left = due.saturating_sub(now.0.as_second());
    if left > 0 {
        return Ok(Action::requeue(Duration::from_secs(left.unsigned_abs())));
    }
    info!(ttl, "TTL after finishing passed; deleting the Preheat");
    publish(
        ctx,
        ph,
        EventType::Normal,
        "Expired",
        Some(format!("deleted {ttl}s after it finished")),
    )
    .await;
    match api.delete(&ph.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// Credentials and registry settings of a new run. `Err((reason, message))`
/// ends the Preheat (a missing or malformed secret).
async fn new_job(
    ph: &Preheat,
    ns: &str,
    dfc: &DragonflyCluster,
    validated: &Validated,
    ctx: &Context,
) -> Result<Result<Job, (&'static str, String)>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut credentials = Credentials::default();
    for r in &ph.spec.pull_secrets {
        let Some(secret) = secrets.get_opt(&r.name).await? else {
            return Ok(Err((
                "SecretNotFound",
                format!("pull secret {:?} not found in namespace {ns}", r.name),
            )));
        };
        let type_ = secret.type_.as_deref().unwrap_or("Opaque");
        if type_ != DOCKER_CONFIG_TYPE {
            return Ok(Err((
                "InvalidSecret",
                format!(
                    "pull secret {:?} has type {type_}, not {DOCKER_CONFIG_TYPE}",
                    r.name
                ),
            )));
        }
        let Some(data) = secret.data.as_ref().and_then(|d| d.get(DOCKER_CONFIG_KEY)) else {
            return Ok(Err((
                "InvalidSecret",
                format!("pull secret {:?} has no {DOCKER_CONFIG_KEY} key", r.name),
            )));
        };
        match Credentials::from_docker_config(&data.0, &format!("pull secret {:?}", r.name)) {
            Ok(c) => credentials.merge(c),
            Err(message) => return Ok(Err(("InvalidSecret", message))),
        }
    }
    let id = (ph.uid().unwrap_or_default(), ph.metadata.generation);
    Ok(Job::new(
        id,
        &ph.spec,
        validated,
        &plain_http_registries(dfc),
        credentials,
        ctx.pace,
        ctx.tls.as_ref(),
    )
    .map_err(|m| ("Internal", m)))
}

/// The cluster's `http://` registries, as `host[:port]`.
fn plain_http_registries(dfc: &DragonflyCluster) -> Vec<String> {
    dfc.spec
        .registries
        .iter()
        .filter_map(|r| r.strip_prefix("http://"))
        .map(|h| h.trim_end_matches('/').to_ascii_lowercase())
        .collect()
}

fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The platforms of the nodes the cluster's dfdaemons may run on.
async fn node_platforms(ctx: &Context, dfc: &DragonflyCluster) -> Result<Vec<Platform>, Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let lp = ListParams::default().labels(&selector(&dfc.spec.dfdaemon.node_selector));
    Ok(platform::of_nodes(&nodes.list(&lp).await?.items))
}

async fn find_targets(
    ctx: &Context,
    ns: &str,
    dfc: &DragonflyCluster,
    spec: &PreheatSpec,
    previous: &[String],
) -> Result<Result<Vec<Target>, TargetError>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = |c: Component| {
        let lp = ListParams::default().labels(&format!(
            "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={}",
            dfc.name_any(),
            c.as_str()
        ));
        let pods = pods.clone();
        async move { pods.list(&lp).await.map(|l| l.items) }
    };
    let seed_scope = matches!(spec.scope, Scope::OneSeedPeer | Scope::AllSeedPeers);
    let (seeds, daemons) = if seed_scope {
        if !dfc.spec.seed_peer.enabled {
            (vec![], vec![])
        } else {
            (list(Component::SeedPeer).await?, vec![])
        }
    } else {
        (vec![], list(Component::Dfdaemon).await?)
    };
    let selected: Option<BTreeSet<String>> = if spec.scope == Scope::NodeSelector {
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let lp = ListParams::default().labels(&selector(&spec.node_selector));
        Some(
            nodes
                .list(&lp)
                .await?
                .items
                .iter()
                .map(|n| n.name_any())
                .collect(),
        )
    } else {
        None
    };
    Ok(targets::choose(
        dfc,
        spec.scope,
        &seeds,
        &daemons,
        selected.as_ref(),
        previous,
    ))
}

/// Server-side apply of the whole status under the operator's field manager.
async fn write_status(api: &Api<Preheat>, ph: &Preheat, st: &PreheatStatus) -> Result<(), Error> {
    let body = json!({
        "apiVersion": Preheat::api_version(&()),
        "kind": Preheat::kind(&()),
        "status": st,
    });
    api.patch_status(
        &ph.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Events on start (downloads begin), success, failure and the first retry.
async fn publish_transitions(
    ctx: &Context,
    ph: &Preheat,
    before: Phase,
    retries: i32,
    st: &PreheatStatus,
) {
    if before == st.phase && !(retries == 0 && st.retries > 0) {
        return;
    }
    if before == Phase::Pending && matches!(st.phase, Phase::Running | Phase::Succeeded) {
        let note = format!(
            "preheating {} image(s) and {} file(s) on {}",
            ph.spec.images.len(),
            ph.spec.urls.len(),
            st.targets.join(", ")
        );
        publish(ctx, ph, EventType::Normal, "Started", Some(note)).await;
    }
    match st.phase {
        Phase::Succeeded if before != Phase::Succeeded => {
            publish(
                ctx,
                ph,
                EventType::Normal,
                "Succeeded",
                Some(st.message.clone()),
            )
            .await
        }
        Phase::Failed if before != Phase::Failed => {
            let reason = status::condition(st, status::FAILED)
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| "Failed".into());
            publish(
                ctx,
                ph,
                EventType::Warning,
                "Failed",
                Some(format!("{reason}: {}", st.message)),
            )
            .await
        }
        Phase::Pending | Phase::Running if retries == 0 && st.retries > 0 => {
            publish(
                ctx,
                ph,
                EventType::Warning,
                "Retrying",
                Some(st.message.clone()),
            )
            .await
        }
        _ => {}
    }
}

/// Best effort: a lost event never fails a reconcile.
async fn publish(
    ctx: &Context,
    ph: &Preheat,
    type_: EventType,
    reason: &str,
    note: Option<String>,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: note.map(|n| n.chars().take(1000).collect()),
        action: "Preheating".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &ph.object_ref(&())).await {
        warn!(%e, reason, "could not publish event");
    }
}

/// Runs the Preheat controller until `shutdown` resolves.
pub async fn run(
    api: Api<Preheat>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::new(api, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(name = %obj.name, "preheat reconciled"),
                Err(e) => warn!(error = %e, "preheat controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
