//! Drives the chosen dfdaemons: each manifest is fetched once through the
//! peer's registry mirror (which keeps it), each blob and file is a task
//! started through the peer's task API (`POST /api/v1/tasks`, the digest is
//! the task id, the scheduler elects who goes to the origin), and progress
//! is read back with `GET /api/v1/tasks/{id}`.
//!
//! One call to [`Dfdaemons::tick`] looks at every download once, bounded in
//! time and concurrency; callers repeat it (the controller by requeueing,
//! `preheat-local` in a loop). What is known finished is remembered in a
//! [`Tracker`] so it is not asked again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use tracing::debug;
use wire::task::{ErrorBody, TaskFailure, TaskState, TaskStatus};

use super::crd::UrlSource;
use super::reference::ImageRef;
use super::resolve::{Registries, Resolution};
use super::targets::Target;

/// Names the upstream registry of a mirror request.
/// containerd 1.6's own Accept for resolving a tag, so a peer's cached
/// answer matches the lookup containerd makes later.
pub const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
const CONCURRENCY: usize = 16;
const MAX_MANIFEST: usize = 4 * 1024 * 1024 + 1;

/// A manifest a peer's mirror should fetch (and so keep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFetch {
    pub image: usize,
    /// `scheme://host` of the registry.
    pub registry: String,
    pub repository: String,
    /// Tag or digest.
    pub reference: String,
}

impl ManifestFetch {
    fn key(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.reference)
    }
}

/// Which spec entries a download belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    Image(usize),
    Url(usize),
}

/// One blob or file every target downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The digest for blobs, the URL for files without one.
    pub key: String,
    pub url: String,
    pub digest: Option<String>,
    /// Size when known in advance (blobs).
    pub size: Option<i64>,
    /// The image whose registry credentials go with it.
    pub auth_from: Option<usize>,
    pub owners: Vec<Owner>,
    /// How messages name it.
    pub label: String,
}

impl Download {
    /// The task id, when the digest names it (dfdaemon uses its hex).
    fn known_id(&self) -> Option<String> {
        self.digest
            .as_deref()
            .and_then(|d| d.strip_prefix("sha256:"))
            .map(str::to_string)
    }
}

/// Everything one run fetches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub manifests: Vec<ManifestFetch>,
    pub downloads: Vec<Download>,
}

impl Plan {
    /// From the resolved images (in spec order) and the files.
    /// A blob in several images is one download.
    pub fn build(
        images: &[ImageRef],
        resolved: &[Resolution],
        urls: &[UrlSource],
        registries: &Registries,
    ) -> Plan {
        let mut plan = Plan::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, (image, st)) in images.iter().zip(resolved).enumerate() {
            let registry = registries.base_url(image);
            let mut refs: Vec<String> = Vec::new();
            if let Some(tag) = &image.tag {
                refs.push(tag.clone());
            }
            refs.push(st.digest.clone());
            refs.extend(st.manifests.iter().map(|m| m.digest.clone()));
            let mut seen = HashSet::new();
            for reference in refs {
                if seen.insert(reference.clone()) {
                    plan.manifests.push(ManifestFetch {
                        image: i,
                        registry: registry.clone(),
                        repository: image.repository.clone(),
                        reference,
                    });
                }
            }
            for blob in st.manifests.iter().flat_map(|m| &m.blobs) {
                match index.get(&blob.digest) {
                    Some(&at) => {
                        let owners = &mut plan.downloads[at].owners;
                        if !owners.contains(&Owner::Image(i)) {
                            owners.push(Owner::Image(i));
                        }
                    }
                    None => {
                        index.insert(blob.digest.clone(), plan.downloads.len());
                        plan.downloads.push(Download {
                            key: blob.digest.clone(),
                            url: format!(
                                "{registry}/v2/{}/blobs/{}",
                                image.repository, blob.digest
                            ),
                            digest: Some(blob.digest.clone()),
                            size: Some(blob.size),
                            auth_from: Some(i),
                            owners: vec![Owner::Image(i)],
                            label: format!("blob {} of image {image}", blob.digest),
                        });
                    }
                }
            }
        }
        for (u, source) in urls.iter().enumerate() {
            let key = source.digest.clone().unwrap_or_else(|| source.url.clone());
            if let Some(&at) = index.get(&key) {
                plan.downloads[at].owners.push(Owner::Url(u));
                continue;
            }
            index.insert(key.clone(), plan.downloads.len());
            plan.downloads.push(Download {
                key,
                url: source.url.clone(),
                digest: source.digest.clone(),
                size: None,
                auth_from: None,
                owners: vec![Owner::Url(u)],
                label: format!("file {}", source.url),
            });
        }
        plan
    }
}

