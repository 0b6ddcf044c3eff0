//! The reconcile: finalizer → validate → build → apply/prune → status → events.
//! Deletion runs the same pipeline with the cleanup objects as the desired set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, info_span, warn, Instrument};

use crate::apply::{self, ApplyError, Change, Existing, Verb};
use crate::build::{self, BuildError, Component, LABEL_COMPONENT, LABEL_INSTANCE, MANAGER};
use crate::ca_bundles;
use crate::causes::{Creator, Evidence};
use crate::crd::{DefaultImage, DragonflyCluster, DragonflyClusterStatus};
use crate::metrics::Metrics;
use crate::nodes;
use crate::seed_storage::{self, SeedStorage};
use crate::status::{self, READY};
use crate::validate::{validate, validate_name};

/// Held until every node's containerd mirror config is restored.
pub const FINALIZER: &str = "p2p.dragonfly.dev/cleanup";
/// A referenced registry CA bundle is missing or holds no certificate.
const CA_BUNDLE_UNAVAILABLE: &str = "CABundleUnavailable";
const REQUEUE_READY: Duration = Duration::from_secs(300);
const REQUEUE_PROGRESSING: Duration = Duration::from_secs(30);
const REQUEUE_CLEANUP: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("DragonflyCluster has no namespace")]
    NoNamespace,
    /// Writes the API server refused (also in the status and events).
    #[error("{}", join_failures(.0))]
    Apply(Vec<ApplyError>),
}

fn join_failures(f: &[ApplyError]) -> String {
    f.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A small, fixed set of metric labels for API status codes.
fn api_reason(code: u16) -> &'static str {
    match code {
        403 => "ApiForbidden",
        404 => "ApiNotFound",
        409 => "ApiConflict",
        422 => "ApiInvalid",
        500..=599 => "ApiServerError",
        _ => "ApiOther",
    }
}

impl Error {
    /// A small, fixed set of metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) => api_reason(s.code),
            Error::Kube(_) => "ApiUnreachable",
            Error::Build(_) => "Build",
            Error::NoNamespace => "NoNamespace",
            Error::Apply(f) => f
                .first()
                .and_then(ApplyError::code)
                .map_or("ApiUnreachable", api_reason),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Injected so tests get stable condition timestamps.
    pub clock: Box<dyn Fn() -> Time + Send + Sync>,
    /// What unset `spec.image` fields mean: this operator's own data-plane
    /// image, so an operator upgrade rolls the data plane.
    pub images: DefaultImage,
    /// The cluster identity member pods get: the issuer's URL and the
    /// current CA bundle (None: members run without TLS).
    pub tls: Option<(
        String,
        tokio::sync::watch::Receiver<std::sync::Arc<crate::cluster_ca::CaState>>,
    )>,
    /// The operator's namespace, where the admission policy's parameter
    /// ConfigMap (`node_agents::CONFIGMAP`) lives (None: not maintained).
    pub node_agents_namespace: Option<String>,
    failures: Mutex<HashMap<String, u32>>,
    /// kubelet's recent pulls (its `Pulled` events), read at most once a
    /// minute whatever the number of reconciles.
    pulls: Mutex<Option<(std::time::Instant, Arc<Vec<crate::bypass::Pull>>)>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            clock: Box::new(|| Time(Timestamp::now())),
            images: DefaultImage::from_env(),
            tls: None,
            node_agents_namespace: None,
            failures: Mutex::default(),
            pulls: Mutex::default(),
        }
    }

    /// Member pods get their identity from the issuer at `issuer_url`.
    pub fn with_tls(
        mut self,
        issuer_url: String,
        ca: tokio::sync::watch::Receiver<std::sync::Arc<crate::cluster_ca::CaState>>,
    ) -> Self {
        self.tls = Some((issuer_url, ca));
        self
    }

    /// Keep the node-agent policy's parameter ConfigMap in `namespace`.
    pub fn with_node_agents(mut self, namespace: String) -> Self {
        self.node_agents_namespace = Some(namespace);
        self
    }

    /// Lists this cluster's dfdaemon account for the admission policy;
    /// before its DaemonSet exists, so no node agent runs unconstrained.
    async fn add_node_agent(&self, ns: &str, name: &str) -> Result<(), Error> {
        if let Some(op_ns) = &self.node_agents_namespace {
            crate::node_agents::add(&self.client, op_ns, ns, name).await?;
        }
        Ok(())
    }

    /// Drops it once the finalizer goes; a failure only leaves a stale entry.
    async fn remove_node_agent(&self, ns: &str, name: &str) {
        if let Some(op_ns) = &self.node_agents_namespace {
            if let Err(e) = crate::node_agents::remove(&self.client, op_ns, ns, name).await {
                warn!(error = %e, "could not remove the cluster from the node-agent policy parameters");
            }
        }
    }

    fn tls_plan(&self) -> Option<build::TlsPlan> {
        self.tls.as_ref().map(|(url, ca)| build::TlsPlan {
            issuer_url: url.clone(),
            ca_bundle: ca.borrow().bundle.clone(),
        })
    }

    fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = BACKOFF_BASE.saturating_mul(1u32 << (*n - 1).min(10));
        exp.min(BACKOFF_MAX)
    }

    fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

