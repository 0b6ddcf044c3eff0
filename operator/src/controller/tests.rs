//! API-call-level tests: a reconcile against the in-memory API server, one
//! scenario per test, asserting the exact writes (method and path, in order)
//! and the bodies that matter.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use super::*;
use crate::build::tests::fixture;
use crate::fake_api::FakeApi;

const DFC_PATH: &str =
    "/apis/p2p.dragonfly.dev/v1alpha1/namespaces/dragonfly-system/dragonflyclusters/dragonfly";
const NS: &str = "dragonfly-system";
const NS_PATH: &str = "/api/v1/namespaces/dragonfly-system";

fn namespace(phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": NS, "uid": "ns-uid"},
           "status": {"phase": phase}})
}

fn context(client: kube::Client, now: i64) -> Arc<Context> {
    let mut registry = Registry::default();
    let mut ctx = Context::new(client, Metrics::new(&mut registry));
    // Independent of the environment the tests run in.
    ctx.images = DefaultImage::builtin();
    ctx.clock =
        Box::new(move || Time(Timestamp::from_second(now).unwrap_or(Timestamp::UNIX_EPOCH)));
    Arc::new(ctx)
}

/// Every reconcile in a test is bounded in time.
async fn run(dfc: &DragonflyCluster, ctx: &Arc<Context>) -> Result<Action, Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(dfc.clone()), ctx.clone()),
    )
    .await
    .expect("reconcile finished within 10s")
}

fn stored(fake: &FakeApi) -> DragonflyCluster {
    serde_json::from_value(fake.object(DFC_PATH).expect("cluster stored")).expect("cluster parses")
}

fn condition(dfc: &DragonflyCluster, t: &str) -> (String, String, String) {
    let c = status::condition(dfc.status.as_ref(), t).expect("condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn core(kind: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{kind}/{name}")
}

fn apps(kind: &str, name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/{kind}/{name}")
}

/// A fake cluster holding `dfc`, with a client and context on it; returns
/// the cluster as stored (with its resourceVersion), as a watch would deliver it.
fn setup(dfc: &DragonflyCluster, now: i64) -> (FakeApi, Arc<Context>, DragonflyCluster) {
    let (fake, ctx, dfc) = setup_without_storage(dfc, now);
    fake.insert(STANDARD_CLASS, default_storage_class());
    (fake, ctx, dfc)
}

const STANDARD_CLASS: &str = "/apis/storage.k8s.io/v1/storageclasses/standard";

/// The cluster's default StorageClass, as most clusters have one.
fn default_storage_class() -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
           "metadata": {"name": "standard",
                        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
           "provisioner": "rancher.io/local-path"})
}

/// Like `setup`, on a cluster with no StorageClass at all.
fn setup_without_storage(
    dfc: &DragonflyCluster,
    now: i64,
) -> (FakeApi, Arc<Context>, DragonflyCluster) {
    let (client, fake) = FakeApi::start();
    fake.insert(NS_PATH, namespace("Active"));
    fake.insert(DFC_PATH, serde_json::to_value(dfc).expect("json"));
    let dfc = stored(&fake);
    (fake, context(client, now), dfc)
}

/// Reconcile the default fixture once from scratch; returns the fake and the stored cluster.
async fn created() -> (FakeApi, Arc<Context>, DragonflyCluster) {
    let (fake, ctx, dfc) = setup(&fixture("default"), 1000);
    run(&dfc, &ctx).await.expect("reconcile");
    let dfc = stored(&fake);
    fake.clear_calls();
    (fake, ctx, dfc)
}

const ALL_CREATES: [&str; 19] = [
    "PATCH serviceaccounts/dragonfly-scheduler",
    "PATCH serviceaccounts/dragonfly-seed-peer",
    "PATCH serviceaccounts/dragonfly-dfdaemon",
    "PATCH roles/dragonfly-dfdaemon",
    "PATCH rolebindings/dragonfly-dfdaemon",
    "PATCH configmaps/dragonfly-scheduler",
    "PATCH configmaps/dragonfly-seed-peer",
    "PATCH configmaps/dragonfly-dfdaemon",
    "PATCH services/dragonfly-scheduler",
    "PATCH services/dragonfly-scheduler-headless",
    "PATCH services/dragonfly-seed-peer-headless",
    "PATCH networkpolicies/dragonfly-scheduler",
    "PATCH networkpolicies/dragonfly-seed-peer",
    "PATCH networkpolicies/dragonfly-dfdaemon",
    "PATCH poddisruptionbudgets/dragonfly-scheduler",
    "PATCH poddisruptionbudgets/dragonfly-seed-peer",
    "PATCH deployments/dragonfly-scheduler",
    "PATCH statefulsets/dragonfly-seed-peer",
    "PATCH daemonsets/dragonfly-dfdaemon",
];