/// Where one download stands on one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done {
        bytes: i64,
    },
    Running {
        bytes_done: i64,
        total: Option<i64>,
    },
    Failed {
        /// Retrying cannot help (denied, not found, wrong content).
        permanent: bool,
        reason: &'static str,
        message: String,
    },
}

/// What one tick saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// By (target name, download key).
    pub outcomes: HashMap<(String, String), Outcome>,
    /// Manifests every target holds, out of `plan.manifests.len() * targets`.
    pub manifests_done: usize,
    /// Manifest fetches that failed: (permanent, reason, message).
    pub manifest_errors: Vec<(bool, &'static str, String)>,
}

impl Report {
    /// The errors of this tick, permanent ones first.
    pub fn errors(&self) -> Vec<(bool, &'static str, String)> {
        let mut out: Vec<(bool, &'static str, String)> = self.manifest_errors.clone();
        let mut keys: Vec<&(String, String)> = self.outcomes.keys().collect();
        keys.sort();
        for k in keys {
            if let Some(Outcome::Failed {
                permanent,
                reason,
                message,
            }) = self.outcomes.get(k)
            {
                out.push((*permanent, reason, message.clone()));
            }
        }
        out.sort_by_key(|(permanent, _, _)| !*permanent);
        out
    }
}

/// What a run remembers between ticks (in memory: after an operator
/// restart every download is asked once more, which is harmless).
#[derive(Debug, Default)]
pub struct Tracker {
    done: HashMap<(String, String), i64>,
    manifests: HashSet<(String, String)>,
    /// Task ids learnt from the daemon (files without a digest).
    task_ids: HashMap<String, String>,
    /// Restarts after a retryable failure, per (target, download).
    attempts: HashMap<(String, String), i32>,
}

/// The dfdaemons' HTTP APIs.
pub struct Dfdaemons {
    http: reqwest::Client,
    /// Peer ports speak mutual TLS (the operator's member certificate).
    peer_tls: bool,
    /// Restarts of one failed download before it counts as failed for good.
    pub max_attempts: i32,
}

/// What the task API said about a task.
enum Seen {
    Status(TaskStatus),
    Unknown,
    Failure(TaskFailure),
    Refused(String),
    Unreachable(String),
}

impl Dfdaemons {
    /// With `tls`, the peer ports are called over mutual TLS as the
    /// operator, and only nodes and seeds of the cluster are believed.
    pub fn new(
        max_attempts: i32,
        tls: Option<&identity::MemberTls>,
    ) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            // dfdaemon closes idle connections after 30 s; drop them first.
            .pool_idle_timeout(Duration::from_secs(20));
        let builder = match tls {
            Some(tls) => {
                use identity::Role;
                builder
                    .use_preconfigured_tls((*tls.client_config(&[Role::Node, Role::Seed])).clone())
            }
            None => builder,
        };
        Ok(Dfdaemons {
            http: builder.build()?,
            peer_tls: tls.is_some(),
            max_attempts,
        })
    }

    /// A target's peer port, as this operator reaches it.
    fn peer(&self, t: &Target) -> String {
        match t.peer.strip_prefix("http://") {
            Some(rest) if self.peer_tls => format!("https://{rest}"),
            _ => t.peer.clone(),
        }
    }