fn key(dfc: &DragonflyCluster) -> String {
    format!("{}/{}", dfc.namespace().unwrap_or_default(), dfc.name_any())
}

pub async fn reconcile(dfc: Arc<DragonflyCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        namespace = %dfc.namespace().unwrap_or_default(),
        name = %dfc.name_any(),
        generation = dfc.metadata.generation.unwrap_or(0)
    );
    async move {
        ctx.metrics.reconciles.inc();
        let start = Instant::now();
        let result = reconcile_one(&dfc, &ctx).await;
        ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
        if result.is_ok() {
            ctx.reset_backoff(&key(&dfc));
        }
        result
    }
    .instrument(span)
    .await
}

/// Count the failure and retry with exponential backoff per object.
pub fn error_policy(dfc: Arc<DragonflyCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.reason());
    let delay = ctx.backoff(&key(&dfc));
    warn!(name = %dfc.name_any(), reason = error.reason(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_one(dfc: &DragonflyCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = dfc.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<DragonflyCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = dfc.finalizers().iter().any(|f| f == FINALIZER);

    if dfc.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        return cleanup(dfc, ctx, &ns, &api).await;
    }
    if !has_finalizer {
        let mut finalizers = dfc.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        set_finalizers(&api, dfc, finalizers).await?;
    }
    ctx.add_node_agent(&ns, &dfc.name_any()).await?;

    let now = (ctx.clock)();
    let mut problems = validate(&dfc.spec);
    problems.extend(validate_name(&dfc.name_any()));
    if !problems.is_empty() {
        ctx.metrics.failure("InvalidSpec");
        let new = status::invalid(
            &problems,
            dfc.metadata.generation,
            dfc.status.as_ref(),
            &now,
        );
        warn_on_new_status(ctx, &api, dfc, &new, "InvalidSpec").await?;
        // Nothing to retry until the spec changes.
        return Ok(Action::await_change());
    }

    let ca_bundle_digests = match ca_bundles::read(&ctx.client, &ns, &dfc.spec).await? {
        Ok(digests) => digests,
        Err(problems) => {
            ctx.metrics.failure(CA_BUNDLE_UNAVAILABLE);
            let new = status::blocked(
                CA_BUNDLE_UNAVAILABLE,
                &problems,
                dfc.metadata.generation,
                dfc.status.as_ref(),
                &now,
            );
            warn_on_new_status(ctx, &api, dfc, &new, CA_BUNDLE_UNAVAILABLE).await?;
            // Creating the Secret or ConfigMap does not trigger a reconcile.
            return Ok(Action::requeue(REQUEUE_PROGRESSING));
        }
    };
    let bctx = build::Ctx::new(dfc, &ctx.images)?
        .with_ca_bundle_digests(ca_bundle_digests)
        .with_tls(ctx.tls_plan())
        .with_operator_namespace(std::env::var("POD_NAMESPACE").ok());
    let mut existing = apply::observe(&ctx.client, &ns, &bctx.name).await?;
    let storage = seed_storage(ctx, &bctx, &existing)
        .instrument(info_span!("seed_storage"))
        .await;
    let bctx = bctx.with_seed_storage(storage.storage);
    if storage.replace {
        replace_seed_peers(ctx, &bctx, &mut existing, &storage).await?;
    }
    let desired = build::desired_objects(&bctx)?;
    let plan = apply::plan(desired, &existing, dfc.uid().as_deref().unwrap_or_default());
    let done = apply::execute(&ctx.client, &ns, plan, &mut existing).await;
    publish_changes(ctx, dfc, &done.changes).await;
    warn_on_ephemeral_seed_cache(ctx, &bctx, &done.changes, &storage).await;

    let observed = observe_workloads(ctx, &bctx, &existing, storage.why).await;
    if !done.failures.is_empty() {
        let new = match observed {
            Ok(o) => status::derive(
                &dfc.spec,
                dfc.metadata.generation,
                &o,
                dfc.status.as_ref(),
                &now,
            ),
            Err(e) => {
                warn!(%e, "cannot observe the workloads; reporting the apply failure only");
                let mut s = dfc.status.clone().unwrap_or_default();
                s.observed_generation = dfc.metadata.generation;
                s
            }
        };
        return report_apply_failures(ctx, dfc, &api, new, done.failures, &now).await;
    }
    let new = status::derive(
        &dfc.spec,
        dfc.metadata.generation,
        &observed?,
        dfc.status.as_ref(),
        &now,
    );
    let was_ready = is_ready(dfc.status.as_ref());
    let ready = is_ready(Some(&new));
    if write_status(&api, dfc, &new).await? && was_ready != ready {
        let c = status::condition(Some(&new), READY);
        let (type_, reason) = if ready {
            (EventType::Normal, "Ready")
        } else {
            (EventType::Warning, "NotReady")
        };
        publish(
            ctx,
            dfc,
            type_,
            reason,
            "Reconciling",
            c.map(|c| c.message.clone()),
        )
        .await;
    }
    Ok(Action::requeue(if ready {
        REQUEUE_READY
    } else {
        REQUEUE_PROGRESSING
    }))
}

/// Writes the API server refused: `Ready=False, reason=ApplyFailed` with the
/// server's message per object, a Warning event per object when that is new,
/// and an error so the controller retries with backoff (5 s doubling to
/// 5 min), never in a tight loop.
async fn report_apply_failures(
    ctx: &Context,
    dfc: &DragonflyCluster,
    api: &Api<DragonflyCluster>,
    mut new: DragonflyClusterStatus,
    failures: Vec<ApplyError>,
    now: &Time,
) -> Result<Action, Error> {
    let messages: Vec<String> = failures.iter().map(ToString::to_string).collect();
    status::apply_failed(&mut new, &messages, dfc.metadata.generation, now);
    let said = |s: Option<&DragonflyClusterStatus>| {
        status::condition(s, READY).map(|c| (c.reason.clone(), c.message.clone()))
    };
    let news = said(dfc.status.as_ref()) != said(Some(&new));
    // The refusal is the error to retry on; a failed status write only loses the report.
    if let Err(e) = write_status(api, dfc, &new).await {
        warn!(%e, "could not record the apply failure in the status");
    }
    if news {
        for f in failures.iter().take(5) {
            let related = ObjectReference {
                api_version: Some(f.api_version.clone()),
                kind: Some(f.kind.clone()),
                name: Some(f.name.clone()),
                namespace: dfc.namespace(),
                ..ObjectReference::default()
            };
            publish_about(
                ctx,
                dfc,
                EventType::Warning,
                "ApplyFailed",
                "Reconciling",
                Some(f.to_string()),
                Some(related),
            )
            .await;
        }
    }
    Err(Error::Apply(failures))
}

/// Whether the namespace is being deleted. Best effort: when it cannot be
/// read, the refusal of the cleanup DaemonSet's creation says it instead.
async fn namespace_terminating(ctx: &Context, ns: &str) -> bool {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(ns).await {
        Ok(Some(n)) => {
            n.metadata.deletion_timestamp.is_some()
                || n.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
        }
        Ok(None) => true,
        Err(e) => {
            warn!(%e, namespace = ns, "cannot read the namespace");
            false
        }
    }
}

async fn observe_workloads(
    ctx: &Context,
    bctx: &build::Ctx<'_>,
    existing: &Existing,
    seed_cache_ephemeral: Option<String>,
) -> Result<status::Observed, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &bctx.namespace);
    let lp = ListParams::default().labels(&format!(
        "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={}",
        bctx.name,
        Component::Dfdaemon.as_str()
    ));
    let pods = pods.list(&lp).await?.items;
    let runtimes = node_runtimes(ctx, &pods).await?;
    let mut nodes: Vec<(String, nodes::NodeState)> = pods
        .iter()
        .filter_map(|pod| {
            let node = pod.spec.as_ref()?.node_name.as_deref()?;
            nodes::read_report(pod, runtimes.get(node).map(String::as_str))
        })
        .collect();
    mark_bypassing_nodes(ctx, bctx, &pods, &mut nodes).await;
    let mut observed = status::Observed {
        scheduler: existing
            .typed::<Deployment>("Deployment", &bctx.object_name(Component::Scheduler)),
        seed_peer: existing
            .typed::<StatefulSet>("StatefulSet", &bctx.object_name(Component::SeedPeer)),
        dfdaemon: existing.typed::<DaemonSet>("DaemonSet", &bctx.object_name(Component::Dfdaemon)),
        nodes,
        seed_cache_ephemeral,
        ..status::Observed::default()
    };
    // Only what is not ready is explained: a ready cluster costs no call.
    let unready = status::unready(&bctx.dfc.spec, &observed);
    if unready.scheduler {
        observed.scheduler_evidence =
            Some(gather_evidence(ctx, bctx, Component::Scheduler, None).await);
    }
    if unready.seed_peer {
        observed.seed_peer_evidence =
            Some(gather_evidence(ctx, bctx, Component::SeedPeer, None).await);
    }
    if unready.dfdaemon {
        observed.dfdaemon_evidence =
            Some(gather_evidence(ctx, bctx, Component::Dfdaemon, Some(pods)).await);
    }
    Ok(observed)
}

