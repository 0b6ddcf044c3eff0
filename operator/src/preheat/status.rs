//! Preheat status: transitions (Pending → Running → Succeeded | Failed),
//! conditions, and progress aggregated from what the peers report. Pure:
//! every transition is tested from values.
//!
//! A finished Preheat (Succeeded or Failed at the current generation) is
//! never run again; a spec change (new generation) starts a fresh run.

use std::collections::HashMap;

use bytesize::ByteSize;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::crd::{
    BlobStatus, ImageStatus, ItemState, ManifestStatus, Phase, PreheatSpec, PreheatStatus,
    Progress, UrlStatus,
};
use super::execute::{Outcome, Owner, Plan, Report};
use super::resolve::Resolution;

pub const RESOLVED: &str = "Resolved";
pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
/// Bound on any message written to the status.
const MAX_MESSAGE: usize = 1000;
/// Blobs listed one by one in the status; the rest are only counted, so a
/// Preheat of many large images stays far below the object size limit.
pub const MAX_LISTED_BLOBS: usize = 20;
/// Bound on a listed blob's message.
const MAX_BLOB_MESSAGE: usize = 300;

/// What a reconcile should do with a Preheat as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Finished at this generation: nothing but its TTL.
    Finished,
    /// New, or its spec changed: start over.
    Start,
    /// Keep going.
    Continue,
}

pub fn next(status: Option<&PreheatStatus>, generation: Option<i64>) -> Next {
    match status {
        Some(s) if s.observed_generation == generation && s.phase.is_finished() => Next::Finished,
        Some(s) if s.observed_generation == generation => Next::Continue,
        _ => Next::Start,
    }
}

/// A fresh run of `generation`: every entry listed, nothing resolved yet.
pub fn start(spec: &PreheatSpec, generation: Option<i64>, now: &Time) -> PreheatStatus {
    let mut st = PreheatStatus {
        observed_generation: generation,
        phase: Phase::Pending,
        message: "resolving images".into(),
        start_time: Some(now.clone()),
        images: spec
            .images
            .iter()
            .map(|r| ImageStatus {
                reference: r.clone(),
                ..ImageStatus::default()
            })
            .collect(),
        urls: spec
            .urls
            .iter()
            .map(|u| UrlStatus {
                url: u.url.clone(),
                ..UrlStatus::default()
            })
            .collect(),
        ..PreheatStatus::default()
    };
    if spec.images.is_empty() {
        st.message = "starting downloads".into();
        set_condition(
            &mut st,
            RESOLVED,
            true,
            "NoImages",
            "only files to download",
            now,
        );
    } else {
        set_condition(
            &mut st,
            RESOLVED,
            false,
            "Resolving",
            "resolving image references",
            now,
        );
    }
    set_condition(&mut st, COMPLETE, false, "Pending", "not started", now);
    set_condition(&mut st, FAILED, false, "Pending", "", now);
    set_progress(&mut st.progress, 0, 0, 0, 0);
    st
}

/// Every image resolved: the run is Running. The status keeps per-manifest
/// counts; the blob lists stay with the caller.
pub fn resolved(st: &mut PreheatStatus, resolutions: &[Resolution], now: &Time) {
    for (img, r) in st.images.iter_mut().zip(resolutions) {
        img.digest = Some(r.digest.clone());
        img.manifests = r
            .manifests
            .iter()
            .map(|m| ManifestStatus {
                platform: m.platform.clone(),
                digest: m.digest.clone(),
                blob_count: count(m.blobs.len()),
                bytes: m.blobs.iter().map(|b| b.size.max(0)).sum(),
            })
            .collect();
        img.state = ItemState::Running;
        img.blobs_total = count(r.manifests.iter().map(|m| m.blobs.len()).sum());
    }
    let n = st.images.len();
    set_condition(
        st,
        RESOLVED,
        true,
        "Resolved",
        &format!("{n} image(s) resolved to digests"),
        now,
    );
    st.phase = Phase::Running;
    st.message = "starting downloads".into();
    st.retries = 0;
}