#[tokio::test]
async fn create_adds_finalizer_applies_everything_and_writes_status() {
    let (fake, ctx, dfc) = setup(&fixture("default"), 1000);
    let action = run(&dfc, &ctx).await.expect("reconcile");
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(30)),
        "not ready yet: poll soon"
    );

    let mut expected = vec!["PATCH dragonflyclusters/dragonfly".to_string()];
    expected.extend(ALL_CREATES.iter().map(|s| s.to_string()));
    expected.push("PATCH dragonflyclusters/dragonfly/status".into());
    assert_eq!(fake.writes(), expected);

    let calls = fake.calls();
    // The finalizer patch is guarded by the resourceVersion it saw.
    let fin = calls
        .iter()
        .find(|c| c.method == "PATCH")
        .expect("finalizer patch");
    assert_eq!(
        fin.body
            .as_ref()
            .map(|b| b["metadata"]["finalizers"].clone()),
        Some(json!([FINALIZER]))
    );
    assert!(fin
        .body
        .as_ref()
        .is_some_and(|b| b["metadata"]["resourceVersion"].is_string()));
    // Every apply is server-side apply under one forced field manager.
    for c in calls
        .iter()
        .filter(|c| c.method == "PATCH" && !c.path.contains("dragonflyclusters"))
    {
        assert!(
            c.query.contains("fieldManager=dragonfly-operator"),
            "{}",
            c.query
        );
        assert!(c.query.contains("force=true"), "{}", c.query);
    }
    assert_eq!(
        fake.event_reasons()
            .iter()
            .filter(|r| *r == "Created")
            .count(),
        ALL_CREATES.len()
    );

    let dfc = stored(&fake);
    assert_eq!(dfc.finalizers(), [FINALIZER]);
    let st = dfc.status.as_ref().expect("status");
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(condition(&dfc, READY).1, "SchedulerReadyFalse");
    assert_eq!(
        st.scheduler.as_ref().map(|s| s.summary.as_str()),
        Some("0/3")
    );
    let ds = fake
        .object(&apps("daemonsets", "dragonfly-dfdaemon"))
        .expect("DaemonSet stored");
    assert_eq!(
        ds["metadata"]["ownerReferences"][0]["kind"],
        "DragonflyCluster"
    );
}

#[tokio::test]
async fn unchanged_cluster_changes_nothing() {
    let (fake, ctx, dfc) = created().await;
    run(&dfc, &ctx).await.expect("reconcile");
    // Every object is applied again (that is what reverts drift), but
    // server-side apply of the same object is a no-op: nothing changes,
    // no status write, no event.
    assert_eq!(fake.writes(), ALL_CREATES);
    assert_eq!(fake.mutations(), Vec::<String>::new());
    assert_eq!(fake.event_reasons(), Vec::<String>::new());
}

#[tokio::test]
async fn spec_change_updates_only_what_it_touches() {
    let (fake, ctx, mut dfc) = created().await;
    dfc.spec.dfdaemon.cache_size = "64GiB".into();
    dfc.metadata.generation = Some(2);
    run(&dfc, &ctx).await.expect("reconcile");
    assert_eq!(
        fake.mutations(),
        [
            "PATCH configmaps/dragonfly-dfdaemon",
            "PATCH daemonsets/dragonfly-dfdaemon",
            "PATCH dragonflyclusters/dragonfly/status",
        ]
    );
    assert_eq!(fake.event_reasons(), ["Updated", "Updated"]);
    let cm = fake
        .object(&core("configmaps", "dragonfly-dfdaemon"))
        .expect("cm");
    assert!(cm["data"]["dfdaemon.yaml"]
        .as_str()
        .is_some_and(|s| s.contains("cache_size: 64GiB")));
    assert_eq!(
        stored(&fake).status.and_then(|s| s.observed_generation),
        Some(2)
    );
}

