//! `dragonfly-operator crd --apply`: the chart's pre-install/pre-upgrade
//! hook. Helm applies a release's DragonflyCluster before the new operator
//! runs, so a field the served CRD lacks would be pruned by the API server;
//! this brings the CRDs to this version first. Unlike the operator's start
//! (`ensure_current`) it creates a missing CRD, fails on any error, and
//! returns only once every CRD is Established.

use std::fmt;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::Client;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{apply, decide, Decision};

/// What was done to one CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    UpToDate,
    /// A newer operator applied it (a downgrade): left as it is.
    KeptNewer(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Created => f.write_str("created"),
            Outcome::Updated => f.write_str("updated"),
            Outcome::UpToDate => f.write_str("up to date"),
            Outcome::KeptNewer(v) => write!(f, "kept (applied by the newer operator {v})"),
        }
    }
}

/// The kube error is part of the message (not a `source`): `main` prints
/// the whole chain, which would then repeat it.
#[derive(Debug, thiserror::Error)]
pub enum EstablishError {
    #[error("cannot read CRD {name}: {error}{}", rbac_hint(.error, "get on customresourcedefinitions by name"))]
    Read { name: String, error: kube::Error },
    #[error("cannot apply CRD {name}: {error}{}", rbac_hint(.error, "patch on customresourcedefinitions by name, and create for a missing one"))]
    Write { name: String, error: kube::Error },
    #[error("CRD {name} not Established within {}s: {last}", .timeout.as_secs())]
    NotEstablished {
        name: String,
        timeout: Duration,
        last: String,
    },
    #[error("the API server did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("a generated CRD has no name")]
    Unnamed,
}

/// What the hook's ClusterRole must allow, when the API server said no.
fn rbac_hint(error: &kube::Error, needed: &str) -> String {
    match error {
        kube::Error::Api(s) if s.code == 403 => format!(" (RBAC: {needed})"),
        _ => String::new(),
    }
}

/// How long to wait in all, and how often to look while waiting.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub timeout: Duration,
    pub poll: Duration,
}

impl Timing {
    pub fn new(timeout: Duration) -> Self {
        Timing {
            timeout,
            poll: Duration::from_millis(500),
        }
    }
}