/// True once `resolved` ran for this generation (or there is nothing to resolve).
pub fn is_resolved(st: &PreheatStatus) -> bool {
    st.images.is_empty() || st.images.iter().all(|i| i.digest.is_some())
}

/// Ends the run as Failed. `item` marks the entry the failure is about.
pub fn fail(st: &mut PreheatStatus, reason: &str, message: &str, item: Option<Owner>, now: &Time) {
    let message = clip(message);
    match item {
        Some(Owner::Image(i)) => {
            if let Some(img) = st.images.get_mut(i) {
                img.state = ItemState::Failed;
                img.message = message.clone();
            }
        }
        Some(Owner::Url(u)) => {
            if let Some(url) = st.urls.get_mut(u) {
                url.state = ItemState::Failed;
                url.message = message.clone();
            }
        }
        None => {}
    }
    st.phase = Phase::Failed;
    st.completion_time = Some(now.clone());
    st.message = message.clone();
    set_condition(st, FAILED, true, reason, &message, now);
    set_condition(st, COMPLETE, false, "Failed", "the preheat failed", now);
}

/// An error that waiting may fix (registry or peers unreachable, no ready
/// peer yet). Counts one attempt; past `limit` attempts the run fails.
/// Returns true when it failed.
pub fn transient(
    st: &mut PreheatStatus,
    limit: i32,
    reason: &str,
    message: &str,
    now: &Time,
) -> bool {
    st.retries = st.retries.saturating_add(1);
    if st.retries > limit {
        let attempts = st.retries;
        fail(
            st,
            reason,
            &format!("{message} (gave up after {attempts} attempts)"),
            None,
            now,
        );
        return true;
    }
    st.message = clip(&format!(
        "retrying ({}/{}): {message}",
        st.retries,
        limit.saturating_add(1)
    ));
    false
}

/// What a tick changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Failed,
    /// Still going; `troubled` when this tick saw errors without progress.
    Running {
        troubled: bool,
    },
}