/// `kubectl edit` of an owned object, spec unchanged: the next reconcile
/// (which the Owns watch triggers) puts it back.
#[tokio::test]
async fn edited_owned_object_is_reverted_without_a_spec_change() {
    let (fake, ctx, dfc) = created().await;
    let path = apps("daemonsets", "dragonfly-dfdaemon");
    let mut edited = fake.object(&path).expect("DaemonSet");
    let want = edited["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/dfdaemon:latest".into();
    edited["spec"]["template"]["spec"]["hostNetwork"] = true.into();
    fake.insert(&path, edited);
    let svc = core("configmaps", "dragonfly-scheduler");
    let mut cm = fake.object(&svc).expect("cm");
    cm["data"]["scheduler.yaml"] = "listen: 0.0.0.0:1\n".into();
    fake.insert(&svc, cm);

    run(&dfc, &ctx).await.expect("reconcile");
    let mut m = fake.mutations();
    m.sort();
    assert_eq!(
        m,
        [
            "PATCH configmaps/dragonfly-scheduler",
            "PATCH daemonsets/dragonfly-dfdaemon"
        ]
    );
    assert_eq!(fake.event_reasons(), ["DriftReverted", "DriftReverted"]);
    let ds = fake.object(&path).expect("DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        want
    );
    assert_eq!(ds["spec"]["template"]["spec"].get("hostNetwork"), None);
}

#[tokio::test]
async fn disabling_seed_peers_prunes_their_objects_only() {
    let (fake, ctx, mut dfc) = created().await;
    // A foreign object with our labels but no owner reference must survive.
    let mut foreign = fake
        .object(&core("services", "dragonfly-scheduler"))
        .expect("svc");
    foreign["metadata"]["name"] = "someone-elses".into();
    foreign["metadata"]["ownerReferences"] = json!([]);
    fake.insert(&core("services", "someone-elses"), foreign);

    dfc.spec.seed_peer.enabled = false;
    dfc.metadata.generation = Some(2);
    run(&dfc, &ctx).await.expect("reconcile");
    let mut writes = fake.mutations();
    let status = writes.pop();
    writes.sort();
    assert_eq!(
        writes,
        [
            "DELETE configmaps/dragonfly-seed-peer",
            "DELETE networkpolicies/dragonfly-seed-peer",
            "DELETE poddisruptionbudgets/dragonfly-seed-peer",
            "DELETE serviceaccounts/dragonfly-seed-peer",
            "DELETE services/dragonfly-seed-peer-headless",
            "DELETE statefulsets/dragonfly-seed-peer",
        ]
    );
    assert_eq!(
        status.as_deref(),
        Some("PATCH dragonflyclusters/dragonfly/status")
    );
    assert!(fake.object(&core("services", "someone-elses")).is_some());
    assert_eq!(
        condition(&stored(&fake), status::SEED_PEERS_READY).1,
        "Disabled"
    );
}

#[tokio::test]
async fn ready_workloads_and_node_reports_make_ready() {
    let (fake, ctx, dfc) = created().await;
    let ready = |replicas: i64| json!({"observedGeneration": 1, "readyReplicas": replicas, "updatedReplicas": replicas});
    fake.set_status(&apps("deployments", "dragonfly-scheduler"), ready(3));
    fake.set_status(&apps("statefulsets", "dragonfly-seed-peer"), ready(2));
    fake.set_status(
        &apps("daemonsets", "dragonfly-dfdaemon"),
        json!({"observedGeneration": 1, "desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2,
               "currentNumberScheduled": 2, "numberMisscheduled": 0}),
    );
    let pod = |name: &str, node: &str, report: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NS,
                            "labels": {"app.kubernetes.io/instance": "dragonfly", "app.kubernetes.io/component": "dfdaemon"},
                            "annotations": {wire::node_report::ANNOTATION: report}},
               "spec": {"nodeName": node, "containers": []}})
    };
    fake.insert(
        &core("pods", "d1"),
        pod("d1", "node-a", r#"{"configured":true}"#),
    );
    fake.insert(
        &core("pods", "d2"),
        pod("d2", "node-b", r#"{"configured":false,"problems":[{"code":"NoConfigPath","message":"containerd has no config_path"}]}"#),
    );

    let action = run(&dfc, &ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(
        fake.mutations(),
        ["PATCH dragonflyclusters/dragonfly/status"]
    );
    // A ready cluster is not explained: no claim, StorageClass or
    // namespaced event is read.
    let reads: Vec<String> = fake
        .calls()
        .iter()
        .filter(|c| c.method == "GET")
        .filter(|c| {
            c.path.contains("persistentvolume")
                || c.path.contains("storageclasses")
                || c.path.ends_with(&format!("/namespaces/{NS}/events"))
                || (c.path.ends_with(&format!("/namespaces/{NS}/pods"))
                    && !c.query.contains("dfdaemon"))
        })
        .map(|c| format!("{} {}", c.short(), c.query))
        .collect();
    assert_eq!(reads, Vec::<String>::new());
    assert_eq!(fake.event_reasons(), ["Ready"]);
    let dfc = stored(&fake);
    assert_eq!(condition(&dfc, READY).0, "True");
    let (st, reason, message) = condition(&dfc, status::NODES_CONFIGURED);
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", "ProblemsReported")
    );
    assert!(message.contains("node-b: NoConfigPath"), "{message}");
    let status = dfc.status.expect("status");
    assert_eq!(status.nodes_with_problems, 1);
    assert_eq!(status.dfdaemon.map(|d| d.summary), Some("2/2".into()));
}

#[tokio::test]
async fn invalid_spec_sets_condition_and_writes_nothing_else() {
    let mut dfc = fixture("default");
    dfc.spec.dfdaemon.cache_size = "lots".into();
    dfc.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let (fake, ctx, dfc) = setup(&dfc, 1000);
    let action = run(&dfc, &ctx)
        .await
        .expect("invalid spec is not a reconcile error");
    assert_eq!(action, Action::await_change());
    assert_eq!(fake.writes(), ["PATCH dragonflyclusters/dragonfly/status"]);
    assert_eq!(fake.event_reasons(), ["InvalidSpec"]);
    let (st, reason, message) = condition(&stored(&fake), READY);
    assert_eq!((st.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert_eq!(
        message,
        "spec.dfdaemon.cacheSize: \"lots\" is not a size such as 20GiB"
    );
    assert_eq!(ctx.metrics.failures_for("InvalidSpec"), 1);

    // The same invalid spec again: nothing new to say, nothing written.
    fake.clear_calls();
    run(&stored(&fake), &ctx).await.expect("reconcile");
    assert_eq!(fake.writes(), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_ca_bundle_blocks_the_rollout_until_it_exists() {
    let mut dfc = fixture("default");
    dfc.spec.registries = vec!["registry.internal:5443".into()];
    dfc.spec.registry_configs = vec![crate::crd::RegistryConfigSpec {
        host: "registry.internal:5443".into(),
        ca_bundle: Some(crate::crd::CaBundleSource {
            secret_ref: Some(crate::crd::KeyRef {
                name: "internal-ca".into(),
                key: "ca.crt".into(),
            }),
            config_map_ref: None,
        }),
        ..Default::default()
    }];
    dfc.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let (fake, ctx, dfc) = setup(&dfc, 1000);
    let action = run(&dfc, &ctx).await.expect("not a reconcile error");
    // Creating the Secret triggers nothing: look again soon.
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(fake.writes(), ["PATCH dragonflyclusters/dragonfly/status"]);
    assert_eq!(fake.event_reasons(), ["CABundleUnavailable"]);
    let (st, reason, message) = condition(&stored(&fake), READY);
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", "CABundleUnavailable")
    );
    assert_eq!(
        message,
        "spec.registryConfigs[0].caBundle.secretRef: Secret dragonfly-system/internal-ca does not exist"
    );

    // A Secret without a certificate under the key is no better.
    let secret_path = core("secrets", "internal-ca");
    let secret = |pem: &str| {
        use base64::Engine as _;
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "internal-ca", "namespace": NS},
               "data": {"ca.crt": base64::engine::general_purpose::STANDARD.encode(pem)}})
    };
    fake.insert(&secret_path, secret("hello"));
    fake.clear_calls();
    run(&stored(&fake), &ctx).await.expect("reconcile");
    let (_, _, message) = condition(&stored(&fake), READY);
    assert!(
        message.ends_with("holds no PEM certificate under that key"),
        "{message}"
    );

    // Once it holds one, everything is applied, the DaemonSet mounting it.
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    fake.insert(&secret_path, secret(pem));
    fake.clear_calls();
    run(&stored(&fake), &ctx).await.expect("reconcile");
    assert!(fake
        .writes()
        .contains(&"PATCH daemonsets/dragonfly-dfdaemon".to_string()));
    let ds = fake
        .object(&apps("daemonsets", "dragonfly-dfdaemon"))
        .expect("DaemonSet");
    let hash = ds["spec"]["template"]["metadata"]["annotations"][build::CONFIG_HASH].clone();
    assert!(
        ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "registry-ca"),
        "{ds}"
    );

    // New content under the same reference rolls the data plane.
    fake.insert(
        &secret_path,
        secret("-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"),
    );
    fake.clear_calls();
    run(&stored(&fake), &ctx).await.expect("reconcile");
    let ds = fake
        .object(&apps("daemonsets", "dragonfly-dfdaemon"))
        .expect("DaemonSet");
    assert_ne!(
        ds["spec"]["template"]["metadata"]["annotations"][build::CONFIG_HASH],
        hash
    );
    assert_eq!(
        fake.mutations(),
        [
            "PATCH statefulsets/dragonfly-seed-peer",
            "PATCH daemonsets/dragonfly-dfdaemon",
        ]
    );
}