/// Bounds on what explaining one component may read.
const MAX_EVIDENCE_PODS: u32 = 200;
const MAX_EVIDENCE_EVENTS: u32 = 100;
const MAX_EVIDENCE_CLAIMS: u32 = 100;
/// Pending claims whose events are read (the line names one, counts the rest).
const MAX_CLAIMS_EXPLAINED: usize = 3;

/// What the cluster says about a component that is not ready: its pods
/// (the dfdaemon's are already listed), its creator's `FailedCreate`
/// events and, for seed peers, their claims and what was said about the
/// Pending ones. Best effort: a list that fails only leaves a cause unnamed.
async fn gather_evidence(
    ctx: &Context,
    bctx: &build::Ctx<'_>,
    component: Component,
    pods: Option<Vec<Pod>>,
) -> Evidence {
    let name = bctx.object_name(component);
    let creator = match component {
        Component::Scheduler => Creator::ReplicaSetsOf(name),
        Component::SeedPeer => Creator::Named {
            kind: "StatefulSet",
            name,
        },
        _ => Creator::Named {
            kind: "DaemonSet",
            name,
        },
    };
    let span = info_span!("explain", component = component.as_str());
    async move {
        let ns = &bctx.namespace;
        let labels = format!(
            "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={}",
            bctx.name,
            component.as_str()
        );
        let mut ev = Evidence::new(creator.clone());
        ev.pods = match pods {
            Some(p) => p,
            None => {
                let lp = ListParams::default()
                    .labels(&labels)
                    .limit(MAX_EVIDENCE_PODS);
                list_or_warn(&Api::namespaced(ctx.client.clone(), ns), &lp, "pods").await
            }
        };
        // A Deployment's ReplicaSets are `<deployment>-<hash>`, which no
        // field selector matches: all ReplicaSet failures, filtered by name.
        let fields = match &creator {
            Creator::Named { kind, name } => {
                format!("involvedObject.kind={kind},involvedObject.name={name},reason=FailedCreate")
            }
            Creator::ReplicaSetsOf(_) => {
                "involvedObject.kind=ReplicaSet,reason=FailedCreate".into()
            }
        };
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(ctx.client.clone(), ns);
        let lp = ListParams::default()
            .fields(&fields)
            .limit(MAX_EVIDENCE_EVENTS);
        ev.events = list_or_warn(&events, &lp, "events").await;
        if component == Component::SeedPeer {
            let lp = ListParams::default()
                .labels(&labels)
                .limit(MAX_EVIDENCE_CLAIMS);
            ev.claims = list_or_warn(&Api::namespaced(ctx.client.clone(), ns), &lp, "claims").await;
            let mut pending: Vec<String> = ev
                .claims
                .iter()
                .filter(|c| seed_storage::any_pending(std::slice::from_ref(*c)))
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            pending.sort();
            for claim in pending.into_iter().take(MAX_CLAIMS_EXPLAINED) {
                let lp = ListParams::default()
                    .fields(&format!(
                        "involvedObject.kind=PersistentVolumeClaim,involvedObject.name={claim}"
                    ))
                    .limit(MAX_EVIDENCE_EVENTS);
                ev.events
                    .extend(list_or_warn(&events, &lp, "claim events").await);
            }
        }
        ev
    }
    .instrument(span)
    .await
}

