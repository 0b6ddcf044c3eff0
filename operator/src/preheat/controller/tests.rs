//! Preheat reconciles against the in-memory API server, a fake registry and
//! a fake dfdaemon: one scenario per test, asserting the writes, the status
//! and the events.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use super::*;
use crate::fake_api::FakeApi;
use crate::preheat::crd::ItemState;
use crate::preheat::fakes::{FakeDaemon, FakeRegistry};
use crate::preheat::resolve::OCI_INDEX;

const NS: &str = "team";
const NOW: i64 = 100_000;

fn ph_path(name: &str) -> String {
    format!("/apis/p2p.dragonfly.dev/v1alpha1/namespaces/{NS}/preheats/{name}")
}

fn d(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

struct World {
    fake: FakeApi,
    ctx: Arc<Context>,
    registry: FakeRegistry,
    daemon: FakeDaemon,
}

fn seed_pod(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {
            "app.kubernetes.io/instance": "dragonfly",
            "app.kubernetes.io/component": "seed-peer"}},
        "spec": {"nodeName": "node-a", "containers": []},
        "status": {"phase": "Running", "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

async fn world() -> World {
    let registry = FakeRegistry::start().await;
    let daemon = FakeDaemon::start().await;
    let (client, fake) = FakeApi::start();
    let port = daemon.addr.port();
    // The fake dfdaemon serves both the task API and the mirror on one port.
    fake.insert(
        &format!("/apis/p2p.dragonfly.dev/v1alpha1/namespaces/{NS}/dragonflyclusters/dragonfly"),
        json!({
            "apiVersion": "p2p.dragonfly.dev/v1alpha1", "kind": "DragonflyCluster",
            "metadata": {"name": "dragonfly", "namespace": NS, "uid": "dfc-uid", "generation": 1},
            "spec": {"dfdaemon": {"peerPort": port, "proxyPort": port}}
        }),
    );
    fake.insert(
        &format!("/api/v1/namespaces/{NS}/pods/dragonfly-seed-peer-0"),
        seed_pod("dragonfly-seed-peer-0", true),
    );
    let mut r = Registry::default();
    let mut ctx = Context::new(client, Metrics::new(&mut r));
    ctx.clock = Box::new(|| Time(Timestamp::from_second(NOW).unwrap_or(Timestamp::UNIX_EPOCH)));
    ctx.pace.poll = Duration::ZERO;
    World {
        fake,
        ctx: Arc::new(ctx),
        registry,
        daemon,
    }
}

impl World {
    fn image(&self, rest: &str) -> String {
        format!("{}/{rest}", self.registry.host())
    }

    fn create(&self, name: &str, generation: i64, spec: Value) {
        self.fake.insert(
            &ph_path(name),
            json!({
                "apiVersion": "p2p.dragonfly.dev/v1alpha1", "kind": "Preheat",
                "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": generation},
                "spec": spec,
            }),
        );
    }

    fn stored(&self, name: &str) -> Preheat {
        serde_json::from_value(self.fake.object(&ph_path(name)).expect("stored")).expect("parses")
    }

    fn status(&self, name: &str) -> PreheatStatus {
        self.stored(name).status.expect("status")
    }

    /// Time passes: every kept run's next step is due.
    fn elapse(&self) {
        let mut jobs = self.ctx.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.values_mut().for_each(Job::skip_wait);
    }

    /// A wake-up before the next step is due (a status write, say): it only
    /// requeues for the rest of the wait, at most `wait`.
    async fn woken_early(&self, name: &str, wait: Duration) {
        let before = self.status(name);
        self.fake.clear_calls();
        let (registry, posts) = (
            self.registry.requests().len(),
            self.daemon.lock().posts.len(),
        );
        let action = self.reconcile(name).await;
        let left = requeue_after(&action);
        assert!(
            !left.is_zero() && left <= wait,
            "{name}: {action:?} is not a wait of at most {wait:?}"
        );
        assert_eq!(self.status(name), before, "{name}: nothing counted");
        assert!(self.fake.writes().is_empty(), "{:?}", self.fake.writes());
        assert!(self.fake.event_reasons().is_empty());
        assert_eq!(
            self.registry.requests().len(),
            registry,
            "{name}: registry left alone"
        );
        assert_eq!(
            self.daemon.lock().posts.len(),
            posts,
            "{name}: peers left alone"
        );
    }

    async fn reconcile(&self, name: &str) -> Action {
        let ph = Arc::new(self.stored(name));
        tokio::time::timeout(Duration::from_secs(20), reconcile(ph, self.ctx.clone()))
            .await
            .expect("reconcile finished within 20s")
            .expect("reconcile")
    }

    /// Reconciles, each time once the wait passed, until the Preheat
    /// finished (bounded).
    async fn until_finished(&self, name: &str) -> PreheatStatus {
        for _ in 0..10 {
            self.elapse();
            self.reconcile(name).await;
            let st = self.status(name);
            if st.phase.is_finished() {
                return st;
            }
        }
        panic!("not finished after 10 reconciles: {:?}", self.status(name));
    }
}

#[tokio::test]
async fn preheats_an_image_and_never_redoes_it() {
    let w = world().await;
    let blobs = [(d('c'), 10), (d('1'), 200), (d('2'), 300)];
    let digest = w.registry.put_image("library/app", Some("v1"), &blobs);
    w.daemon.lock().polls_before_done = 1;
    w.create(
        "app",
        1,
        json!({"cluster": "dragonfly", "images": [w.image("library/app:v1")], "platforms": ["linux/amd64"]}),
    );

    let action = w.reconcile("app").await;
    assert_eq!(
        action,
        Action::requeue(Duration::ZERO),
        "running: poll again"
    );
    let st = w.status("app");
    assert_eq!(st.phase, Phase::Running);
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.start_time.as_ref().map(|t| t.0.as_second()), Some(NOW));
    assert_eq!(st.images[0].digest.as_deref(), Some(digest.as_str()));
    assert_eq!(st.images[0].manifests[0].blob_count, 3);
    assert_eq!(st.images[0].manifests[0].bytes, 510);
    assert_eq!(st.blobs.len(), 3, "few blobs: all listed");
    assert_eq!(st.blobs_omitted, 0);
    assert_eq!((st.progress.blobs_done, st.progress.blobs_total), (0, 3));
    assert_eq!(st.progress.bytes_total, 510);
    assert_eq!(st.targets, ["dragonfly-seed-peer-0"]);
    assert_eq!(w.fake.writes(), ["PATCH preheats/app/status"]);
    assert_eq!(w.fake.event_reasons(), ["Started"]);

    let st = w.until_finished("app").await;
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    assert_eq!(st.progress.bytes_done, st.progress.bytes_total);
    assert_eq!(st.progress.blobs, "3/3");
    assert_eq!(st.images[0].state, ItemState::Succeeded);
    assert_eq!(
        st.completion_time.as_ref().map(|t| t.0.as_second()),
        Some(NOW)
    );
    assert_eq!(
        status::condition(&st, status::COMPLETE).map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(w.fake.event_reasons(), ["Started", "Succeeded"]);

    // Each blob was asked for once, by digest, at the registry's own URL.
    let posts = w.daemon.lock().posts.clone();
    let mut asked: Vec<(String, String)> = posts
        .iter()
        .map(|p| {
            (
                p["digest"].as_str().unwrap_or("").to_string(),
                p["url"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    asked.sort();
    let mut want: Vec<(String, String)> = blobs
        .iter()
        .map(|(b, _)| {
            (
                b.clone(),
                format!("http://{}/v2/library/app/blobs/{b}", w.registry.host()),
            )
        })
        .collect();
    want.sort();
    assert_eq!(asked, want);
    // The tag and the manifest went through the peer's mirror, naming the registry.
    let mirror = w.daemon.lock().mirror.clone();
    let paths: Vec<&str> = mirror.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v2/library/app/manifests/v1".to_string(),
            format!("/v2/library/app/manifests/{digest}")
        ]
    );
    assert!(mirror
        .iter()
        .all(|(_, r, _)| *r == format!("http://{}", w.registry.host())));

    // Finished: reconciles only read, whatever wakes them.
    w.fake.clear_calls();
    let registry_calls = w.registry.requests().len();
    assert_eq!(w.reconcile("app").await, Action::await_change());
    assert!(w.fake.writes().is_empty(), "{:?}", w.fake.writes());
    assert!(w.fake.event_reasons().is_empty());
    assert_eq!(w.registry.requests().len(), registry_calls);

    // A spec change is a new run.
    let mut obj = w.fake.object(&ph_path("app")).expect("stored");
    obj["metadata"]["generation"] = 2.into();
    obj["spec"]["platforms"] = json!(["linux/arm64"]);
    w.fake.insert(&ph_path("app"), obj);
    w.reconcile("app").await;
    let st = w.status("app");
    assert_eq!(st.observed_generation, Some(2));
    assert!(!st.phase.is_finished() || st.phase == Phase::Succeeded);
    assert!(
        w.registry.requests().len() > registry_calls,
        "resolved again"
    );
}

async fn fails_with(
    w: &World,
    name: &str,
    spec: Value,
    reason: &str,
    message: &str,
) -> PreheatStatus {
    w.create(name, 1, spec);
    let action = w.reconcile(name).await;
    let st = w.status(name);
    assert_eq!(st.phase, Phase::Failed, "{name}: {}", st.message);
    assert!(
        st.message.contains(message),
        "{name}: {:?} lacks {message:?}",
        st.message
    );
    let c = status::condition(&st, status::FAILED).expect("Failed condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reason),
        "{name}"
    );
    assert_eq!(action, Action::await_change(), "{name}: no retry");
    // Never again until the spec changes.
    w.fake.clear_calls();
    assert_eq!(w.reconcile(name).await, Action::await_change());
    assert!(w.fake.writes().is_empty(), "{name}: {:?}", w.fake.writes());
    st
}

#[tokio::test]
async fn bad_input_ends_failed_with_a_clear_message() {
    let w = world().await;
    let arm_only = w.registry.put_image("multi", None, &[(d('a'), 1)]);
    w.registry.put(
        "multi",
        Some("v1"),
        OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_only, "size": 1,
             "platform": {"os": "linux", "architecture": "arm64"}}]}),
    );
    let good = w.image("multi:v1");
    fails_with(
        &w,
        "cluster",
        json!({"cluster": "nope", "images": [good]}),
        "ClusterNotFound",
        "DragonflyCluster \"nope\" not found in namespace team",
    )
    .await;
    fails_with(
        &w,
        "reference",
        json!({"cluster": "dragonfly", "images": ["r.example.com/UPPER:v1", good]}),
        "InvalidSpec",
        "spec.images[0]: invalid image reference \"r.example.com/UPPER:v1\": repository name must be lowercase",
    )
    .await;
    fails_with(
        &w,
        "secret",
        json!({"cluster": "dragonfly", "images": [good], "pullSecrets": [{"name": "regcred"}]}),
        "SecretNotFound",
        "pull secret \"regcred\" not found in namespace team",
    )
    .await;
    w.fake.insert(
        &format!("/api/v1/namespaces/{NS}/secrets/opaque"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "opaque"}, "type": "Opaque"}),
    );
    fails_with(
        &w,
        "secret-type",
        json!({"cluster": "dragonfly", "images": [good], "pullSecrets": [{"name": "opaque"}]}),
        "InvalidSecret",
        "pull secret \"opaque\" has type Opaque, not kubernetes.io/dockerconfigjson",
    )
    .await;
    let st = fails_with(
        &w,
        "missing",
        json!({"cluster": "dragonfly", "images": [w.image("multi:v2")], "platforms": ["linux/arm64"]}),
        "ImageNotFound",
        "not found in the registry",
    )
    .await;
    assert_eq!(st.images[0].state, ItemState::Failed);
    fails_with(
        &w,
        "platform",
        json!({"cluster": "dragonfly", "images": [good], "platforms": ["linux/amd64"]}),
        "PlatformMissing",
        "platform linux/amd64 not in the image index (it has: linux/arm64)",
    )
    .await;
    let reasons = w.fake.event_reasons();
    assert!(reasons.iter().all(|r| r == "Failed"), "{reasons:?}");
    assert!(w.daemon.lock().posts.is_empty(), "nothing was downloaded");
}