fn deleting(mut dfc: DragonflyCluster, at: i64) -> DragonflyCluster {
    dfc.metadata.deletion_timestamp = Some(Time(
        Timestamp::from_second(at).unwrap_or(Timestamp::UNIX_EPOCH),
    ));
    dfc
}

#[tokio::test]
async fn deletion_restores_every_node_before_releasing_the_finalizer() {
    let (fake, ctx, dfc) = created().await;
    fake.insert(
        DFC_PATH,
        serde_json::to_value(deleting(dfc, 1000)).expect("json"),
    );
    let dfc = stored(&fake);

    // Pass 1: everything but dfdaemon's ServiceAccount goes; the restore DaemonSet starts.
    let action = run(&dfc, &ctx).await.expect("cleanup");
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let writes = fake.mutations();
    assert_eq!(
        writes.first().map(String::as_str),
        Some("PATCH daemonsets/dragonfly-cleanup")
    );
    assert_eq!(
        writes.iter().filter(|w| w.starts_with("DELETE")).count(),
        18
    );
    assert!(!writes
        .iter()
        .any(|w| w.contains("serviceaccounts/dragonfly-dfdaemon")));
    assert!(writes.contains(&"DELETE daemonsets/dragonfly-dfdaemon".to_string()));
    assert!(fake.event_reasons().contains(&"RestoringNodes".to_string()));
    let cleanup = fake
        .object(&apps("daemonsets", "dragonfly-cleanup"))
        .expect("cleanup DaemonSet");
    let init = &cleanup["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(
        (&init["args"][0], &init["args"][1]),
        (&json!("containerd"), &json!("restore"))
    );
    assert_eq!(stored(&fake).finalizers(), [FINALIZER]);

    // Pass 2: restore still running on one node: wait, write nothing.
    fake.clear_calls();
    fake.set_status(
        &apps("daemonsets", "dragonfly-cleanup"),
        json!({"observedGeneration": 1, "desiredNumberScheduled": 2, "numberReady": 1, "currentNumberScheduled": 2, "numberMisscheduled": 0}),
    );
    let dfc = stored(&fake);
    assert_eq!(
        run(&dfc, &ctx).await.expect("cleanup"),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(fake.mutations(), Vec::<String>::new());

    // Pass 3: every node restored: the finalizer goes.
    fake.clear_calls();
    fake.set_status(
        &apps("daemonsets", "dragonfly-cleanup"),
        json!({"observedGeneration": 1, "desiredNumberScheduled": 2, "numberReady": 2, "currentNumberScheduled": 2, "numberMisscheduled": 0}),
    );
    run(&stored(&fake), &ctx).await.expect("cleanup");
    assert_eq!(fake.mutations(), ["PATCH dragonflyclusters/dragonfly"]);
    assert_eq!(fake.event_reasons(), ["NodesRestored"]);
    assert_eq!(stored(&fake).finalizers(), Vec::<String>::new());
}

#[tokio::test]
async fn deletion_gives_up_after_the_timeout() {
    let (fake, ctx, dfc) = created().await;
    // Deleted 301 s before the context's clock; the default timeout is 300 s.
    fake.insert(
        DFC_PATH,
        serde_json::to_value(deleting(dfc, 1000 - 301)).expect("json"),
    );
    run(&stored(&fake), &ctx).await.expect("cleanup");
    assert_eq!(
        fake.mutations().last().map(String::as_str),
        Some("PATCH dragonflyclusters/dragonfly")
    );
    assert!(fake
        .event_reasons()
        .contains(&"CleanupTimedOut".to_string()));
    assert_eq!(stored(&fake).finalizers(), Vec::<String>::new());
}

#[tokio::test]
async fn api_errors_back_off_and_count_by_reason() {
    let (fake, ctx, dfc) = created().await;
    fake.fail_next("GET", "/deployments", 500);
    let dfc = Arc::new(dfc);
    let err = tokio::time::timeout(Duration::from_secs(10), reconcile(dfc.clone(), ctx.clone()))
        .await
        .expect("bounded")
        .expect_err("list failure surfaces");
    assert_eq!(err.reason(), "ApiServerError");
    assert_eq!(
        error_policy(dfc.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(dfc.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(ctx.metrics.failures_for("ApiServerError"), 2);
    assert_eq!(fake.writes(), Vec::<String>::new());
    // Success resets the backoff.
    run(&dfc, &ctx).await.expect("reconcile");
    assert_eq!(
        error_policy(dfc, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn finalizer_conflict_is_an_error_not_a_lost_update() {
    let (fake, ctx, dfc) = setup(&fixture("default"), 1000);
    // Someone else updated the object after we read it.
    let mut newer: Value = fake.object(DFC_PATH).expect("stored");
    newer["metadata"]["labels"] = json!({"touched": "yes"});
    fake.insert(DFC_PATH, newer);
    let mut stale = dfc.clone();
    stale.metadata.resource_version = Some("0".into());
    let err = run(&stale, &ctx).await.expect_err("conflict");
    assert_eq!(err.reason(), "ApiConflict");
}

#[tokio::test]
async fn deleting_an_invalid_cluster_never_mounts_its_paths() {
    let mut dfc = fixture("default");
    dfc.spec.containerd.config_path = "/".into();
    dfc.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let (fake, ctx, _) = setup(&deleting(dfc, 1000), 1000);
    run(&stored(&fake), &ctx).await.expect("cleanup");
    assert_eq!(fake.writes(), ["PATCH dragonflyclusters/dragonfly"]);
    assert_eq!(fake.event_reasons(), ["CleanupSkipped"]);
    assert_eq!(stored(&fake).finalizers(), Vec::<String>::new());
}

/// A dfdaemon pod of the default fixture's cluster, as the DaemonSet makes it.
fn dfdaemon_pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS,
                        "labels": {"app.kubernetes.io/instance": "dragonfly", "app.kubernetes.io/component": "dfdaemon"}},
           "spec": {"nodeName": "node-a", "containers": []}})
}

/// The namespace is being deleted: the cleanup DaemonSet can never be
/// created, so the finalizer must not wait for it. Everything owned goes
/// (each dfdaemon restores its node on SIGTERM); once those pods are gone
/// the finalizer is released with a Warning.
#[tokio::test]
async fn terminating_namespace_releases_the_finalizer_once_dfdaemons_stopped() {
    let (fake, ctx, dfc) = created().await;
    fake.insert(&core("pods", "d1"), dfdaemon_pod("d1"));
    fake.insert(NS_PATH, namespace("Terminating"));
    fake.insert(
        DFC_PATH,
        serde_json::to_value(deleting(dfc, 1000)).expect("json"),
    );

    // Pass 1: no create attempted; every owned object deleted; a dfdaemon is still stopping.
    let action = run(&stored(&fake), &ctx).await.expect("cleanup");
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let writes = fake.writes();
    assert!(writes.iter().all(|w| w.starts_with("DELETE")), "{writes:?}");
    assert_eq!(writes.len(), 19, "{writes:?}");
    assert!(fake
        .object(&apps("daemonsets", "dragonfly-cleanup"))
        .is_none());
    assert_eq!(stored(&fake).finalizers(), [FINALIZER]);

    // Pass 2: the dfdaemon pod is gone (it restored its node on the way out).
    fake.clear_calls();
    assert!(fake.object(&core("pods", "d1")).is_some());
    let _ = fake.remove(&core("pods", "d1"));
    run(&stored(&fake), &ctx).await.expect("cleanup");
    assert_eq!(fake.mutations(), ["PATCH dragonflyclusters/dragonfly"]);
    assert_eq!(fake.event_reasons(), ["CleanupDegraded"]);
    let note = fake.event_notes().join(" ");
    assert!(
        note.contains("namespace dragonfly-system is being deleted"),
        "{note}"
    );
    assert!(
        note.contains("dfdaemon containerd restore --config-path /etc/containerd/certs.d"),
        "{note}"
    );
    assert_eq!(stored(&fake).finalizers(), Vec::<String>::new());
}

/// The namespace looked fine, but creating the cleanup DaemonSet is refused
/// (403 "being terminated", a race with namespace deletion): no retry loop.
#[tokio::test]
async fn refused_cleanup_daemonset_falls_back_instead_of_hanging() {
    let (fake, ctx, dfc) = created().await;
    fake.insert(
        DFC_PATH,
        serde_json::to_value(deleting(dfc, 1000)).expect("json"),
    );
    fake.fail_next_with(
        "PATCH",
        "/daemonsets/dragonfly-cleanup",
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
               "message": "daemonsets.apps \"dragonfly-cleanup\" is forbidden: unable to create new content in namespace dragonfly-system because it is being terminated",
               "details": {"name": "dragonfly-cleanup", "group": "apps", "kind": "daemonsets",
                           "causes": [{"reason": "NamespaceTerminating", "message": "namespace dragonfly-system is being terminated", "field": "metadata.namespace"}]}}),
    );
    let action = run(&stored(&fake), &ctx).await.expect("no error loop");
    assert_eq!(action, Action::await_change());
    assert_eq!(stored(&fake).finalizers(), Vec::<String>::new());
    assert_eq!(fake.event_reasons(), ["CleanupDegraded"]);
    let note = fake.event_notes().join(" ");
    assert!(note.contains("because it is being terminated"), "{note}");
    // Nothing of ours is left, dfdaemon's ServiceAccount included.
    assert!(fake
        .object(&core("serviceaccounts", "dragonfly-dfdaemon"))
        .is_none());
    assert!(fake
        .object(&apps("daemonsets", "dragonfly-dfdaemon"))
        .is_none());
}

/// A write the API server refuses (here 422 for an invalid DaemonSet) lands
/// in `Ready` and a Warning event naming the object, and is retried with
/// backoff; the other objects are still applied.
#[tokio::test]
async fn apply_refusal_reaches_status_and_events_and_backs_off() {
    let (fake, ctx, dfc) = setup(&fixture("default"), 1000);
    let invalid = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422, "reason": "Invalid",
        "message": "DaemonSet.apps \"dragonfly-dfdaemon\" is invalid: spec.template.spec.containers[0].volumeMounts[3].name: Not found: \"config\""});
    fake.fail_next_with("PATCH", "/daemonsets/dragonfly-dfdaemon", invalid.clone());
    let dfc = Arc::new(dfc);
    let err = tokio::time::timeout(Duration::from_secs(10), reconcile(dfc.clone(), ctx.clone()))
        .await
        .expect("bounded")
        .expect_err("the refusal is an error, for backoff");
    assert_eq!(err.reason(), "ApiInvalid");
    assert!(
        fake.object(&apps("deployments", "dragonfly-scheduler"))
            .is_some(),
        "others applied"
    );
    let (st, reason, message) = condition(&stored(&fake), READY);
    assert_eq!((st.as_str(), reason.as_str()), ("False", "ApplyFailed"));
    assert!(
        message.starts_with("apply DaemonSet dragonfly-dfdaemon: DaemonSet.apps \"dragonfly-dfdaemon\" is invalid: spec.template.spec.containers[0].volumeMounts[3].name: Not found"),
        "{message}"
    );
    let warnings: Vec<String> = fake
        .event_reasons()
        .into_iter()
        .filter(|r| r == "ApplyFailed")
        .collect();
    assert_eq!(warnings, ["ApplyFailed"]);
    assert!(fake
        .event_notes()
        .iter()
        .any(|n| n.contains("volumeMounts[3].name")));
    assert_eq!(
        error_policy(dfc.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );

    // Same refusal again: same status, so no status write and no new event; longer backoff.
    fake.clear_calls();
    fake.fail_next_with("PATCH", "/daemonsets/dragonfly-dfdaemon", invalid);
    let err = run(&stored(&fake), &ctx).await.expect_err("still refused");
    assert!(
        !fake.mutations().iter().any(|w| w.contains("/status")),
        "{:?}",
        fake.mutations()
    );
    assert_eq!(fake.event_reasons(), Vec::<String>::new());
    assert_eq!(
        error_policy(dfc.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );

    // Fixed: Ready leaves ApplyFailed.
    fake.clear_calls();
    run(&stored(&fake), &ctx).await.expect("reconcile");
    assert_ne!(condition(&stored(&fake), READY).1, "ApplyFailed");
}

/// A name too long for the objects derived from it: the list calls by
/// label and the applies would be refused forever. It is reported as an
/// invalid spec, and deleting it releases the finalizer at once (nothing
/// was ever created under that name).
#[tokio::test]
async fn a_cluster_name_too_long_for_its_objects_is_reported_and_deletable() {
    let long = "a".repeat(crate::validate::MAX_CLUSTER_NAME + 1);
    let path = format!("/apis/p2p.dragonfly.dev/v1alpha1/namespaces/{NS}/dragonflyclusters/{long}");
    let mut dfc = fixture("default");
    dfc.metadata.name = Some(long.clone());
    dfc.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let (client, fake) = FakeApi::start();
    fake.insert(NS_PATH, namespace("Active"));
    fake.insert(&path, serde_json::to_value(&dfc).expect("json"));
    let ctx = context(client, 1000);
    let load = |fake: &FakeApi| -> DragonflyCluster {
        serde_json::from_value(fake.object(&path).expect("stored")).expect("parses")
    };
    run(&load(&fake), &ctx)
        .await
        .expect("invalid spec is not an error");
    assert_eq!(fake.event_reasons(), ["InvalidSpec"]);
    let (st, reason, message) = condition(&load(&fake), READY);
    assert_eq!((st.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.starts_with("metadata.name:"), "{message}");

    fake.clear_calls();
    fake.insert(
        &path,
        serde_json::to_value(deleting(load(&fake), 1000)).expect("json"),
    );
    run(&load(&fake), &ctx).await.expect("cleanup");
    assert_eq!(fake.event_reasons(), ["CleanupSkipped"]);
    assert_eq!(load(&fake).finalizers(), Vec::<String>::new());
}

/// The admission policy's parameter: the cluster's dfdaemon account is
/// listed before its DaemonSet exists, and unlisted once the finalizer goes.
#[tokio::test]
async fn the_node_agent_policy_lists_the_cluster_while_it_exists() {
    let (client, fake) = FakeApi::start();
    fake.insert(NS_PATH, namespace("Active"));
    fake.insert(
        DFC_PATH,
        serde_json::to_value(fixture("default")).expect("json"),
    );
    let ctx = Arc::try_unwrap(context(client, 1000))
        .ok()
        .expect("sole owner")
        .with_node_agents("ops".into());
    let ctx = Arc::new(ctx);
    run(&stored(&fake), &ctx).await.expect("reconcile");
    let cm_path = "/api/v1/namespaces/ops/configmaps/dragonfly-node-agents";
    let cm = fake.object(cm_path).expect("ConfigMap created");
    assert_eq!(
        cm["data"]["dragonfly-system.dragonfly"],
        "system:serviceaccount:dragonfly-system:dragonfly-dfdaemon"
    );
    let writes = fake.mutations();
    let listed = writes.iter().position(|w| w.contains("configmaps"));
    let daemonset = writes
        .iter()
        .position(|w| w == "PATCH daemonsets/dragonfly-dfdaemon");
    assert!(listed.is_some() && listed < daemonset, "{writes:?}");

    // Deleted past the cleanup timeout: the finalizer goes, and the entry.
    fake.insert(
        DFC_PATH,
        serde_json::to_value(deleting(stored(&fake), 1000 - 301)).expect("json"),
    );
    run(&stored(&fake), &ctx).await.expect("cleanup");
    assert_eq!(stored(&fake).finalizers(), Vec::<String>::new());
    let cm = fake.object(cm_path).expect("ConfigMap stays");
    assert!(
        cm["data"].get("dragonfly-system.dragonfly").is_none(),
        "{cm}"
    );
}

/// A dfdaemon pod kubelet cannot start: its image tag does not exist.
fn pulling_dfdaemon_pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS,
                        "labels": {"app.kubernetes.io/instance": "dragonfly", "app.kubernetes.io/component": "dfdaemon"}},
           "spec": {"nodeName": node, "containers": [{"name": "dfdaemon", "image": "dragonfly-p2p/dragonfly:nope",
                    "env": [{"name": "SECRET", "value": "do-not-copy-me"}]}]},
           "status": {"phase": "Pending",
                      "conditions": [{"type": "Ready", "status": "False"}],
                      "containerStatuses": [{"name": "dfdaemon", "image": "dragonfly-p2p/dragonfly:nope", "imageID": "",
                          "ready": false, "restartCount": 0,
                          "state": {"waiting": {"reason": "ErrImagePull",
                              "message": "failed to pull and unpack image \"docker.io/dragonfly-p2p/dragonfly:nope\": not found"}}}]}})
}

