//! Leader election over a `coordination.k8s.io` Lease, as client-go does it:
//! every replica has its own identity (the pod name), which is both the
//! Lease's `holderIdentity` and the field manager of its writes, and every
//! acquisition is a conditional write, a create (fails if the Lease exists)
//! or a replace carrying the `resourceVersion` that was read (fails with 409
//! if anyone wrote in between). So of two replicas racing for a free or
//! expired Lease, exactly one wins. A blind server-side apply with force
//! would let both "win", each overwriting the other.
//!
//! Expiry is judged on this replica's clock only: a Lease is free once its
//! record has not changed for `leaseDurationSeconds` since this replica
//! first saw it, so clock skew between nodes never matters.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

/// Field managers longer than this are refused by the API server.
const MAX_FIELD_MANAGER: usize = 128;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica: see [`identity`].
    pub identity: String,
    /// How long a Lease stays held without renewal.
    pub duration: Duration,
    /// A leader that could not renew for this long steps down (before
    /// `duration` runs out, so two leaders never overlap).
    pub renew_deadline: Duration,
    /// Between attempts, leading or not.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn field_manager(&self) -> String {
        self.identity.chars().take(MAX_FIELD_MANAGER).collect()
    }
}

/// This replica's identity: the pod name from the downward API (`POD_NAME`),
/// else the hostname with a random suffix (two processes on one host, or a
/// container whose hostname is shared, must still differ).
pub fn identity() -> String {
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok());
    identity_from(std::env::var("POD_NAME").ok(), hostname, random_suffix())
}

pub fn identity_from(pod_name: Option<String>, hostname: Option<String>, suffix: u64) -> String {
    let given = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    match given(pod_name) {
        Some(pod) => pod,
        None => format!(
            "{}-{:08x}",
            given(hostname).unwrap_or_else(|| "dragonfly-operator".into()),
            suffix & 0xffff_ffff
        ),
    }
}

/// Random without a dependency: std's hasher keys are random per process.
fn random_suffix() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// What one round decided to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, holding it.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free (released, or expired on our clock): take it over.
    TakeOver,
    /// Someone else holds it.
    Wait { holder: String },
}

/// The pure decision. `unchanged_for`: how long this replica has seen the
/// Lease record unchanged (None: just changed, or first look).
pub fn decide(
    lease: Option<&Lease>,
    me: &str,
    unchanged_for: Option<Duration>,
    default_duration: Duration,
) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == me {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(default_duration);
    match unchanged_for {
        Some(d) if d >= duration => Step::TakeOver,
        _ => Step::Wait { holder },
    }
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The Lease record as last seen (its resourceVersion) and since when.
    observed: Option<(String, Instant)>,
    last_renewed: Option<Instant>,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            last_renewed: None,
        }
    }

    /// Reads the Lease and notes when its record last changed.
    pub async fn read(&mut self, now: Instant) -> Result<Option<Lease>, kube::Error> {
        let lease = self.api.get_opt(&self.cfg.name).await?;
        let rv = lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        match (&self.observed, rv) {
            (Some((seen, _)), Some(rv)) if *seen == rv => {}
            (_, Some(rv)) => self.observed = Some((rv, now)),
            (_, None) => self.observed = None,
        }
        Ok(lease)
    }

    /// Acts on a Lease as read: true when this replica holds it afterwards.
    /// A lost race (409) is not an error: someone else leads.
    pub async fn act(&mut self, lease: Option<Lease>, now: Instant) -> Result<bool, kube::Error> {
        let unchanged_for = self
            .observed
            .as_ref()
            .map(|(_, at)| now.saturating_duration_since(*at));
        let step = decide(
            lease.as_ref(),
            &self.cfg.identity,
            unchanged_for,
            self.cfg.duration,
        );
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(self.cfg.field_manager()),
        };
        let stamp = Some(MicroTime(Timestamp::now()));
        let result = match (&step, lease) {
            (Step::Wait { holder }, _) => {
                debug!(%holder, "lease held by another replica");
                return Ok(false);
            }
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.cfg.identity.clone()),
                        lease_duration_seconds: Some(self.duration_secs()),
                        acquire_time: stamp.clone(),
                        renew_time: stamp,
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&pp, &lease).await
            }
            (Step::Renew | Step::TakeOver, Some(mut lease)) => {
                let mut spec = lease.spec.take().unwrap_or_default();
                if step == Step::TakeOver {
                    let had_holder = spec
                        .holder_identity
                        .as_deref()
                        .is_some_and(|h| !h.is_empty());
                    spec.holder_identity = Some(self.cfg.identity.clone());
                    spec.acquire_time = stamp.clone();
                    spec.lease_duration_seconds = Some(self.duration_secs());
                    let transitions = spec.lease_transitions.unwrap_or(0);
                    spec.lease_transitions = Some(if had_holder {
                        transitions.saturating_add(1)
                    } else {
                        transitions
                    });
                }
                spec.renew_time = stamp;
                lease.spec = Some(spec);
                // `lease.metadata.resourceVersion` is the one read: a replace
                // with it fails with 409 if the Lease changed since.
                self.api.replace(&self.cfg.name, &pp, &lease).await
            }
            (Step::Renew | Step::TakeOver, None) => return Ok(false),
        };
        match result {
            Ok(written) => {
                if step != Step::Renew {
                    info!(identity = %self.cfg.identity, lease = %self.cfg.name, "acquired the leader lease");
                }
                self.observed = written.metadata.resource_version.map(|rv| (rv, now));
                self.last_renewed = Some(now);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(?step, "lost the race for the lease");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// One round: read, then act.
    pub async fn round(&mut self, now: Instant) -> Result<bool, kube::Error> {
        let lease = self.read(now).await?;
        self.act(lease, now).await
    }

    /// Gives the Lease up, if still ours, so a standby takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(self.cfg.field_manager()),
        };
        match self.api.replace(&self.cfg.name, &pp, &lease).await {
            Ok(_) => Ok(()),
            // Someone wrote it meanwhile: it is not ours to release any more.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.cfg.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Whether a leader whose last round failed must step down now.
    fn past_renew_deadline(&self, now: Instant) -> bool {
        self.last_renewed
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.renew_deadline)
    }
}