#[tokio::test]
async fn an_unreachable_registry_is_retried_then_fails() {
    let w = world().await;
    // Port 1 on loopback: connection refused at once.
    w.create(
        "down",
        1,
        json!({"cluster": "dragonfly", "images": ["127.0.0.1:1/app:v1"], "platforms": ["linux/amd64"], "backoffLimit": 1}),
    );
    let action = w.reconcile("down").await;
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let st = w.status("down");
    assert_eq!((st.phase, st.retries), (Phase::Pending, 1));
    assert!(
        st.message.starts_with(
            "retrying (1/2): image 127.0.0.1:1/app:v1: registry http://127.0.0.1:1 unreachable"
        ),
        "{}",
        st.message
    );
    assert_eq!(w.fake.event_reasons(), ["Retrying"]);

    // Woken again at once (by that status write): the backoff holds.
    for _ in 0..3 {
        w.woken_early("down", Duration::from_secs(5)).await;
    }

    w.elapse();
    w.reconcile("down").await;
    let st = w.status("down");
    assert_eq!(st.phase, Phase::Failed);
    assert!(
        st.message.ends_with("(gave up after 2 attempts)"),
        "{}",
        st.message
    );
    assert_eq!(
        status::condition(&st, status::FAILED).map(|c| c.reason.as_str()),
        Some("RegistryUnreachable")
    );
    assert_eq!(w.fake.event_reasons(), ["Failed"]);
}