#[tokio::test]
async fn an_image_pull_failure_is_the_reason_kubectl_get_shows() {
    let (fake, ctx, dfc) = created().await;
    fake.set_status(
        &apps("daemonsets", "dragonfly-dfdaemon"),
        json!({"observedGeneration": 1, "desiredNumberScheduled": 2, "numberReady": 0, "updatedNumberScheduled": 2,
               "currentNumberScheduled": 2, "numberMisscheduled": 0}),
    );
    fake.insert(
        &core("pods", "dragonfly-dfdaemon-a"),
        pulling_dfdaemon_pod("dragonfly-dfdaemon-a", "node-a"),
    );
    fake.insert(
        &core("pods", "dragonfly-dfdaemon-b"),
        pulling_dfdaemon_pod("dragonfly-dfdaemon-b", "node-b"),
    );
    run(&dfc, &ctx).await.expect("reconcile");
    let dfc = stored(&fake);
    let (st, reason, message) = condition(&dfc, status::DAEMONS_READY);
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", "ImagePullBackOff")
    );
    assert!(
        message.starts_with(
            "0/2 dfdaemons ready: pod dragonfly-dfdaemon-a on node node-a and 1 more: cannot pull image \"dragonfly-p2p/dragonfly:nope\""
        ),
        "{message}"
    );
    // The REASON column (Ready's reason) names it too, though the
    // scheduler, first in line, has nothing to say yet.
    assert_eq!(condition(&dfc, READY).1, "ImagePullBackOff");
    let whole = serde_json::to_string(&dfc.status).expect("json");
    assert!(!whole.contains("do-not-copy-me"));
    // The DaemonSet's FailedCreate events were asked for by field selector.
    assert!(fake
        .calls()
        .iter()
        .any(|c| c.path.ends_with(&format!("/namespaces/{NS}/events"))
            && c.query.contains("FailedCreate")));
}