    /// Looks at every manifest and download on every target once. `auth`
    /// holds the `Authorization` value per image (by spec index).
    pub async fn tick(
        &self,
        plan: &Plan,
        targets: &[Target],
        auth: &HashMap<usize, Option<String>>,
        tracker: &mut Tracker,
    ) -> Report {
        let mut report = Report::default();

        let mut fetches = Vec::new();
        for t in targets {
            for m in &plan.manifests {
                if tracker.manifests.contains(&(t.name.clone(), m.key())) {
                    report.manifests_done += 1;
                } else {
                    let authorization = auth.get(&m.image).cloned().flatten();
                    fetches.push(
                        async move { (t, m, self.fetch_manifest(t, m, authorization).await) },
                    );
                }
            }
        }
        let mut results = futures::stream::iter(fetches).buffer_unordered(CONCURRENCY);
        while let Some((t, m, result)) = results.next().await {
            match result {
                Ok(()) => {
                    tracker.manifests.insert((t.name.clone(), m.key()));
                    report.manifests_done += 1;
                }
                Err(e) => report.manifest_errors.push(e),
            }
        }
        drop(results);

        let mut checks = Vec::new();
        for t in targets {
            for d in &plan.downloads {
                let k = (t.name.clone(), d.key.clone());
                if let Some(&bytes) = tracker.done.get(&k) {
                    report.outcomes.insert(k, Outcome::Done { bytes });
                    continue;
                }
                let id = d
                    .known_id()
                    .or_else(|| tracker.task_ids.get(&d.key).cloned());
                let attempts = tracker.attempts.get(&k).copied().unwrap_or(0);
                let authorization = d.auth_from.and_then(|i| auth.get(&i).cloned().flatten());
                checks.push(async move {
                    let (outcome, learnt, retried) =
                        self.check(t, d, id, authorization, attempts).await;
                    (k, outcome, learnt, retried)
                });
            }
        }
        let mut results = futures::stream::iter(checks).buffer_unordered(CONCURRENCY);
        while let Some((k, outcome, learnt, retried)) = results.next().await {
            if let Some(id) = learnt {
                tracker.task_ids.insert(k.1.clone(), id);
            }
            if retried {
                *tracker.attempts.entry(k.clone()).or_insert(0) += 1;
            }
            if let Outcome::Done { bytes } = outcome {
                tracker.done.insert(k.clone(), bytes);
            }
            report.outcomes.insert(k, outcome);
        }
        report
    }

    /// One download on one peer: read its state, start it when the peer
    /// does not have it, restart it after a retryable failure.
    /// Returns the outcome, a task id learnt, and whether it was restarted.
    async fn check(
        &self,
        t: &Target,
        d: &Download,
        id: Option<String>,
        authorization: Option<String>,
        attempts: i32,
    ) -> (Outcome, Option<String>, bool) {
        let seen = match &id {
            Some(id) => self.get(t, id).await,
            None => Seen::Unknown,
        };
        let failure = match seen {
            Seen::Status(s) if s.state == TaskState::Failed => {
                Some(s.error.unwrap_or(TaskFailure::Other))
            }
            // Known but not running (e.g. the daemon restarted): resume it.
            Seen::Status(s) if s.state == TaskState::Idle && !is_complete(&s) => None,
            Seen::Status(s) => return (outcome_of(&s), None, false),
            Seen::Unknown => None,
            Seen::Failure(f) => Some(f),
            Seen::Refused(why) => {
                return (
                    transient("PeerError", format!("{}: {why}", t.describe())),
                    None,
                    false,
                )
            }
            Seen::Unreachable(why) => return (unreachable(t, &why), None, false),
        };
        let mut retried = false;
        if let Some(f) = failure {
            let (permanent, reason, what) = classify(&f, d);
            let message = format!("{}: {what}", t.describe());
            if permanent {
                return (
                    Outcome::Failed {
                        permanent,
                        reason,
                        message,
                    },
                    None,
                    false,
                );
            }
            if attempts >= self.max_attempts {
                return (
                    Outcome::Failed {
                        permanent: true,
                        reason,
                        message: format!("{message} (gave up after {attempts} restarts)"),
                    },
                    None,
                    false,
                );
            }
            debug!(target = %t.name, download = %d.key, %message, "restarting a failed download");
            retried = true;
        }
        match self.submit(t, d, authorization).await {
            Ok(s) => {
                let learnt = (id.as_deref() != Some(s.task_id.as_str())).then(|| s.task_id.clone());
                let outcome = match s.error.clone() {
                    Some(f) if s.state == TaskState::Failed => {
                        let (permanent, reason, what) = classify(&f, d);
                        Outcome::Failed {
                            permanent,
                            reason,
                            message: format!("{}: {what}", t.describe()),
                        }
                    }
                    _ => outcome_of(&s),
                };
                (outcome, learnt, retried)
            }
            Err(outcome) => (outcome, None, retried),
        }
    }