/// Folds one tick's report into the status: progress overall, per image
/// and per file; then success, failure or another attempt.
pub fn apply_tick(
    st: &mut PreheatStatus,
    plan: &Plan,
    targets: &[String],
    report: &Report,
    limit: i32,
    now: &Time,
) -> Verdict {
    let before = (st.progress.blobs_done, st.progress.bytes_done);
    st.targets = targets.iter().take(100).cloned().collect();

    // (done, total, bytes done, bytes total) per owner and overall.
    let mut per: HashMap<Owner, (i32, i32, i64, i64)> = HashMap::new();
    let mut all = (0i32, 0i32, 0i64, 0i64);
    for d in &plan.downloads {
        for t in targets {
            let (done, bytes_done, bytes_total) =
                match report.outcomes.get(&(t.clone(), d.key.clone())) {
                    Some(Outcome::Done { bytes }) => {
                        let b = d.size.unwrap_or(*bytes);
                        (1, b, b)
                    }
                    Some(Outcome::Running { bytes_done, total }) => {
                        (0, *bytes_done, d.size.or(*total).unwrap_or(0))
                    }
                    _ => (0, 0, d.size.unwrap_or(0)),
                };
            for o in &d.owners {
                let e = per.entry(*o).or_default();
                *e = (e.0 + done, e.1 + 1, e.2 + bytes_done, e.3 + bytes_total);
            }
            all = (
                all.0 + done,
                all.1 + 1,
                all.2 + bytes_done,
                all.3 + bytes_total,
            );
        }
    }
    set_progress(&mut st.progress, all.0, all.1, all.2, all.3);
    (st.blobs, st.blobs_omitted) = blob_list(plan, targets, report);
    for (i, img) in st.images.iter_mut().enumerate() {
        let (done, total, bd, bt) = per.get(&Owner::Image(i)).copied().unwrap_or_default();
        (
            img.blobs_done,
            img.blobs_total,
            img.bytes_done,
            img.bytes_total,
        ) = (done, total, bd, bt);
        if img.state == ItemState::Running && done == total {
            img.state = ItemState::Succeeded;
        }
    }
    for (u, url) in st.urls.iter_mut().enumerate() {
        let (done, total, bd, bt) = per.get(&Owner::Url(u)).copied().unwrap_or_default();
        (url.bytes_done, url.bytes_total) = (bd, bt);
        url.state = if total > 0 && done == total {
            ItemState::Succeeded
        } else {
            ItemState::Running
        };
    }
    // An image is complete only with its manifests held too.
    let manifests_total = plan.manifests.len() * targets.len();
    let manifests_done = report.manifests_done >= manifests_total;
    if !manifests_done {
        for (i, img) in st.images.iter_mut().enumerate() {
            if img.state == ItemState::Succeeded && plan.manifests.iter().any(|m| m.image == i) {
                img.state = ItemState::Running;
            }
        }
    }

    let errors = report.errors();
    if let Some((_, reason, message)) = errors.iter().find(|(permanent, _, _)| *permanent) {
        let item = plan
            .downloads
            .iter()
            .find(|d| message.contains(&d.label))
            .and_then(|d| d.owners.first().copied());
        fail(st, reason, message, item, now);
        return Verdict::Failed;
    }
    if all.0 == all.1 && manifests_done && !targets.is_empty() {
        st.phase = Phase::Succeeded;
        st.completion_time = Some(now.clone());
        st.retries = 0;
        st.message = format!(
            "{} blob(s), {} on {} peer(s)",
            all.1,
            ByteSize(u64::try_from(all.3).unwrap_or(0)),
            targets.len()
        );
        let msg = st.message.clone();
        set_condition(st, COMPLETE, true, "Succeeded", &msg, now);
        set_condition(st, FAILED, false, "Succeeded", "", now);
        return Verdict::Succeeded;
    }
    st.phase = Phase::Running;
    let progressed = all.0 > before.0 || all.2 > before.1;
    let status_line = format!(
        "downloading: {} blobs, {} on {} peer(s)",
        st.progress.blobs,
        st.progress.bytes,
        targets.len()
    );
    match errors.first() {
        Some((_, reason, message)) if !progressed => {
            if transient(st, limit, reason, message, now) {
                return Verdict::Failed;
            }
            Verdict::Running { troubled: true }
        }
        Some((_, _, message)) => {
            st.retries = 0;
            st.message = clip(&format!("{status_line}; retrying: {message}"));
            Verdict::Running { troubled: false }
        }
        None => {
            st.retries = 0;
            st.message = status_line;
            Verdict::Running { troubled: false }
        }
    }
}

/// The short list of blobs for the status: every image blob's state across
/// the targets, the ones needing attention first (failed, then retrying,
/// then in progress, then pending, then done), at most [`MAX_LISTED_BLOBS`]; and how many
/// were left out.
fn blob_list(plan: &Plan, targets: &[String], report: &Report) -> (Vec<BlobStatus>, i32) {
    let mut all: Vec<BlobStatus> = plan
        .downloads
        .iter()
        .filter(|d| d.owners.iter().any(|o| matches!(o, Owner::Image(_))))
        .map(|d| {
            let mut b = BlobStatus {
                digest: d.key.clone(),
                size: d.size.unwrap_or(0),
                ..BlobStatus::default()
            };
            let mut failed = false;
            let mut retrying = false;
            for t in targets {
                match report.outcomes.get(&(t.clone(), d.key.clone())) {
                    Some(Outcome::Done { bytes }) => {
                        b.peers_done += 1;
                        b.bytes_done += d.size.unwrap_or(*bytes);
                    }
                    Some(Outcome::Running { bytes_done, .. }) => b.bytes_done += bytes_done,
                    Some(Outcome::Failed {
                        permanent, message, ..
                    }) => {
                        failed |= *permanent;
                        retrying |= !*permanent;
                        if b.message.is_empty() {
                            b.message = clip_to(message, MAX_BLOB_MESSAGE);
                        }
                    }
                    None => {}
                }
            }
            b.state = if failed {
                ItemState::Failed
            } else if !targets.is_empty() && b.peers_done == count(targets.len()) {
                ItemState::Succeeded
            } else if retrying || b.peers_done > 0 || b.bytes_done > 0 {
                ItemState::Running
            } else {
                ItemState::Pending
            };
            b
        })
        .collect();
    // A blob being retried (running, with an error) is more telling than one
    // merely progressing.
    let rank = |b: &BlobStatus| match b.state {
        ItemState::Failed => 0,
        ItemState::Running if !b.message.is_empty() => 1,
        ItemState::Running => 2,
        ItemState::Pending => 3,
        ItemState::Succeeded => 4,
    };
    // Stable: plan order (config first, then layers) within a rank.
    all.sort_by_key(rank);
    let omitted = count(all.len().saturating_sub(MAX_LISTED_BLOBS));
    all.truncate(MAX_LISTED_BLOBS);
    (all, omitted)
}