#[tokio::test]
async fn a_pod_security_rejection_names_the_daemonset() {
    let (fake, ctx, dfc) = created().await;
    fake.set_status(
        &apps("daemonsets", "dragonfly-dfdaemon"),
        json!({"observedGeneration": 1, "desiredNumberScheduled": 3, "numberReady": 0, "updatedNumberScheduled": 0,
               "currentNumberScheduled": 0, "numberMisscheduled": 0}),
    );
    fake.insert(
        &format!("/api/v1/namespaces/{NS}/events/dragonfly-dfdaemon.1"),
        json!({"apiVersion": "v1", "kind": "Event",
               "metadata": {"name": "dragonfly-dfdaemon.1", "namespace": NS},
               "involvedObject": {"kind": "DaemonSet", "name": "dragonfly-dfdaemon", "namespace": NS},
               "reason": "FailedCreate", "type": "Warning",
               "message": "Error creating: pods \"dragonfly-dfdaemon-x\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"}),
    );
    run(&dfc, &ctx).await.expect("reconcile");
    let (_, reason, message) = condition(&stored(&fake), status::DAEMONS_READY);
    assert_eq!(reason, "FailedCreate");
    assert!(
        message.contains("DaemonSet dragonfly-dfdaemon cannot create pods: pods \"dragonfly-dfdaemon-x\" is forbidden: violates PodSecurity"),
        "{message}"
    );
}