/// Ok when the CRD's `Established` condition is True; else what its
/// conditions say (a name conflict shows as `NamesAccepted=False`).
pub fn established(crd: &CustomResourceDefinition) -> Result<(), String> {
    let conditions = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .filter(|c| !c.is_empty());
    let Some(conditions) = conditions else {
        return Err("no conditions yet".into());
    };
    if conditions
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True")
    {
        return Ok(());
    }
    Err(conditions
        .iter()
        .map(|c| {
            let mut s = format!("{}={}", c.type_, c.status);
            if let Some(m) = c.message.as_deref().filter(|m| !m.is_empty()) {
                s.push_str(&format!(" ({m})"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// Applies every CRD where needed and waits for each to be Established,
/// calling `report` once per CRD as it is done. The first error ends it.
pub async fn apply_and_wait(
    client: &Client,
    timing: Timing,
    report: &mut dyn FnMut(&str, &Outcome),
) -> Result<Vec<(String, Outcome)>, EstablishError> {
    // API calls have the kube client's own, longer timeouts: the deadline
    // holds for them too (a little later, so a CRD still not Established
    // is reported as such rather than as a silent API server).
    let slack = Duration::from_secs(5);
    match tokio::time::timeout(timing.timeout + slack, each(client, timing, report)).await {
        Ok(r) => r,
        Err(_) => Err(EstablishError::Timeout(timing.timeout + slack)),
    }
}

async fn each(
    client: &Client,
    timing: Timing,
    report: &mut dyn FnMut(&str, &Outcome),
) -> Result<Vec<(String, Outcome)>, EstablishError> {
    let ours = env!("CARGO_PKG_VERSION");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timing.timeout;
    let mut done = Vec::new();
    for desired in crate::crdgen::crds() {
        let name = desired
            .metadata
            .name
            .clone()
            .ok_or(EstablishError::Unnamed)?;
        let served = api
            .get_opt(&name)
            .await
            .map_err(|error| EstablishError::Read {
                name: name.clone(),
                error,
            })?;
        let (outcome, current) = match served {
            None => (Outcome::Created, None),
            Some(served) => match decide(&desired, &served, ours) {
                Decision::UpToDate => (Outcome::UpToDate, Some(served)),
                Decision::Newer(v) => (Outcome::KeptNewer(v), Some(served)),
                Decision::Apply => (Outcome::Updated, None),
            },
        };
        let current =
            match current {
                Some(c) => c,
                None => apply(&api, &desired, &name, ours).await.map_err(|error| {
                    EstablishError::Write {
                        name: name.clone(),
                        error,
                    }
                })?,
            };
        wait_established(&api, &name, current, deadline, timing).await?;
        info!(crd = %name, outcome = %outcome, "CRD established");
        report(&name, &outcome);
        done.push((name, outcome));
    }
    Ok(done)
}

/// Until `Established`, looking again every `timing.poll`; a failed read
/// is retried until the deadline (the API server may be restarting).
async fn wait_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    mut current: CustomResourceDefinition,
    deadline: Instant,
    timing: Timing,
) -> Result<(), EstablishError> {
    loop {
        let last = match established(&current) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() + timing.poll > deadline {
            return Err(EstablishError::NotEstablished {
                name: name.into(),
                timeout: timing.timeout,
                last,
            });
        }
        tokio::time::sleep(timing.poll).await;
        match api.get_opt(name).await {
            Ok(Some(c)) => current = c,
            // Another client deleted it meanwhile: nothing will establish it.
            Ok(None) => {
                return Err(EstablishError::NotEstablished {
                    name: name.into(),
                    timeout: timing.timeout,
                    last: "deleted while waiting".into(),
                })
            }
            Err(e) => warn!(crd = %name, error = %e, "cannot read the CRD; retrying"),
        }
    }
}

/// The subcommand: connect, apply, one line per CRD on stdout.
pub async fn run(timeout: Duration) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (client, url) = crate::run::client().await?;
    apply_and_wait(&client, Timing::new(timeout), &mut |name, outcome| {
        println!("customresourcedefinition/{name} {outcome}")
    })
    .await
    .with_context(|| format!("cannot bring the CRDs up to date at {url}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd_manage::VERSION_ANNOTATION;
    use crate::fake_api::FakeApi;
    use serde_json::{json, Value};

    const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

    fn path(name: &str) -> String {
        format!("{CRDS}/{name}")
    }

    fn established_status() -> Value {
        json!({
            "acceptedNames": {"kind": "X", "plural": "xs"},
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
            ]
        })
    }

    /// Every generated CRD served and Established, as the API server
    /// returns it (defaults added); `edit` changes each before it is stored.
    fn serve_all(fake: &FakeApi, edit: impl Fn(&mut Value)) {
        for crd in crate::crdgen::crds() {
            let mut v = serde_json::to_value(&crd).expect("json");
            v["spec"]["conversion"] = json!({"strategy": "None"});
            v["status"] = established_status();
            edit(&mut v);
            fake.insert(&path(crd.metadata.name.as_deref().expect("name")), v);
        }
    }

    /// Plays the API server's CRD controller: Establishes what is created.
    fn establish_in_background(fake: &FakeApi) -> tokio::task::JoinHandle<()> {
        let fake = fake.clone();
        tokio::spawn(async move {
            loop {
                for name in crate::crd_manage::crd_names() {
                    if fake
                        .object(&path(&name))
                        .is_some_and(|o| o.get("status").is_none())
                    {
                        fake.set_status(&path(&name), established_status());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    fn quick(timeout_ms: u64) -> Timing {
        Timing {
            timeout: Duration::from_millis(timeout_ms),
            poll: Duration::from_millis(20),
        }
    }

    async fn run_it(
        client: &Client,
        timing: Timing,
    ) -> (Result<Vec<(String, Outcome)>, EstablishError>, Vec<String>) {
        let mut lines = Vec::new();
        let r = apply_and_wait(client, timing, &mut |name, outcome| {
            lines.push(format!("{name} {outcome}"))
        })
        .await;
        (r, lines)
    }

    fn crd_writes(fake: &FakeApi) -> Vec<String> {
        fake.calls()
            .iter()
            .filter(|c| c.is_write())
            .map(|c| format!("{} {}", c.method, c.path.trim_start_matches(CRDS)))
            .collect()
    }

    #[tokio::test]
    async fn missing_crds_are_created_and_awaited_until_established() {
        let (client, fake) = FakeApi::start();
        let controller = establish_in_background(&fake);
        let (r, lines) = run_it(&client, quick(5_000)).await;
        controller.abort();
        r.expect("applied");
        assert_eq!(
            lines,
            [
                "dragonflyclusters.p2p.dragonfly.dev created",
                "preheats.p2p.dragonfly.dev created"
            ]
        );
        assert_eq!(
            crd_writes(&fake),
            [
                "PATCH /dragonflyclusters.p2p.dragonfly.dev",
                "PATCH /preheats.p2p.dragonfly.dev"
            ]
        );
        // Server-side apply, forced, by the operator's own field manager:
        // the operator's later applies own the same fields.
        for c in fake.calls().iter().filter(|c| c.is_write()) {
            assert!(
                c.query.contains("fieldManager=dragonfly-operator"),
                "{}",
                c.query
            );
            assert!(c.query.contains("force=true"), "{}", c.query);
        }
        let stored = fake
            .object(&path("preheats.p2p.dragonfly.dev"))
            .expect("created");
        assert_eq!(
            stored["metadata"]["annotations"][VERSION_ANNOTATION],
            env!("CARGO_PKG_VERSION")
        );
    }

    #[tokio::test]
    async fn current_crds_are_reported_up_to_date_without_a_write() {
        let (client, fake) = FakeApi::start();
        serve_all(&fake, |_| {});
        let (r, lines) = run_it(&client, quick(2_000)).await;
        let done = r.expect("applied");
        assert!(
            done.iter().all(|(_, o)| *o == Outcome::UpToDate),
            "{done:?}"
        );
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" up to date"), "{lines:?}");
        assert!(crd_writes(&fake).is_empty(), "{:?}", crd_writes(&fake));
    }

    #[tokio::test]
    async fn a_crd_lacking_a_field_is_updated_and_the_other_left_alone() {
        let (client, fake) = FakeApi::start();
        serve_all(&fake, |v| {
            if v["spec"]["names"]["plural"] == "dragonflyclusters" {
                let spec = &mut v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
                    ["spec"]["properties"]["dfdaemon"]["properties"];
                if let Some(props) = spec.as_object_mut() {
                    props.remove("gcHighWatermark");
                }
            }
        });
        let (r, lines) = run_it(&client, quick(2_000)).await;
        r.expect("applied");
        assert_eq!(
            lines,
            [
                "dragonflyclusters.p2p.dragonfly.dev updated",
                "preheats.p2p.dragonfly.dev up to date"
            ]
        );
        assert_eq!(
            crd_writes(&fake),
            ["PATCH /dragonflyclusters.p2p.dragonfly.dev"]
        );
        let stored = fake
            .object(&path("dragonflyclusters.p2p.dragonfly.dev"))
            .expect("served");
        assert!(
            stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                ["properties"]["dfdaemon"]["properties"]
                .get("gcHighWatermark")
                .is_some()
        );
    }

    #[tokio::test]
    async fn crds_of_a_newer_operator_are_kept() {
        let (client, fake) = FakeApi::start();
        serve_all(&fake, |v| {
            v["metadata"]["annotations"] = json!({VERSION_ANNOTATION: "999.0.0"});
            v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = json!("newer");
        });
        let (r, lines) = run_it(&client, quick(2_000)).await;
        r.expect("a downgrade is not an error");
        assert!(
            lines
                .iter()
                .all(|l| l.ends_with("kept (applied by the newer operator 999.0.0)")),
            "{lines:?}"
        );
        assert!(crd_writes(&fake).is_empty());
    }

    #[tokio::test]
    async fn a_crd_never_established_fails_with_its_conditions() {
        let (client, fake) = FakeApi::start();
        serve_all(&fake, |v| {
            v["status"] = json!({"conditions": [
                {"type": "NamesAccepted", "status": "False", "reason": "MultipleNamesConflict",
                 "message": "\"dfc\" is already in use"},
                {"type": "Established", "status": "False", "reason": "NotAccepted"}
            ]});
        });
        let (r, lines) = run_it(&client, quick(300)).await;
        let e = r.expect_err("never established");
        assert!(matches!(e, EstablishError::NotEstablished { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("CRD dragonflyclusters.p2p.dragonfly.dev not Established within ")
                && msg.ends_with(
                    ": NamesAccepted=False (\"dfc\" is already in use), Established=False"
                ),
            "{msg}"
        );
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[tokio::test]
    async fn a_created_crd_without_status_times_out() {
        let (client, _fake) = FakeApi::start();
        let (r, _) = run_it(&client, quick(200)).await;
        let msg = r.expect_err("nothing establishes it").to_string();
        assert!(msg.contains("not Established"), "{msg}");
        assert!(msg.ends_with(": no conditions yet"), "{msg}");
    }

    #[tokio::test]
    async fn a_refused_write_fails_naming_the_crd_and_the_rbac_it_needs() {
        let (client, fake) = FakeApi::start();
        fake.fail_next("PATCH", "customresourcedefinitions", 403);
        let (r, lines) = run_it(&client, quick(2_000)).await;
        let e = r.expect_err("forbidden");
        assert!(matches!(e, EstablishError::Write { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("cannot apply CRD dragonflyclusters.p2p.dragonfly.dev: "),
            "{msg}"
        );
        assert!(msg.contains("injected failure"), "{msg}");
        assert!(msg.contains("RBAC: patch"), "{msg}");
        assert!(lines.is_empty());
    }

    #[tokio::test]
    async fn a_refused_read_fails_before_any_write() {
        let (client, fake) = FakeApi::start();
        fake.fail_next("GET", "customresourcedefinitions", 403);
        let (r, _) = run_it(&client, quick(2_000)).await;
        let e = r.expect_err("forbidden");
        assert!(matches!(e, EstablishError::Read { .. }), "{e}");
        assert!(e.to_string().contains("RBAC: get"), "{e}");
        assert!(crd_writes(&fake).is_empty());
    }

    #[tokio::test]
    async fn a_failed_read_while_waiting_is_retried() {
        let (client, fake) = FakeApi::start();
        // The first read answers as the API server would (not there); the
        // next, while waiting for the created CRD, fails.
        fake.fail_next("GET", "dragonflyclusters", 404);
        fake.fail_next("GET", "dragonflyclusters", 500);
        let controller = establish_in_background(&fake);
        let (r, lines) = run_it(&client, quick(5_000)).await;
        controller.abort();
        r.expect("applied");
        assert_eq!(lines.len(), 2);
        let reads = fake
            .calls()
            .iter()
            .filter(|c| {
                c.method == "GET" && c.path.ends_with("/dragonflyclusters.p2p.dragonfly.dev")
            })
            .count();
        assert!(reads >= 3, "{reads} reads");
    }

    #[test]
    fn established_reads_the_condition() {
        let mut crd = crate::crdgen::crds().remove(0);
        assert_eq!(established(&crd), Err("no conditions yet".into()));
        let mut v = serde_json::to_value(&crd).expect("json");
        v["status"] = established_status();
        crd = serde_json::from_value(v).expect("crd");
        assert_eq!(established(&crd), Ok(()));
    }
}