fn set_progress(p: &mut Progress, done: i32, total: i32, bytes_done: i64, bytes_total: i64) {
    let b = |n: i64| ByteSize(u64::try_from(n).unwrap_or(0));
    *p = Progress {
        blobs_done: done,
        blobs_total: total,
        bytes_done,
        bytes_total,
        blobs: format!("{done}/{total}"),
        bytes: format!("{}/{}", b(bytes_done), b(bytes_total)),
    };
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn clip(s: &str) -> String {
    clip_to(s, MAX_MESSAGE)
}

fn clip_to(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        s.chars().take(max).collect::<String>() + "…"
    } else {
        s.to_string()
    }
}

/// Sets a condition; its transition time moves only when its status flips.
pub fn set_condition(
    st: &mut PreheatStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: &Time,
) {
    let status = if ok { "True" } else { "False" }.to_string();
    let last_transition_time = st
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let new = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: clip(message),
        observed_generation: st.observed_generation,
        last_transition_time,
    };
    match st.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(slot) => *slot = new,
        None => st.conditions.push(new),
    }
}

pub fn condition<'a>(st: &'a PreheatStatus, type_: &str) -> Option<&'a Condition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preheat::crd::UrlSource;
    use crate::preheat::execute::{Download, ManifestFetch};
    use crate::preheat::resolve::{BlobRef, ResolvedManifest};
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid time"))
    }

    fn spec() -> PreheatSpec {
        PreheatSpec {
            cluster: "dragonfly".into(),
            images: vec!["r.example.com/app:v1".into()],
            urls: vec![UrlSource {
                url: "https://f.example.com/x".into(),
                digest: None,
            }],
            backoff_limit: 2,
            ..PreheatSpec::default()
        }
    }

    fn resolution() -> Resolution {
        Resolution {
            digest: "sha256:idx".into(),
            manifests: vec![ResolvedManifest {
                platform: Some("linux/amd64".into()),
                digest: "sha256:m".into(),
                blobs: vec![
                    BlobRef {
                        digest: "sha256:a".into(),
                        size: 100,
                    },
                    BlobRef {
                        digest: "sha256:b".into(),
                        size: 300,
                    },
                ],
            }],
        }
    }

    fn plan() -> Plan {
        let blob = |k: &str, size| Download {
            key: k.into(),
            url: format!("http://r/v2/app/blobs/{k}"),
            digest: Some(k.into()),
            size: Some(size),
            auth_from: Some(0),
            owners: vec![Owner::Image(0)],
            label: format!("blob {k} of image r.example.com/app:v1"),
        };
        Plan {
            manifests: vec![ManifestFetch {
                image: 0,
                registry: "https://r".into(),
                repository: "app".into(),
                reference: "v1".into(),
            }],
            downloads: vec![
                blob("sha256:a", 100),
                blob("sha256:b", 300),
                Download {
                    key: "https://f.example.com/x".into(),
                    url: "https://f.example.com/x".into(),
                    digest: None,
                    size: None,
                    auth_from: None,
                    owners: vec![Owner::Url(0)],
                    label: "file https://f.example.com/x".into(),
                },
            ],
        }
    }

    fn report(outcomes: &[(&str, &str, Outcome)], manifests_done: usize) -> Report {
        Report {
            outcomes: outcomes
                .iter()
                .map(|(t, k, o)| ((t.to_string(), k.to_string()), o.clone()))
                .collect(),
            manifests_done,
            manifest_errors: vec![],
        }
    }

    fn running(st: &mut PreheatStatus) {
        resolved(st, &[resolution()], &t(20));
    }

    const PEERS: &[&str] = &["seed-0", "seed-1"];

    fn peers() -> Vec<String> {
        PEERS.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_finished_preheat_is_never_redone_until_its_spec_changes() {
        assert_eq!(next(None, Some(1)), Next::Start);
        let mut st = start(&spec(), Some(1), &t(10));
        assert_eq!(next(Some(&st), Some(1)), Next::Continue);
        st.phase = Phase::Running;
        assert_eq!(next(Some(&st), Some(1)), Next::Continue);
        for phase in [Phase::Succeeded, Phase::Failed] {
            st.phase = phase;
            assert_eq!(next(Some(&st), Some(1)), Next::Finished);
            assert_eq!(next(Some(&st), Some(2)), Next::Start, "spec changed");
        }
    }

    #[test]
    fn start_lists_every_entry_pending() {
        let st = start(&spec(), Some(3), &t(10));
        assert_eq!(st.phase, Phase::Pending);
        assert_eq!(st.observed_generation, Some(3));
        assert_eq!(st.start_time, Some(t(10)));
        assert_eq!(st.images[0].state, ItemState::Pending);
        assert_eq!(st.urls[0].url, "https://f.example.com/x");
        assert_eq!(st.progress.blobs, "0/0");
        assert_eq!(
            condition(&st, RESOLVED).map(|c| c.status.as_str()),
            Some("False")
        );
        assert!(!is_resolved(&st));
    }

    #[test]
    fn files_only_need_no_resolving() {
        let mut s = spec();
        s.images.clear();
        let st = start(&s, Some(1), &t(10));
        assert!(is_resolved(&st));
        let c = condition(&st, RESOLVED).expect("resolved");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "NoImages"));
    }

    #[test]
    fn resolved_runs_and_progress_adds_up_per_peer() {
        let mut st = start(&spec(), Some(1), &t(10));
        running(&mut st);
        assert!(is_resolved(&st));
        assert_eq!(st.phase, Phase::Running);
        assert_eq!(st.images[0].digest.as_deref(), Some("sha256:idx"));
        assert_eq!(
            condition(&st, RESOLVED).map(|c| c.status.as_str()),
            Some("True")
        );

        let r = report(
            &[
                ("seed-0", "sha256:a", Outcome::Done { bytes: 100 }),
                (
                    "seed-0",
                    "sha256:b",
                    Outcome::Running {
                        bytes_done: 50,
                        total: Some(300),
                    },
                ),
                (
                    "seed-1",
                    "sha256:a",
                    Outcome::Running {
                        bytes_done: 10,
                        total: None,
                    },
                ),
                (
                    "seed-0",
                    "https://f.example.com/x",
                    Outcome::Running {
                        bytes_done: 5,
                        total: Some(1000),
                    },
                ),
            ],
            1,
        );
        let v = apply_tick(&mut st, &plan(), &peers(), &r, 2, &t(30));
        assert_eq!(v, Verdict::Running { troubled: false });
        let p = &st.progress;
        // 3 downloads on 2 peers; the file's size is known from one peer only.
        assert_eq!((p.blobs_done, p.blobs_total), (1, 6));
        assert_eq!(
            (p.bytes_done, p.bytes_total),
            (100 + 50 + 10 + 5, 2 * 400 + 1000)
        );
        assert_eq!(p.blobs, "1/6");
        assert_eq!(p.bytes, format!("{}/{}", ByteSize(165), ByteSize(1800)));
        let img = &st.images[0];
        assert_eq!(
            (
                img.blobs_done,
                img.blobs_total,
                img.bytes_done,
                img.bytes_total
            ),
            (1, 4, 160, 800)
        );
        assert_eq!(st.urls[0].bytes_total, 1000);
        assert_eq!(st.targets, peers());
        assert!(
            st.message.starts_with("downloading: 1/6 blobs"),
            "{}",
            st.message
        );
    }

    #[test]
    fn succeeds_when_every_peer_holds_everything() {
        let mut st = start(&spec(), Some(1), &t(10));
        running(&mut st);
        let done = |peer, key, bytes| (peer, key, Outcome::Done { bytes });
        let all_blobs = [
            done("seed-0", "sha256:a", 100),
            done("seed-0", "sha256:b", 300),
            done("seed-0", "https://f.example.com/x", 7),
            done("seed-1", "sha256:a", 100),
            done("seed-1", "sha256:b", 300),
            done("seed-1", "https://f.example.com/x", 7),
        ];
        // Blobs are in, one manifest is still missing: not yet.
        let v = apply_tick(
            &mut st,
            &plan(),
            &peers(),
            &report(&all_blobs, 1),
            2,
            &t(30),
        );
        assert_eq!(v, Verdict::Running { troubled: false });
        assert_eq!(st.images[0].state, ItemState::Running);
        assert_eq!(st.urls[0].state, ItemState::Succeeded);

        let v = apply_tick(
            &mut st,
            &plan(),
            &peers(),
            &report(&all_blobs, 2),
            2,
            &t(40),
        );
        assert_eq!(v, Verdict::Succeeded);
        assert_eq!(st.phase, Phase::Succeeded);
        assert_eq!(st.completion_time, Some(t(40)));
        assert_eq!(st.progress.bytes_done, st.progress.bytes_total);
        assert_eq!(st.images[0].state, ItemState::Succeeded);
        let c = condition(&st, COMPLETE).expect("complete");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Succeeded")
        );
        assert_eq!(next(Some(&st), Some(1)), Next::Finished);
    }

    #[test]
    fn a_permanent_error_fails_with_its_message_and_item() {
        let mut st = start(&spec(), Some(1), &t(10));
        running(&mut st);
        let msg = "peer seed-0: blob sha256:b of image r.example.com/app:v1: unauthorised: the origin answered 401";
        let r = report(
            &[(
                "seed-0",
                "sha256:b",
                Outcome::Failed {
                    permanent: true,
                    reason: "Unauthorized",
                    message: msg.into(),
                },
            )],
            0,
        );
        assert_eq!(
            apply_tick(&mut st, &plan(), &peers(), &r, 2, &t(30)),
            Verdict::Failed
        );
        assert_eq!(st.phase, Phase::Failed);
        assert_eq!(st.message, msg);
        assert_eq!(st.images[0].state, ItemState::Failed);
        assert_eq!(st.completion_time, Some(t(30)));
        let c = condition(&st, FAILED).expect("failed");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("True", "Unauthorized", msg)
        );
        assert_eq!(
            condition(&st, COMPLETE).map(|c| c.status.as_str()),
            Some("False")
        );
    }

    #[test]
    fn transient_errors_retry_until_the_limit_unless_progress_is_made() {
        let mut st = start(&spec(), Some(1), &t(10));
        running(&mut st);
        let down = |bytes| {
            report(
                &[
                    (
                        "seed-0",
                        "sha256:a",
                        Outcome::Failed {
                            permanent: false,
                            reason: "NodeUnreachable",
                            message: "peer seed-0: node unreachable: connection refused".into(),
                        },
                    ),
                    (
                        "seed-1",
                        "sha256:a",
                        Outcome::Running {
                            bytes_done: bytes,
                            total: None,
                        },
                    ),
                ],
                0,
            )
        };
        // No progress: attempts count up.
        assert_eq!(
            apply_tick(&mut st, &plan(), &peers(), &down(0), 2, &t(30)),
            Verdict::Running { troubled: true }
        );
        assert_eq!(st.retries, 1);
        assert!(
            st.message
                .starts_with("retrying (1/3): peer seed-0: node unreachable"),
            "{}",
            st.message
        );
        apply_tick(&mut st, &plan(), &peers(), &down(0), 2, &t(31));
        assert_eq!(st.retries, 2);
        // Bytes arrived meanwhile: the counter starts over.
        assert_eq!(
            apply_tick(&mut st, &plan(), &peers(), &down(10), 2, &t(32)),
            Verdict::Running { troubled: false }
        );
        assert_eq!(st.retries, 0);
        assert!(
            st.message.contains("; retrying: peer seed-0"),
            "{}",
            st.message
        );
        for i in 0..2 {
            assert_eq!(
                apply_tick(&mut st, &plan(), &peers(), &down(10), 2, &t(40 + i)),
                Verdict::Running { troubled: true }
            );
        }
        assert_eq!(
            apply_tick(&mut st, &plan(), &peers(), &down(10), 2, &t(50)),
            Verdict::Failed
        );
        assert_eq!(st.phase, Phase::Failed);
        assert!(
            st.message
                .ends_with("node unreachable: connection refused (gave up after 3 attempts)"),
            "{}",
            st.message
        );
        assert_eq!(
            condition(&st, FAILED).map(|c| c.reason.as_str()),
            Some("NodeUnreachable")
        );
    }

    #[test]
    fn failures_before_running_name_the_image() {
        let mut st = start(&spec(), Some(1), &t(10));
        fail(
            &mut st,
            "ImageNotFound",
            "image r.example.com/app:v1: not found in the registry (MANIFEST_UNKNOWN)",
            Some(Owner::Image(0)),
            &t(11),
        );
        assert_eq!(st.phase, Phase::Failed);
        assert_eq!(st.images[0].state, ItemState::Failed);
        assert!(st.images[0].message.contains("not found in the registry"));
        assert!(!transient(
            &mut PreheatStatus::default(),
            1,
            "X",
            "y",
            &t(1)
        ));
        let mut st2 = start(&spec(), Some(1), &t(10));
        assert!(transient(
            &mut st2,
            0,
            "RegistryUnreachable",
            "registry down",
            &t(11)
        ));
        assert_eq!(
            st2.phase,
            Phase::Failed,
            "limit 0: the first transient error fails"
        );
        assert!(
            st2.message
                .contains("registry down (gave up after 1 attempts)"),
            "{}",
            st2.message
        );
    }

    #[test]
    fn condition_transition_time_moves_only_on_flips() {
        let mut st = start(&spec(), Some(1), &t(10));
        set_condition(&mut st, COMPLETE, false, "Pending", "x", &t(20));
        assert_eq!(
            condition(&st, COMPLETE).map(|c| c.last_transition_time.clone()),
            Some(t(10))
        );
        set_condition(&mut st, COMPLETE, true, "Succeeded", "y", &t(30));
        assert_eq!(
            condition(&st, COMPLETE).map(|c| c.last_transition_time.clone()),
            Some(t(30))
        );
    }

    /// 64 images (the spec's maximum) on 16 platforms with 64 blobs each:
    /// 65536 blobs, whose one-by-one list alone would be ~6 MiB, four times
    /// the 1.5 MiB an object may have. The status keeps counts and totals
    /// for everything and lists 20 blobs, the failed and unfinished first.
    #[test]
    fn status_stays_small_whatever_the_number_of_blobs() {
        let digest = |i: usize| format!("sha256:{i:064x}");
        let images: Vec<String> = (0..64)
            .map(|i| format!("r.example.com/app{i}:v1"))
            .collect();
        let spec = PreheatSpec {
            cluster: "dragonfly".into(),
            images: images.clone(),
            ..PreheatSpec::default()
        };
        let mut st = start(&spec, Some(1), &t(10));
        let mut next = 0usize;
        let resolutions: Vec<Resolution> = (0..64)
            .map(|_| Resolution {
                digest: digest(1_000_000 + next),
                manifests: (0..16)
                    .map(|p| ResolvedManifest {
                        platform: Some(format!("linux/arch{p}")),
                        digest: digest(2_000_000 + next + p),
                        blobs: (0..64)
                            .map(|_| {
                                next += 1;
                                BlobRef {
                                    digest: digest(next),
                                    size: 1 << 20,
                                }
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        resolved(&mut st, &resolutions, &t(20));
        let total = 64 * 16 * 64;
        assert_eq!(st.images.iter().map(|i| i.blobs_total).sum::<i32>(), total);
        assert_eq!(st.images[0].manifests[0].blob_count, 64);
        assert_eq!(st.images[0].manifests[0].bytes, 64 << 20);

        let downloads: Vec<Download> = (1..=next)
            .map(|i| Download {
                key: digest(i),
                url: format!("https://r.example.com/v2/app/blobs/{}", digest(i)),
                digest: Some(digest(i)),
                size: Some(1 << 20),
                auth_from: Some(0),
                owners: vec![Owner::Image((i - 1) / (16 * 64))],
                label: format!("blob {}", digest(i)),
            })
            .collect();
        let plan = Plan {
            manifests: vec![],
            downloads,
        };
        let peers: Vec<String> = (0..2)
            .map(|i| format!("dfdaemon-{i:05}-with-a-long-name"))
            .collect();
        // Most blobs done everywhere; a few in progress; two failing (late in plan order).
        let mut outcomes = Vec::new();
        for i in 1..=next {
            for p in &peers {
                let o = match i {
                    i if i == next || i == next - 1 => Outcome::Failed {
                        permanent: false,
                        reason: "NodeUnreachable",
                        message: format!("peer {p}: {}", "x".repeat(5000)),
                    },
                    i if i > next - 10 => Outcome::Running {
                        bytes_done: 5,
                        total: None,
                    },
                    _ => Outcome::Done { bytes: 1 << 20 },
                };
                outcomes.push(((p.clone(), digest(i)), o));
            }
        }
        let r = Report {
            outcomes: outcomes.into_iter().collect(),
            manifests_done: 0,
            manifest_errors: vec![],
        };
        apply_tick(&mut st, &plan, &peers, &r, 6, &t(30));

        assert_eq!(st.blobs.len(), MAX_LISTED_BLOBS);
        assert_eq!(st.blobs_omitted, total - 20);
        assert_eq!(st.progress.blobs_total, total * 2);
        assert_eq!(
            st.blobs
                .iter()
                .take(2)
                .map(|b| b.digest.clone())
                .collect::<Vec<_>>(),
            [digest(next - 1), digest(next)],
            "the troubled blobs come first"
        );
        assert_eq!(st.blobs[0].state, ItemState::Running);
        assert!(st.blobs[0].message.chars().count() <= MAX_BLOB_MESSAGE + 1);
        assert!(st.blobs[2..10]
            .iter()
            .all(|b| b.state == ItemState::Running));
        assert!(st.blobs[10..]
            .iter()
            .all(|b| b.state == ItemState::Succeeded && b.peers_done == 2));
        let size = serde_json::to_vec(&st).expect("json").len();
        assert!(size < 512 * 1024, "status is {size} bytes");
    }

    #[test]
    fn a_permanently_failed_blob_is_listed_first_as_failed() {
        let mut st = start(&spec(), Some(1), &t(10));
        running(&mut st);
        let r = report(
            &[
                ("seed-0", "sha256:a", Outcome::Done { bytes: 100 }),
                (
                    "seed-0",
                    "sha256:b",
                    Outcome::Failed {
                        permanent: true,
                        reason: "DigestMismatch",
                        message: "peer seed-0: blob sha256:b: digest mismatch".into(),
                    },
                ),
            ],
            0,
        );
        apply_tick(&mut st, &plan(), &peers(), &r, 2, &t(30));
        let listed: Vec<(&str, ItemState)> = st
            .blobs
            .iter()
            .map(|b| (b.digest.as_str(), b.state))
            .collect();
        // The file is not a blob: it has its own entry under `urls`.
        assert_eq!(
            listed,
            [
                ("sha256:b", ItemState::Failed),
                ("sha256:a", ItemState::Running)
            ]
        );
        assert_eq!(st.blobs_omitted, 0);
        assert!(st.blobs[0].message.contains("digest mismatch"));
    }
}