fn statefulset_of(fake: &FakeApi) -> Value {
    fake.object(&apps("statefulsets", "dragonfly-seed-peer"))
        .expect("StatefulSet stored")
}

#[tokio::test]
async fn without_storage_seed_peers_cache_in_an_emptydir_and_say_so() {
    let (fake, ctx, dfc) = setup_without_storage(&fixture("default"), 1000);
    run(&dfc, &ctx).await.expect("reconcile");
    let sts = statefulset_of(&fake);
    assert_eq!(sts["spec"].get("volumeClaimTemplates"), None);
    let data = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "data").cloned())
        .expect("a data volume");
    assert_eq!(data["emptyDir"]["sizeLimit"], "50Gi");
    assert!(fake
        .event_reasons()
        .contains(&"EphemeralSeedCache".to_string()));
    let (_, _, message) = condition(&stored(&fake), status::SEED_PEERS_READY);
    assert!(
        message.contains("no default StorageClass") && message.contains(seed_storage::FIELD),
        "{message}"
    );

    // A default StorageClass appears: the set is recreated with claims.
    let dfc = stored(&fake);
    fake.insert(STANDARD_CLASS, default_storage_class());
    fake.clear_calls();
    run(&dfc, &ctx).await.expect("reconcile");
    let writes = fake.writes();
    let deleted = writes
        .iter()
        .position(|w| w == "DELETE statefulsets/dragonfly-seed-peer");
    let applied = writes
        .iter()
        .position(|w| w == "PATCH statefulsets/dragonfly-seed-peer");
    assert!(deleted.is_some() && deleted < applied, "{writes:?}");
    assert!(statefulset_of(&fake)["spec"]["volumeClaimTemplates"].is_array());
    assert!(fake
        .event_reasons()
        .contains(&"SeedStorageChanged".to_string()));
    let (_, _, message) = condition(&stored(&fake), status::SEED_PEERS_READY);
    assert!(!message.contains("emptyDir"), "{message}");
}