/// A list for explaining, or nothing (logged) when it fails.
async fn list_or_warn<K>(api: &Api<K>, lp: &ListParams, what: &str) -> Vec<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(lp).await {
        Ok(l) => l.items,
        Err(e) => {
            warn!(%e, what, "cannot list; the cause stays unnamed");
            Vec::new()
        }
    }
}

/// Bound on the StorageClasses and PersistentVolumes one check reads.
const MAX_STORAGE_CLASSES: u32 = 200;
const MAX_VOLUMES: u32 = 500;

/// Where the seed peers keep their cache (`seed_storage`). Reads the
/// cluster's storage only while that can change the answer: no
/// StatefulSet yet, one on an emptyDir, or one whose claims are Pending.
async fn seed_storage(
    ctx: &Context,
    bctx: &build::Ctx<'_>,
    existing: &Existing,
) -> seed_storage::Decision {
    let spec = &bctx.dfc.spec.seed_peer;
    let sts: Option<StatefulSet> =
        existing.typed("StatefulSet", &bctx.object_name(Component::SeedPeer));
    let current = sts.as_ref().map(seed_storage::current);
    if !spec.enabled {
        return seed_storage::decide(current, false, None);
    }
    let mut pending = false;
    if current == Some(SeedStorage::Claims) {
        let ready = sts
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready >= spec.replicas {
            return seed_storage::decide(current, false, None);
        }
        let lp = ListParams::default()
            .labels(&format!(
                "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={}",
                bctx.name,
                Component::SeedPeer.as_str()
            ))
            .limit(MAX_EVIDENCE_CLAIMS);
        let claims: Vec<PersistentVolumeClaim> = list_or_warn(
            &Api::namespaced(ctx.client.clone(), &bctx.namespace),
            &lp,
            "seed peer claims",
        )
        .await;
        pending = seed_storage::any_pending(&claims);
        if !pending {
            return seed_storage::decide(current, false, None);
        }
    }
    let check = match storage_check(ctx, &spec.storage, spec.replicas).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "cannot tell whether seed peer claims can bind; keeping their storage as it is");
            None
        }
    };
    seed_storage::decide(current, pending, check.as_ref())
}