/// Campaigns and renews in the background. The receiver says whether this
/// replica leads; dropping every receiver releases the Lease and ends the task.
pub fn spawn(mut elector: Elector) -> (watch::Receiver<bool>, JoinHandle<Result<(), kube::Error>>) {
    let (tx, rx) = watch::channel(false);
    let span = info_span!("leader", identity = %elector.cfg.identity, lease = %elector.cfg.name);
    let task = tokio::spawn(
        async move {
            loop {
                let now = Instant::now();
                // Bounded: a hung API call must not keep a leader leading past its deadline.
                let round = tokio::time::timeout(elector.cfg.renew_deadline, elector.round(now));
                let result = match round.await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {:?}", elector.cfg.renew_deadline)),
                };
                let leading = match result {
                    Ok(l) => l,
                    Err(e) => {
                        let was = *tx.borrow();
                        // A leader keeps leading through brief API trouble, not past the deadline.
                        let still = was && !elector.past_renew_deadline(Instant::now());
                        warn!(%e, leading = still, "leader election round failed");
                        still
                    }
                };
                tx.send_if_modified(|l| std::mem::replace(l, leading) != leading);
                tokio::select! {
                    _ = tokio::time::sleep(elector.cfg.retry_period) => {}
                    _ = tx.closed() => break,
                }
            }
            if *tx.borrow() {
                elector.release().await?;
            }
            Ok(())
        }
        .instrument(span),
    );
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::FakeApi;
    use serde_json::json;

    const LEASE_PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/dragonfly-system/leases/dragonfly-operator-leader";

    fn elector(client: &Client, me: &str) -> Elector {
        Elector::new(
            client.clone(),
            LeaseConfig::new("dragonfly-system", "dragonfly-operator-leader", me),
        )
    }

    #[test]
    fn identity_is_the_pod_name_else_hostname_with_a_random_suffix() {
        assert_eq!(
            identity_from(Some("op-7d9f-abcde".into()), Some("h".into()), 1),
            "op-7d9f-abcde"
        );
        let a = identity_from(None, Some("node-1".into()), 0xdead_beef);
        assert_eq!(a, "node-1-deadbeef");
        assert_ne!(a, identity_from(Some(" ".into()), Some("node-1".into()), 7));
        assert_ne!(random_suffix(), random_suffix());
        assert!(identity_from(None, None, 1).starts_with("dragonfly-operator-"));
    }

    #[test]
    fn a_held_lease_is_free_only_after_its_duration_on_our_clock() {
        let lease = |holder: Option<&str>| Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", None, d), Step::Create);
        assert_eq!(decide(Some(&lease(Some("a"))), "a", None, d), Step::Renew);
        assert_eq!(decide(Some(&lease(None)), "a", None, d), Step::TakeOver);
        assert_eq!(decide(Some(&lease(Some(""))), "a", None, d), Step::TakeOver);
        let held = lease(Some("b"));
        let b = Some(&held);
        let wait = Step::Wait { holder: "b".into() };
        assert_eq!(decide(b, "a", None, d), wait);
        assert_eq!(decide(b, "a", Some(Duration::from_secs(14)), d), wait);
        assert_eq!(
            decide(b, "a", Some(Duration::from_secs(15)), d),
            Step::TakeOver
        );
    }

    /// Both replicas read "no Lease" and both try: one create wins, the
    /// other gets 409 and stands by. Then both see the leader's Lease
    /// expire and both try to take it over with the same resourceVersion:
    /// again exactly one wins.
    #[tokio::test]
    async fn two_replicas_racing_never_both_lead() {
        let (client, fake) = FakeApi::start();
        let mut a = elector(&client, "operator-a");
        let mut b = elector(&client, "operator-b");
        let t0 = Instant::now();

        let (seen_a, seen_b) = (
            a.read(t0).await.expect("read"),
            b.read(t0).await.expect("read"),
        );
        assert!(seen_a.is_none() && seen_b.is_none());
        let a_leads = a.act(seen_a, t0).await.expect("act");
        let b_leads = b.act(seen_b, t0).await.expect("act");
        assert!(a_leads && !b_leads, "exactly one wins the create");
        let stored = fake.object(LEASE_PATH).expect("lease");
        assert_eq!(stored["spec"]["holderIdentity"], "operator-a");

        // Held and fresh: b waits, a renews.
        assert!(!b.round(t0 + Duration::from_secs(5)).await.expect("round"));
        assert!(a.round(t0 + Duration::from_secs(5)).await.expect("round"));

        // a stalls. A third replica c and b both see it unchanged for 15 s.
        let mut c = elector(&client, "operator-c");
        let t1 = t0 + Duration::from_secs(6);
        let (seen_b, seen_c) = (
            b.read(t1).await.expect("read"),
            c.read(t1).await.expect("read"),
        );
        let t2 = t1 + Duration::from_secs(15);
        let (seen_b2, seen_c2) = (
            b.read(t2).await.expect("read"),
            c.read(t2).await.expect("read"),
        );
        assert_eq!(
            seen_b.map(|l| l.metadata.resource_version),
            seen_b2
                .as_ref()
                .map(|l| l.metadata.resource_version.clone())
        );
        assert!(seen_c.is_some());
        let b_leads = b.act(seen_b2, t2).await.expect("act");
        let c_leads = c.act(seen_c2, t2).await.expect("act");
        assert!(
            b_leads != c_leads,
            "exactly one takes over: b={b_leads} c={c_leads}"
        );
        let stored = fake.object(LEASE_PATH).expect("lease");
        let winner = if b_leads { "operator-b" } else { "operator-c" };
        assert_eq!(stored["spec"]["holderIdentity"], winner);
        assert_eq!(stored["spec"]["leaseTransitions"], 1);

        // Every write was a create or a conditional replace under the
        // writer's own field manager; never a (forced) apply.
        for call in fake.calls().iter().filter(|c| c.is_write()) {
            assert!(
                call.method == "POST" || call.method == "PUT",
                "{}",
                call.method
            );
            assert!(
                call.query.contains("fieldManager=operator-"),
                "{}",
                call.query
            );
            if call.method == "PUT" {
                let rv = call
                    .body
                    .as_ref()
                    .map(|b| b["metadata"]["resourceVersion"].clone());
                assert!(
                    rv.is_some_and(|v| v.is_string()),
                    "replace without a precondition"
                );
            }
        }

        // The old leader comes back: it sees someone else and does not lead.
        assert!(!a.round(t2).await.expect("round"));
    }

    #[tokio::test]
    async fn release_frees_the_lease_for_a_standby_at_once() {
        let (client, fake) = FakeApi::start();
        let mut a = elector(&client, "operator-a");
        let mut b = elector(&client, "operator-b");
        let t0 = Instant::now();
        assert!(a.round(t0).await.expect("round"));
        assert!(!b.round(t0).await.expect("round"));
        a.release().await.expect("release");
        assert_eq!(
            fake.object(LEASE_PATH).expect("lease")["spec"].get("holderIdentity"),
            None
        );
        assert!(
            b.round(t0).await.expect("round"),
            "no need to wait for expiry"
        );
        // Releasing a Lease that is no longer ours leaves it alone.
        a.release().await.expect("release");
        assert_eq!(
            fake.object(LEASE_PATH).expect("lease")["spec"]["holderIdentity"],
            json!("operator-b")
        );
    }
}