#[tokio::test]
async fn pending_claims_with_no_storage_are_replaced_by_an_emptydir() {
    let (fake, ctx, dfc) = created().await;
    assert!(statefulset_of(&fake)["spec"]["volumeClaimTemplates"].is_array());
    // The default class goes away before the claims were bound.
    fake.remove(STANDARD_CLASS);
    for i in 0..2 {
        let name = format!("data-dragonfly-seed-peer-{i}");
        fake.insert(
            &core("persistentvolumeclaims", &name),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name, "namespace": NS,
                                "labels": {"app.kubernetes.io/name": "dragonfly", "app.kubernetes.io/instance": "dragonfly",
                                           "app.kubernetes.io/component": "seed-peer"}},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}},
                   "status": {"phase": "Pending"}}),
        );
    }
    run(&dfc, &ctx).await.expect("reconcile");
    let writes = fake.writes();
    assert!(
        writes.contains(&"DELETE statefulsets/dragonfly-seed-peer".to_string()),
        "{writes:?}"
    );
    assert_eq!(
        statefulset_of(&fake)["spec"].get("volumeClaimTemplates"),
        None
    );
    let reasons = fake.event_reasons();
    assert!(
        reasons.contains(&"EphemeralSeedCache".to_string()),
        "{reasons:?}"
    );

    // On an emptyDir the check runs at each reconcile; once storage
    // exists the set goes back to claims, ready or not.
    let dfc = stored(&fake);
    fake.set_status(
        &apps("statefulsets", "dragonfly-seed-peer"),
        json!({"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2}),
    );
    fake.insert(STANDARD_CLASS, default_storage_class());
    fake.clear_calls();
    run(&dfc, &ctx).await.expect("reconcile");
    assert!(fake
        .writes()
        .contains(&"DELETE statefulsets/dragonfly-seed-peer".to_string()));
}