/// The delay of a requeue (kube's `Action` shows it only through Debug).
fn requeue_after(action: &Action) -> Duration {
    let text = format!("{action:?}");
    let inner = text
        .split_once("Some(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(d, _)| d)
        .unwrap_or_else(|| panic!("{text} is not a requeue"));
    let split = inner
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(inner.len());
    let (number, unit) = inner.split_at(split);
    let number: f64 = number.parse().expect("a number");
    let per_second = match unit {
        "s" => 1.0,
        "ms" => 1e3,
        "µs" => 1e6,
        "ns" => 1e9,
        _ => panic!("unit {unit:?} in {text}"),
    };
    Duration::from_secs_f64(number / per_second)
}

#[tokio::test]
async fn a_retry_waits_for_its_backoff_whatever_wakes_it() {
    let w = world().await;
    w.registry.put_image("app", Some("v1"), &[(d('c'), 1)]);
    w.fake.insert(
        &format!("/api/v1/namespaces/{NS}/pods/dragonfly-seed-peer-0"),
        seed_pod("dragonfly-seed-peer-0", false),
    );
    // The default backoffLimit (6): seed pods that start within the backoff
    // are waited for, however often the Preheat is written meanwhile.
    w.create(
        "slow",
        1,
        json!({"cluster": "dragonfly", "images": [w.image("app:v1")], "platforms": ["linux/amd64"]}),
    );
    assert_eq!(
        w.reconcile("slow").await,
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(w.status("slow").retries, 1);
    for _ in 0..10 {
        w.woken_early("slow", Duration::from_secs(5)).await;
    }
    w.elapse();
    assert_eq!(
        w.reconcile("slow").await,
        Action::requeue(Duration::from_secs(10)),
        "the backoff doubles"
    );
    let st = w.status("slow");
    assert_eq!(
        (st.phase, st.retries),
        (Phase::Running, 2),
        "{}",
        st.message
    );
    w.woken_early("slow", Duration::from_secs(10)).await;

    w.fake.insert(
        &format!("/api/v1/namespaces/{NS}/pods/dragonfly-seed-peer-0"),
        seed_pod("dragonfly-seed-peer-0", true),
    );
    assert_eq!(w.until_finished("slow").await.phase, Phase::Succeeded);
}

#[tokio::test]
async fn a_troubled_tick_backs_off_exponentially() {
    let w = world().await;
    w.registry.put_image("app", Some("v1"), &[(d('c'), 1)]);
    // The seed peer is ready but its dfdaemon refuses connections.
    w.fake.insert(
        &format!("/apis/p2p.dragonfly.dev/v1alpha1/namespaces/{NS}/dragonflyclusters/dragonfly"),
        json!({
            "apiVersion": "p2p.dragonfly.dev/v1alpha1", "kind": "DragonflyCluster",
            "metadata": {"name": "dragonfly", "namespace": NS, "uid": "dfc-uid", "generation": 1},
            "spec": {"dfdaemon": {"peerPort": 1, "proxyPort": 1}}
        }),
    );
    w.create(
        "stuck",
        1,
        json!({"cluster": "dragonfly", "images": [w.image("app:v1")], "platforms": ["linux/amd64"]}),
    );
    for (retries, wait) in [(1, 5), (2, 10), (3, 20)] {
        w.elapse();
        let action = w.reconcile("stuck").await;
        let st = w.status("stuck");
        assert_eq!(
            (st.phase, st.retries),
            (Phase::Running, retries),
            "{}",
            st.message
        );
        assert_eq!(action, Action::requeue(Duration::from_secs(wait)));
        w.woken_early("stuck", Duration::from_secs(wait)).await;
        w.woken_early("stuck", Duration::from_secs(wait)).await;
    }
}

#[tokio::test]
async fn waits_for_a_ready_seed_peer() {
    let w = world().await;
    w.registry.put_image("app", Some("v1"), &[(d('c'), 1)]);
    w.fake.insert(
        &format!("/api/v1/namespaces/{NS}/pods/dragonfly-seed-peer-0"),
        seed_pod("dragonfly-seed-peer-0", false),
    );
    w.create(
        "wait",
        1,
        json!({"cluster": "dragonfly", "images": [w.image("app:v1")], "platforms": ["linux/amd64"]}),
    );
    w.reconcile("wait").await;
    let st = w.status("wait");
    assert_eq!(st.phase, Phase::Running, "resolved, waiting for peers");
    assert_eq!(st.retries, 1);
    assert!(
        st.message
            .contains("no seed peer pod of DragonflyCluster dragonfly is ready"),
        "{}",
        st.message
    );
    w.fake.insert(
        &format!("/api/v1/namespaces/{NS}/pods/dragonfly-seed-peer-0"),
        seed_pod("dragonfly-seed-peer-0", true),
    );
    assert_eq!(w.until_finished("wait").await.phase, Phase::Succeeded);
}

#[tokio::test]
async fn default_platforms_are_the_nodes() {
    let w = world().await;
    let amd = w
        .registry
        .put_image("multi", None, &[(d('a'), 1), (d('b'), 2)]);
    let arm = w
        .registry
        .put_image("multi", None, &[(d('c'), 3), (d('e'), 4)]);
    let plat = |digest: &str, arch: &str| {
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 1,
               "platform": {"os": "linux", "architecture": arch}})
    };
    w.registry.put(
        "multi",
        Some("v1"),
        OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [plat(&amd, "amd64"), plat(&arm, "arm64")]}),
    );
    w.fake.insert(
        "/api/v1/nodes/node-a",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a",
               "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}}}),
    );
    w.create(
        "multi",
        1,
        json!({"cluster": "dragonfly", "images": [w.image("multi:v1")]}),
    );
    let st = w.until_finished("multi").await;
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    let m = &st.images[0].manifests;
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].platform.as_deref(), m[0].digest.as_str()),
        (Some("linux/arm64"), arm.as_str())
    );
    let mut posted: Vec<String> = w
        .daemon
        .lock()
        .posts
        .iter()
        .filter_map(|p| p["digest"].as_str().map(String::from))
        .collect();
    posted.sort();
    assert_eq!(posted, [d('c'), d('e')], "only arm64's blobs");
}