#[derive(Debug, thiserror::Error)]
enum StorageCheckError {
    #[error("cannot list StorageClasses: {0}")]
    Classes(#[source] kube::Error),
    #[error("cannot list PersistentVolumes: {0}")]
    Volumes(#[source] kube::Error),
    #[error("more than {MAX_VOLUMES} PersistentVolumes; not read further")]
    TooManyVolumes,
}

/// Whether the seed peers' claims can bind: the StorageClasses first, the
/// PersistentVolumes only when no class settles it.
async fn storage_check(
    ctx: &Context,
    storage: &crate::crd::StorageSpec,
    replicas: i32,
) -> Result<Result<(), String>, StorageCheckError> {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let classes = classes
        .list(&ListParams::default().limit(MAX_STORAGE_CLASSES))
        .await
        .map_err(StorageCheckError::Classes)?
        .items;
    if seed_storage::class_available(storage, &classes) {
        return Ok(Ok(()));
    }
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let list = volumes
        .list(&ListParams::default().limit(MAX_VOLUMES))
        .await
        .map_err(StorageCheckError::Volumes)?;
    let verdict = seed_storage::claims_can_bind(storage, replicas, &classes, &list.items);
    // A partial list proves nothing missing: only a complete one may make
    // the cache ephemeral.
    if verdict.is_err()
        && list
            .metadata
            .continue_
            .as_deref()
            .is_some_and(|c| !c.is_empty())
    {
        return Err(StorageCheckError::TooManyVolumes);
    }
    Ok(verdict)
}

/// `volumeClaimTemplates` are immutable: the seed peers' StatefulSet is
/// deleted (its pods and, by its retention policy, its claims with it)
/// and the apply that follows creates it with the new storage.
async fn replace_seed_peers(
    ctx: &Context,
    bctx: &build::Ctx<'_>,
    existing: &mut Existing,
    storage: &seed_storage::Decision,
) -> Result<(), Error> {
    let name = bctx.object_name(Component::SeedPeer);
    let ar = ApiResource::erase::<StatefulSet>(&());
    apply::delete(&ctx.client, &bctx.namespace, &ar, &name).await?;
    existing.objects.remove(&(ar.kind.clone(), name.clone()));
    let note = match storage.storage {
        SeedStorage::Claims => format!(
            "StatefulSet {name} recreated with a PersistentVolumeClaim per seed peer: storage for them now exists"
        ),
        SeedStorage::Ephemeral => format!(
            "StatefulSet {name} recreated with an emptyDir cache: its claims cannot bind"
        ),
    };
    info!(%note, "replacing the seed peers' StatefulSet");
    let related = ObjectReference {
        api_version: Some(ar.api_version.clone()),
        kind: Some(ar.kind.clone()),
        name: Some(name),
        namespace: Some(bctx.namespace.clone()),
        ..ObjectReference::default()
    };
    publish_about(
        ctx,
        bctx.dfc,
        EventType::Normal,
        "SeedStorageChanged",
        "Reconciling",
        Some(note),
        Some(related),
    )
    .await;
    Ok(())
}

/// A Warning when the seed peers' StatefulSet was just created on an
/// emptyDir: the condition keeps saying it, the event says it once.
async fn warn_on_ephemeral_seed_cache(
    ctx: &Context,
    bctx: &build::Ctx<'_>,
    changes: &[Change],
    storage: &seed_storage::Decision,
) {
    let name = bctx.object_name(Component::SeedPeer);
    let created = changes
        .iter()
        .any(|c| c.kind == "StatefulSet" && c.name == name && c.verb == Verb::Created);
    if let (true, Some(why)) = (created, &storage.why) {
        publish(
            ctx,
            bctx.dfc,
            EventType::Warning,
            "EphemeralSeedCache",
            "Reconciling",
            Some(why.clone()),
        )
        .await;
    }
}

/// Nodes whose files are in place but whose latest pull of a mirrored image
/// went around the mirror get a `PullsBypassMirror` problem. Best effort:
/// without kubelet's events (RBAC, API errors) nothing is marked.
async fn mark_bypassing_nodes(
    ctx: &Context,
    bctx: &build::Ctx<'_>,
    pods: &[Pod],
    nodes: &mut [(String, nodes::NodeState)],
) {
    use nodes::NodeState;
    if !nodes
        .iter()
        .any(|(_, s)| matches!(s, NodeState::Configured | NodeState::InUse))
    {
        return;
    }
    let Some(pulls) = recent_pulls(ctx).await else {
        return;
    };
    let registries = bctx.dfc.spec.effective_registries();
    let now = (ctx.clock)().0;
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some(view) = nodes::mirror_view(pod, node) else {
            continue;
        };
        let Some(pull) = crate::bypass::bypassed(&pulls, &view, &registries, now) else {
            continue;
        };
        let Some(slot) = nodes.iter_mut().find(|(n, _)| n == node) else {
            continue;
        };
        if matches!(slot.1, NodeState::Configured | NodeState::InUse) {
            let since = view
                .last_mirrored
                .map_or_else(|| "never".to_string(), |t| format!("last at {t}"));
            slot.1 = NodeState::Problems(vec![crate::crd::ProblemReport {
                code: "PullsBypassMirror".into(),
                message: format!(
                    "kubelet pulled {} at {} but containerd did not come through this node's mirror ({since}): \
                     check containerd's config_path and the hosts.toml files (dfdaemon containerd check)",
                    pull.image, pull.finished
                ),
            }]);
        }
    }
}

/// kubelet's `Pulled` events in the whole cluster, cached for a minute.
async fn recent_pulls(ctx: &Context) -> Option<Arc<Vec<crate::bypass::Pull>>> {
    const EVERY: Duration = Duration::from_secs(60);
    const MAX_EVENTS: u32 = 5000;
    if let Ok(cached) = ctx.pulls.lock() {
        if let Some((at, pulls)) = cached.as_ref() {
            if at.elapsed() < EVERY {
                return Some(pulls.clone());
            }
        }
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(ctx.client.clone());
    let lp = ListParams::default()
        .fields("reason=Pulled,involvedObject.kind=Pod")
        .limit(MAX_EVENTS);
    let pulls = match events.list(&lp).await {
        Ok(list) => Arc::new(
            list.items
                .iter()
                .filter_map(crate::bypass::parse)
                .collect::<Vec<_>>(),
        ),
        Err(e) => {
            warn!(%e, "cannot list kubelet's Pulled events; pulls that bypass the mirror are not detected");
            Arc::new(Vec::new())
        }
    };
    if let Ok(mut cached) = ctx.pulls.lock() {
        *cached = Some((std::time::Instant::now(), pulls.clone()));
    }
    Some(pulls)
}

/// Each node's containerRuntimeVersion, read only when some report has
/// problems that depend on it (most never do, and nodes can be many).
async fn node_runtimes(
    ctx: &Context,
    pods: &[Pod],
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let needed = pods.iter().any(|p| {
        p.annotations()
            .get(wire::node_report::ANNOTATION)
            .is_some_and(|raw| raw.contains("\"runtimes\""))
    });
    if !needed {
        return Ok(Default::default());
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    Ok(nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| {
            let runtime = n.status?.node_info?.container_runtime_version;
            Some((n.metadata.name?, runtime))
        })
        .collect())
}

/// Deletion: stop the dfdaemons and run the restore DaemonSet on every node;
/// release the finalizer once every node restored, or after the timeout.
async fn cleanup(
    dfc: &DragonflyCluster,
    ctx: &Context,
    ns: &str,
    api: &Api<DragonflyCluster>,
) -> Result<Action, Error> {
    let remaining: Vec<String> = dfc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    // A name no derived object can carry never produced any: nothing to
    // restore (names are immutable), and a cleanup DaemonSet under that
    // name would be refused forever.
    if let Some(problem) = validate_name(&dfc.name_any()) {
        return release(
            api,
            ctx,
            dfc,
            EventType::Normal,
            "CleanupSkipped",
            format!("{problem}; nothing was created, nothing to restore"),
        )
        .await;
    }
    if !dfc.spec.containerd.restore_on_delete {
        return release(
            api,
            ctx,
            dfc,
            EventType::Normal,
            "CleanupSkipped",
            "spec.containerd.restoreOnDelete is false; node mirror config left in place".into(),
        )
        .await;
    }

    // An invalid spec may name unsafe host paths; never mount them to restore.
    let problems = validate(&dfc.spec);
    if !problems.is_empty() {
        let note = format!(
            "spec is invalid ({}); node mirror config not restored",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        return release(api, ctx, dfc, EventType::Warning, "CleanupSkipped", note).await;
    }

    let bctx = build::Ctx::new(dfc, &ctx.images)?;
    let cleanup_ds = build::cleanup_daemonset(&bctx);
    let ds_name = bctx.object_name(Component::Cleanup);
    let uid = dfc.uid().unwrap_or_default();
    let mut existing = apply::observe(&ctx.client, ns, &bctx.name).await?;
    let now = (ctx.clock)();
    let waited = dfc
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| now.0.as_second() - t.0.as_second())
        .unwrap_or(0);
    let timeout = i64::from(dfc.spec.containerd.cleanup_timeout_seconds);

    // In a terminating namespace nothing new can be created: waiting for
    // the cleanup DaemonSet would hold the finalizer, and so the namespace, forever.
    if namespace_terminating(ctx, ns).await {
        let why = format!(
            "namespace {ns} is being deleted, so the {ds_name} DaemonSet cannot be created"
        );
        return restore_without_cleanup_pods(
            dfc, ctx, ns, api, &bctx, existing, &why, waited, timeout,
        )
        .await;
    }

    // The cleanup pods run under dfdaemon's ServiceAccount; everything else goes now.
    let desired = build::cleanup_objects(&bctx, &cleanup_ds)?;
    let plan = apply::plan(desired, &existing, &uid);
    let done = apply::execute(&ctx.client, ns, plan, &mut existing).await;
    if !done.failures.is_empty() {
        // Creating the cleanup objects refused for good (forbidden, invalid):
        // retrying cannot help, so fall back instead of holding the
        // finalizer. Anything else (a failed prune, a 5xx) is retried.
        if done
            .failures
            .iter()
            .any(|f| f.verb == "apply" && (f.is_refused() || f.is_namespace_terminating()))
        {
            let why = format!(
                "creating the cleanup objects was refused ({})",
                join_failures(&done.failures)
            );
            return restore_without_cleanup_pods(
                dfc, ctx, ns, api, &bctx, existing, &why, waited, timeout,
            )
            .await;
        }
        return Err(Error::Apply(done.failures));
    }
    if done
        .changes
        .iter()
        .any(|c| c.kind == "DaemonSet" && c.name == ds_name && c.verb == Verb::Created)
    {
        publish(
            ctx,
            dfc,
            EventType::Normal,
            "RestoringNodes",
            "Deleting",
            Some("restoring containerd mirror config on every node".into()),
        )
        .await;
    }

    let ds: Option<DaemonSet> = existing.typed("DaemonSet", &ds_name);
    let progress = ds.as_ref().and_then(|d| {
        let s = d.status.as_ref()?;
        let current = s.observed_generation >= d.metadata.generation;
        current.then_some((s.number_ready, s.desired_number_scheduled))
    });

    match progress {
        Some((ready, want)) if ready >= want => {
            info!(nodes = want, "every node restored its containerd config");
            publish(
                ctx,
                dfc,
                EventType::Normal,
                "NodesRestored",
                "Deleting",
                Some(format!(
                    "{want} node(s) restored their containerd mirror config"
                )),
            )
            .await;
        }
        _ if waited >= timeout => {
            let (ready, want) = progress.unwrap_or((0, 0));
            warn!(
                ready,
                want, "cleanup timed out; releasing the finalizer anyway"
            );
            publish(ctx, dfc, EventType::Warning, "CleanupTimedOut", "Deleting", Some(format!("only {ready}/{want} node(s) restored their containerd mirror config within {timeout}s"))).await;
        }
        _ => return Ok(Action::requeue(REQUEUE_CLEANUP)),
    }
    ctx.remove_node_agent(ns, &dfc.name_any()).await;
    set_finalizers(api, dfc, remaining).await?;
    Ok(Action::await_change())
}

/// The fallback when the cleanup DaemonSet cannot run (terminating
/// namespace, or its creation refused): delete everything the cluster owns,
/// so every dfdaemon gets SIGTERM and restores its own node's hosts.toml on
/// the way out (`containerd.restore_on_stop`, set by the builder); wait,
/// within the cleanup timeout, until those pods are gone; then release the
/// finalizer with a Warning saying which nodes may still need a manual restore.
#[allow(clippy::too_many_arguments)]
async fn restore_without_cleanup_pods(
    dfc: &DragonflyCluster,
    ctx: &Context,
    ns: &str,
    api: &Api<DragonflyCluster>,
    bctx: &build::Ctx<'_>,
    mut existing: Existing,
    why: &str,
    waited: i64,
    timeout: i64,
) -> Result<Action, Error> {
    let uid = dfc.uid().unwrap_or_default();
    let plan = apply::plan(Vec::new(), &existing, &uid);
    let done = apply::execute(&ctx.client, ns, plan, &mut existing).await;
    for f in &done.failures {
        // The namespace controller deletes them anyway; never block on it.
        warn!(error = %f, "could not delete an owned object during degraded cleanup");
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{LABEL_INSTANCE}={},{LABEL_COMPONENT}={}",
        bctx.name,
        Component::Dfdaemon.as_str()
    ));
    let stopping = match pods.list(&lp).await {
        Ok(l) => l.items.len(),
        Err(e) => {
            warn!(%e, "cannot list dfdaemon pods; not waiting for them");
            0
        }
    };
    if stopping > 0 && waited < timeout {
        info!(
            stopping,
            "{why}; waiting for dfdaemon pods to restore their nodes as they stop"
        );
        return Ok(Action::requeue(REQUEUE_CLEANUP));
    }
    let restore = format!(
        "`dfdaemon containerd restore --config-path {}`",
        dfc.spec.containerd.config_path
    );
    let note = if stopping == 0 {
        format!(
            "{why}; every dfdaemon stopped and restored its node's containerd mirror config on the way out; a node whose dfdaemon was not running or was killed keeps it: run {restore} there"
        )
    } else {
        format!(
            "{why}; {stopping} dfdaemon pod(s) still stopping after {timeout}s; their nodes may keep the containerd mirror config: run {restore} there"
        )
    };
    warn!(%note, "releasing the finalizer without the cleanup DaemonSet");
    // Best effort: a terminating namespace refuses new events too; the log line stays.
    release(api, ctx, dfc, EventType::Warning, "CleanupDegraded", note).await
}

/// Says why the cleanup ends here, then lets the object go.
async fn release(
    api: &Api<DragonflyCluster>,
    ctx: &Context,
    dfc: &DragonflyCluster,
    type_: EventType,
    reason: &str,
    note: String,
) -> Result<Action, Error> {
    publish(ctx, dfc, type_, reason, "Deleting", Some(note)).await;
    let remaining = dfc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if let Some(ns) = dfc.namespace() {
        ctx.remove_node_agent(&ns, &dfc.name_any()).await;
    }
    set_finalizers(api, dfc, remaining).await?;
    Ok(Action::await_change())
}

fn is_ready(s: Option<&DragonflyClusterStatus>) -> bool {
    status::condition(s, READY).is_some_and(|c| c.status == "True")
}

/// Merge patch guarded by resourceVersion, so a concurrent edit of the
/// finalizer list fails with 409 and is retried instead of being lost.
async fn set_finalizers(
    api: &Api<DragonflyCluster>,
    dfc: &DragonflyCluster,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": dfc.resource_version() }
    });
    api.patch(
        &dfc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Server-side apply of the whole status, only when it changed.
/// Writes a status that blocks the reconcile and, when it changed, says
/// why in a Warning event (the Ready condition's message).
async fn warn_on_new_status(
    ctx: &Context,
    api: &Api<DragonflyCluster>,
    dfc: &DragonflyCluster,
    new: &DragonflyClusterStatus,
    reason: &str,
) -> Result<(), Error> {
    if write_status(api, dfc, new).await? {
        let note = status::condition(Some(new), READY).map(|c| c.message.clone());
        publish(ctx, dfc, EventType::Warning, reason, "Validating", note).await;
    }
    Ok(())
}

async fn write_status(
    api: &Api<DragonflyCluster>,
    dfc: &DragonflyCluster,
    new: &DragonflyClusterStatus,
) -> Result<bool, Error> {
    if dfc.status.as_ref() == Some(new) {
        return Ok(false);
    }
    let body = json!({
        "apiVersion": DragonflyCluster::api_version(&()),
        "kind": DragonflyCluster::kind(&()),
        "status": new,
    });
    api.patch_status(
        &dfc.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(true)
}

async fn publish_changes(ctx: &Context, dfc: &DragonflyCluster, changes: &[Change]) {
    for c in changes {
        let reason = match c.verb {
            Verb::Created => "Created",
            Verb::Updated => "Updated",
            Verb::Reverted => "DriftReverted",
            Verb::Deleted => "Deleted",
        };
        let related = ObjectReference {
            api_version: Some(c.api_version.clone()),
            kind: Some(c.kind.clone()),
            name: Some(c.name.clone()),
            namespace: dfc.namespace(),
            ..ObjectReference::default()
        };
        let note = Some(format!("{} {}", c.kind, c.name));
        publish_about(
            ctx,
            dfc,
            EventType::Normal,
            reason,
            "Reconciling",
            note,
            Some(related),
        )
        .await;
    }
}

/// Events are best effort: failing to record one never fails a reconcile.
async fn publish(
    ctx: &Context,
    dfc: &DragonflyCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: Option<String>,
) {
    publish_about(ctx, dfc, type_, reason, action, note, None).await
}

/// `related` names the object an event is about, which also keeps events
/// about different objects from being folded into one series.
async fn publish_about(
    ctx: &Context,
    dfc: &DragonflyCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: Option<String>,
    related: Option<ObjectReference>,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: note.map(|n| n.chars().take(1000).collect()),
        action: action.into(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &dfc.object_ref(&())).await {
        warn!(%e, reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests;