    async fn get(&self, t: &Target, id: &str) -> Seen {
        let url = format!("{}/api/v1/tasks/{id}", self.peer(t));
        let resp = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => return Seen::Unreachable(error_chain(&e)),
        };
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Seen::Unknown;
        }
        if status.is_success() {
            return match resp.json::<TaskStatus>().await {
                Ok(s) => Seen::Status(s),
                Err(e) => Seen::Refused(format!("unreadable task status: {e}")),
            };
        }
        match resp.json::<ErrorBody>().await {
            Ok(ErrorBody {
                failure: Some(f), ..
            }) => Seen::Failure(f),
            Ok(b) => Seen::Refused(format!("task API answered {status}: {}", b.error)),
            Err(_) => Seen::Refused(format!("task API answered {status}")),
        }
    }

    async fn submit(
        &self,
        t: &Target,
        d: &Download,
        authorization: Option<String>,
    ) -> Result<TaskStatus, Outcome> {
        let mut headers = BTreeMap::new();
        if let Some(a) = authorization {
            headers.insert("Authorization".to_string(), a);
        }
        let mut body = json!({ "url": d.url, "headers": headers });
        if let Some(digest) = &d.digest {
            body["digest"] = digest.clone().into();
        }
        let url = format!("{}/api/v1/tasks", self.peer(t));
        let resp = match self.http.post(&url).json(&body).send().await {
            Ok(r) => r,
            Err(e) => return Err(unreachable(t, &error_chain(&e))),
        };
        let status = resp.status();
        if status.is_success() {
            return resp.json::<TaskStatus>().await.map_err(|e| {
                transient(
                    "PeerError",
                    format!("{}: unreadable task status: {e}", t.describe()),
                )
            });
        }
        let why = resp
            .json::<ErrorBody>()
            .await
            .map(|b| b.error)
            .unwrap_or_default();
        let message = format!("{}: refused {} ({status}: {why})", t.describe(), d.label);
        if status.is_client_error() {
            Err(Outcome::Failed {
                permanent: true,
                reason: "BadRequest",
                message,
            })
        } else {
            Err(transient("PeerError", message))
        }
    }

    /// GET through the peer's mirror, which fetches the manifest upstream
    /// and keeps it (by digest as a P2P task).
    async fn fetch_manifest(
        &self,
        t: &Target,
        m: &ManifestFetch,
        authorization: Option<String>,
    ) -> Result<(), (bool, &'static str, String)> {
        let url = format!("{}/v2/{}/manifests/{}", t.mirror, m.repository, m.reference);
        let mut req = self
            .http
            .get(&url)
            .header(wire::headers::REGISTRY, &m.registry)
            .header(reqwest::header::ACCEPT, CONTAINERD_ACCEPT);
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let what = format!("manifest {}/{}:{}", m.registry, m.repository, m.reference);
        let resp = req.send().await.map_err(|e| {
            (
                false,
                "NodeUnreachable",
                format!(
                    "{}: node unreachable: registry mirror {}: {}",
                    t.describe(),
                    t.mirror,
                    error_chain(&e)
                ),
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            let mut stream = resp.bytes_stream();
            let mut read = 0usize;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    (
                        false,
                        "PeerError",
                        format!("{}: {what}: {}", t.describe(), error_chain(&e)),
                    )
                })?;
                read += chunk.len();
                if read > MAX_MANIFEST {
                    return Err((
                        true,
                        "UnsupportedImage",
                        format!("{}: {what} is larger than 4 MiB", t.describe()),
                    ));
                }
            }
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
        let body: String = body.chars().take(200).collect();
        let (permanent, reason, kind) = match status.as_u16() {
            401 | 403 => (true, "Unauthorized", "unauthorised"),
            404 => (true, "ImageNotFound", "not found"),
            _ => (false, "PeerError", "failed"),
        };
        Err((
            permanent,
            reason,
            format!(
                "{}: {what} through the mirror: {kind} ({status}: {body})",
                t.describe()
            ),
        ))
    }
}