/// The status keeps no blob lists, so after an operator restart (in-memory
/// runs gone) they are read again by the manifest digests the status
/// recorded, never by tag: a tag pushed meanwhile changes nothing.
#[tokio::test]
async fn a_restarted_operator_reads_blobs_again_by_digest_not_by_tag() {
    let w = world().await;
    let blobs = [(d('c'), 10), (d('1'), 200)];
    let digest = w.registry.put_image("library/app", Some("v1"), &blobs);
    w.daemon.lock().polls_before_done = 1;
    w.create(
        "app",
        1,
        json!({"cluster": "dragonfly", "images": [w.image("library/app:v1")], "platforms": ["linux/amd64"]}),
    );
    w.reconcile("app").await;
    assert_eq!(w.status("app").phase, Phase::Running);

    // Restart, and the tag moves to another image.
    w.ctx.jobs.lock().unwrap_or_else(|p| p.into_inner()).clear();
    w.registry
        .put_image("library/app", Some("v1"), &[(d('d'), 1), (d('e'), 2)]);
    let before = w.registry.requests().len();
    let st = w.until_finished("app").await;
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    assert_eq!(st.images[0].digest.as_deref(), Some(digest.as_str()));
    let asked: Vec<String> = w.registry.requests()[before..]
        .iter()
        .filter(|r| r.contains("/manifests/"))
        .cloned()
        .collect();
    assert_eq!(asked, [format!("GET /v2/library/app/manifests/{digest}")]);
    let mut posted: Vec<String> = w
        .daemon
        .lock()
        .posts
        .iter()
        .filter_map(|p| p["digest"].as_str().map(String::from))
        .collect();
    posted.sort();
    posted.dedup();
    assert_eq!(posted, [d('1'), d('c')], "the blobs of the recorded digest");
}

#[tokio::test]
async fn pull_secret_credentials_reach_registry_and_peers() {
    let w = world().await;
    w.registry
        .put_image("private/app", Some("v1"), &[(d('c'), 1), (d('1'), 2)]);
    w.registry.require("Basic YWxpY2U6czNjcmV0");
    let config = json!({"auths": {w.registry.host(): {"auth": "YWxpY2U6czNjcmV0"}}}).to_string();
    w.fake.insert(
        &format!("/api/v1/namespaces/{NS}/secrets/regcred"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
               "type": "kubernetes.io/dockerconfigjson",
               "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)}}),
    );
    w.create(
        "private",
        1,
        json!({"cluster": "dragonfly", "images": [w.image("private/app:v1")], "platforms": ["linux/amd64"],
               "pullSecrets": [{"name": "regcred"}]}),
    );
    let st = w.until_finished("private").await;
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    let s = w.daemon.lock();
    assert!(s
        .posts
        .iter()
        .all(|p| p["headers"]["Authorization"] == "Basic YWxpY2U6czNjcmV0"));
    assert!(s
        .mirror
        .iter()
        .all(|(_, _, a)| a.as_deref() == Some("Basic YWxpY2U6czNjcmV0")));
}

#[tokio::test]
async fn a_refused_download_fails_with_the_origin_answer() {
    let w = world().await;
    w.registry.put_image("app", Some("v1"), &[(d('c'), 1)]);
    w.daemon.lock().polls_before_done = 5;
    w.daemon.lock().failure =
        Some(json!({"kind": "origin", "status": 401, "message": "authentication required"}));
    w.create(
        "denied",
        1,
        json!({"cluster": "dragonfly", "images": [w.image("app:v1")], "platforms": ["linux/amd64"]}),
    );
    let st = w.until_finished("denied").await;
    assert_eq!(st.phase, Phase::Failed);
    assert!(
        st.message.starts_with(&format!(
            "peer dragonfly-seed-peer-0 on node node-a: blob {} of image {}: unauthorised: the origin answered 401 (authentication required)",
            d('c'),
            w.image("app:v1")
        )),
        "{}",
        st.message
    );
    assert_eq!(st.images[0].state, ItemState::Failed);
    assert_eq!(w.fake.event_reasons(), ["Started", "Failed"]);
}

#[tokio::test]
async fn ttl_deletes_a_finished_preheat() {
    let w = world().await;
    let finished = |ttl: i64, done_at: i64| {
        json!({
            "apiVersion": "p2p.dragonfly.dev/v1alpha1", "kind": "Preheat",
            "metadata": {"name": "old", "namespace": NS, "uid": "uid-old", "generation": 1},
            "spec": {"cluster": "dragonfly", "images": ["busybox"], "ttlSecondsAfterFinished": ttl},
            "status": {"observedGeneration": 1, "phase": "Succeeded",
                       "completionTime": Timestamp::from_second(done_at).expect("ts").to_string()}
        })
    };
    w.fake.insert(&ph_path("old"), finished(600, NOW - 100));
    assert_eq!(
        w.reconcile("old").await,
        Action::requeue(Duration::from_secs(500))
    );
    assert!(w.fake.writes().is_empty());
    w.fake.insert(&ph_path("old"), finished(60, NOW - 100));
    assert_eq!(w.reconcile("old").await, Action::await_change());
    assert_eq!(w.fake.writes(), ["DELETE preheats/old"]);
    assert!(w.fake.object(&ph_path("old")).is_none());
}

#[test]
fn retry_delays_double_and_cap() {
    assert_eq!(PACE.retry_delay(1), Duration::from_secs(5));
    assert_eq!(PACE.retry_delay(2), Duration::from_secs(10));
    assert_eq!(PACE.retry_delay(30), Duration::from_secs(300));
}