fn is_complete(s: &TaskStatus) -> bool {
    s.state == TaskState::Complete
}

fn outcome_of(s: &TaskStatus) -> Outcome {
    let total = s.content_length.map(to_i64);
    if is_complete(s) {
        Outcome::Done {
            bytes: total.unwrap_or_else(|| to_i64(s.bytes_done)),
        }
    } else {
        Outcome::Running {
            bytes_done: to_i64(s.bytes_done),
            total,
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn transient(reason: &'static str, message: String) -> Outcome {
    Outcome::Failed {
        permanent: false,
        reason,
        message,
    }
}

fn unreachable(t: &Target, why: &str) -> Outcome {
    transient(
        "NodeUnreachable",
        format!(
            "{}: node unreachable: task API {}: {why}",
            t.describe(),
            t.peer
        ),
    )
}

/// A dfdaemon's `TaskFailure`: (permanent, reason, message).
fn classify(f: &TaskFailure, d: &Download) -> (bool, &'static str, String) {
    let short = |message: &str| message.chars().take(200).collect::<String>();
    match f {
        TaskFailure::Origin { status, message } => {
            let message = short(message);
            match status {
                401 | 403 => (
                    true,
                    "Unauthorized",
                    format!("{}: unauthorised: the origin answered {status} ({message}); check spec.pullSecrets", d.label),
                ),
                404 | 410 => (
                    true,
                    "NotFound",
                    format!("{}: not found: the origin answered {status} ({message})", d.label),
                ),
                408 | 429 | 500..=599 => (
                    false,
                    "OriginError",
                    format!("{}: the origin answered {status} ({message})", d.label),
                ),
                _ => (
                    true,
                    "OriginRefused",
                    format!("{}: the origin answered {status} ({message})", d.label),
                ),
            }
        }
        TaskFailure::DigestMismatch { actual, .. } => (
            true,
            "DigestMismatch",
            format!(
                "{}: content does not match its digest (got {actual})",
                d.label
            ),
        ),
        TaskFailure::Internal { message } => (
            false,
            "DownloadFailed",
            format!("{}: download failed: {}", d.label, short(message)),
        ),
        TaskFailure::Other => (
            false,
            "DownloadFailed",
            format!(
                "{}: download failed (a failure this operator does not know)",
                d.label
            ),
        ),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preheat::credentials::Credentials;
    use crate::preheat::resolve::{BlobRef, ResolvedManifest};
    use serde_json::Value;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn status(digest: &str, manifests: &[(&str, &[char])]) -> Resolution {
        Resolution {
            digest: digest.into(),
            manifests: manifests
                .iter()
                .map(|(m, blobs)| ResolvedManifest {
                    platform: None,
                    digest: m.to_string(),
                    blobs: blobs
                        .iter()
                        .map(|c| BlobRef {
                            digest: d(*c),
                            size: 10,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn plan_dedupes_blobs_and_lists_manifests() {
        let images = [
            ImageRef::parse("127.0.0.1:5055/a:v1").expect("ref"),
            ImageRef::parse(&format!("127.0.0.1:5055/b@{}", d('9'))).expect("ref"),
        ];
        let resolved = [
            status(&d('1'), &[(&d('2'), &['a', 'b']), (&d('3'), &['a', 'c'])]),
            status(&d('9'), &[(&d('9'), &['b', 'e'])]),
        ];
        let urls = [
            UrlSource {
                url: "https://files.example.com/f".into(),
                digest: None,
            },
            UrlSource {
                url: "https://mirror.example.com/e".into(),
                digest: Some(d('e')),
            },
        ];
        let regs = Registries::for_images(&images, &[], Credentials::default());
        let plan = Plan::build(&images, &resolved, &urls, &regs);
        let refs: Vec<(usize, &str)> = plan
            .manifests
            .iter()
            .map(|m| (m.image, m.reference.as_str()))
            .collect();
        assert_eq!(
            refs,
            [
                (0, "v1"),
                (0, d('1').as_str()),
                (0, d('2').as_str()),
                (0, d('3').as_str()),
                (1, d('9').as_str())
            ]
        );
        assert_eq!(plan.manifests[0].registry, "http://127.0.0.1:5055");
        let keys: Vec<&str> = plan.downloads.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                d('a').as_str(),
                d('b').as_str(),
                d('c').as_str(),
                d('e').as_str(),
                "https://files.example.com/f"
            ]
        );
        let b = &plan.downloads[1];
        assert_eq!(b.owners, [Owner::Image(0), Owner::Image(1)]);
        assert_eq!(
            b.url,
            format!("http://127.0.0.1:5055/v2/a/blobs/{}", d('b'))
        );
        assert_eq!(b.known_id().as_deref(), Some("b".repeat(64).as_str()));
        // A file with the digest of a blob is the same download.
        assert_eq!(plan.downloads[3].owners, [Owner::Image(1), Owner::Url(1)]);
        assert_eq!(plan.downloads[4].known_id(), None);
    }

    #[test]
    fn task_failures_are_classified() {
        let blob = Download {
            key: d('a'),
            url: "http://r/v2/a/blobs/x".into(),
            digest: Some(d('a')),
            size: Some(1),
            auth_from: Some(0),
            owners: vec![Owner::Image(0)],
            label: "blob X of image Y".into(),
        };
        let c = |v: Value| classify(&serde_json::from_value(v).expect("a failure"), &blob);
        let (p, r, m) = c(json!({"kind":"origin","status":401,"message":"denied"}));
        assert!(p);
        assert_eq!(r, "Unauthorized");
        assert!(
            m.starts_with("blob X of image Y: unauthorised: the origin answered 401 (denied)"),
            "{m}"
        );
        assert_eq!(
            c(json!({"kind":"origin","status":404,"message":""})).1,
            "NotFound"
        );
        assert!(!c(json!({"kind":"origin","status":503,"message":""})).0);
        assert!(!c(json!({"kind":"origin","status":429,"message":""})).0);
        assert!(c(json!({"kind":"origin","status":400,"message":""})).0);
        assert_eq!(
            c(json!({"kind":"digest_mismatch","expected":"a","actual":"b"})),
            (
                true,
                "DigestMismatch",
                "blob X of image Y: content does not match its digest (got b)".to_string()
            )
        );
        assert!(!c(json!({"kind":"internal","message":"disk full"})).0);
        assert!(!c(json!({"kind":"something new"})).0);
    }

    #[tokio::test]
    async fn retryable_failures_restart_then_give_up_and_dead_peers_are_named() {
        use crate::preheat::fakes::FakeDaemon;
        let daemon = FakeDaemon::start().await;
        daemon.lock().polls_before_done = 10;
        let url = |addr: String| format!("http://{addr}");
        let live = Target {
            name: "seed-0".into(),
            node: Some("n1".into()),
            peer: url(daemon.addr.to_string()),
            mirror: url(daemon.addr.to_string()),
        };
        let dead = Target {
            name: "seed-1".into(),
            node: None,
            peer: "http://127.0.0.1:1".into(),
            mirror: "http://127.0.0.1:1".into(),
        };
        let blob = Download {
            key: d('a'),
            url: "http://r/v2/app/blobs/a".into(),
            digest: Some(d('a')),
            size: Some(10),
            auth_from: None,
            owners: vec![Owner::Image(0)],
            label: "blob A".into(),
        };
        let plan = Plan {
            manifests: vec![],
            downloads: vec![blob],
        };
        let daemons = Dfdaemons::new(2, None).expect("client");
        let mut tracker = Tracker::default();
        let key = |t: &str| (t.to_string(), d('a'));

        let r = daemons
            .tick(
                &plan,
                &[live.clone(), dead.clone()],
                &HashMap::new(),
                &mut tracker,
            )
            .await;
        assert!(matches!(
            r.outcomes[&key("seed-0")],
            Outcome::Running {
                bytes_done: 500,
                ..
            }
        ));
        match &r.outcomes[&key("seed-1")] {
            Outcome::Failed {
                permanent: false,
                reason: "NodeUnreachable",
                message,
            } => {
                assert!(
                    message
                        .starts_with("peer seed-1: node unreachable: task API http://127.0.0.1:1"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }

        daemon.lock().failure = Some(json!({"kind": "origin", "status": 503, "message": "busy"}));
        for attempt in 1..=2 {
            let r = daemons
                .tick(
                    &plan,
                    std::slice::from_ref(&live),
                    &HashMap::new(),
                    &mut tracker,
                )
                .await;
            assert!(
                !matches!(
                    r.outcomes[&key("seed-0")],
                    Outcome::Failed {
                        permanent: true,
                        ..
                    }
                ),
                "attempt {attempt}: {:?}",
                r.outcomes
            );
        }
        assert_eq!(daemon.lock().posts.len(), 3, "first start and two restarts");
        let r = daemons
            .tick(
                &plan,
                std::slice::from_ref(&live),
                &HashMap::new(),
                &mut tracker,
            )
            .await;
        match &r.outcomes[&key("seed-0")] {
            Outcome::Failed { permanent: true, reason: "OriginError", message } => assert_eq!(
                message,
                "peer seed-0 on node n1: blob A: the origin answered 503 (busy) (gave up after 2 restarts)"
            ),
            other => panic!("{other:?}"),
        }

        daemon.lock().failure = None;
        daemon.lock().polls_before_done = 0;
        daemon.lock().tasks.clear();
        let mut fresh = Tracker::default();
        let r = daemons
            .tick(
                &plan,
                std::slice::from_ref(&live),
                &HashMap::new(),
                &mut fresh,
            )
            .await;
        assert_eq!(r.outcomes[&key("seed-0")], Outcome::Done { bytes: 1000 });
        let before = daemon.lock().posts.len();
        daemons
            .tick(&plan, &[live], &HashMap::new(), &mut fresh)
            .await;
        assert_eq!(
            daemon.lock().posts.len(),
            before,
            "a finished download is not asked again"
        );
    }

    #[test]
    fn report_lists_permanent_errors_first() {
        let mut r = Report::default();
        r.manifest_errors.push((false, "PeerError", "m".into()));
        r.outcomes.insert(
            ("t".into(), "a".into()),
            Outcome::Failed {
                permanent: true,
                reason: "NotFound",
                message: "gone".into(),
            },
        );
        r.outcomes
            .insert(("t".into(), "b".into()), Outcome::Done { bytes: 1 });
        let e = r.errors();
        assert_eq!(e[0], (true, "NotFound", "gone".to_string()));
        assert_eq!(e.len(), 2);
    }
}
