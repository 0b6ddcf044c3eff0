//! Pulls that went around the mirror. kubelet reports each pull as a
//! `Pulled` event naming its node; the node's dfdaemon stamps every
//! containerd request that comes through its mirror (`lastMirroredPull` in
//! the node report). A pull of an image from a mirrored registry that
//! started after the dfdaemon was up, with no mirror request since before
//! it started, bypassed the mirror: the node's files say "configured" but
//! containerd does not use them. Pure, so every case is tested here.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::validate::registry_host;

/// How long the node report may take to carry a new stamp: dfdaemon
/// republishes the stamp at most once a minute, after a watcher pass.
pub const REPORT_LAG: Duration = Duration::from_secs(120);
/// After a dfdaemon starts, the time it takes to write its files.
const STARTUP: Duration = Duration::from_secs(30);
/// Clock skew between the kubelet's and the dfdaemon's stamps (both whole
/// seconds).
const SKEW: Duration = Duration::from_secs(2);

/// One completed pull, as kubelet reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    pub node: String,
    pub image: String,
    pub finished: Timestamp,
    pub took: Duration,
}

impl Pull {
    fn started(&self) -> Timestamp {
        self.finished
            .checked_sub(SignedDuration::try_from(self.took).unwrap_or(SignedDuration::ZERO))
            .unwrap_or(self.finished)
    }
}

/// A `Pulled` event of a finished pull ("Successfully pulled image "X" in
/// 1.5s ..."); "already present on machine" pulled nothing.
pub fn parse(event: &Event) -> Option<Pull> {
    if event.reason.as_deref() != Some("Pulled") {
        return None;
    }
    let node = event
        .source
        .as_ref()
        .and_then(|s| s.host.clone())
        .or_else(|| event.reporting_instance.clone())?;
    let message = event.message.as_deref()?;
    let rest = message.strip_prefix("Successfully pulled image \"")?;
    let (image, rest) = rest.split_once('"')?;
    let took = go_duration(
        rest.trim_start()
            .strip_prefix("in ")?
            .split_whitespace()
            .next()?,
    )?;
    let finished = event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))?;
    Some(Pull {
        node,
        image: image.to_string(),
        finished,
        took,
    })
}

/// A Go duration as kubelet prints it: `1.5s`, `2m3.25s`, `1h0m2s`, `350ms`.
pub fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The registry host of an image reference (`docker.io` for bare names).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Whether the cluster mirrors `registry` (an empty list mirrors all).
pub fn is_mirrored(registry: &str, registries: &[String]) -> bool {
    registries.is_empty()
        || registries.iter().any(|r| {
            registry_host(r).is_ok_and(|h| {
                h.eq_ignore_ascii_case(registry)
                    || (registry == "docker.io" && h.eq_ignore_ascii_case("registry-1.docker.io"))
            })
        })
}

/// What the operator knows of one node's dfdaemon.
pub struct NodeView<'a> {
    pub node: &'a str,
    /// When the dfdaemon container (re)started.
    pub since: Timestamp,
    /// The node report's `lastMirroredPull`.
    pub last_mirrored: Option<Timestamp>,
}

/// The latest pull on this node that bypassed the mirror, if any.
pub fn bypassed<'a>(
    pulls: &'a [Pull],
    view: &NodeView,
    registries: &[String],
    now: Timestamp,
) -> Option<&'a Pull> {
    let settled = |p: &Pull| {
        now.duration_since(p.finished)
            .try_into()
            .is_ok_and(|d: Duration| d >= REPORT_LAG)
    };
    let after_start = |p: &Pull| {
        p.started()
            .duration_since(view.since)
            .try_into()
            .is_ok_and(|d: Duration| d >= STARTUP)
    };
    let unseen = |p: &Pull| match view.last_mirrored {
        None => true,
        Some(stamp) => p
            .started()
            .duration_since(stamp)
            .try_into()
            .is_ok_and(|d: Duration| d > SKEW),
    };
    pulls
        .iter()
        .filter(|p| p.node == view.node)
        .filter(|p| is_mirrored(registry_of(&p.image), registries))
        .filter(|p| settled(p) && after_start(p) && unseen(p))
        .max_by_key(|p| p.finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EventSource;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn event(node: &str, message: &str, finished: i64) -> Event {
        Event {
            reason: Some("Pulled".into()),
            message: Some(message.into()),
            source: Some(EventSource {
                host: Some(node.into()),
                ..Default::default()
            }),
            last_timestamp: Some(Time(at(finished))),
            ..Default::default()
        }
    }

    fn pull(node: &str, image: &str, finished: i64, took: u64) -> Pull {
        Pull {
            node: node.into(),
            image: image.into(),
            finished: at(finished),
            took: Duration::from_secs(took),
        }
    }

    #[test]
    fn kubelet_messages_parse() {
        let p = parse(&event(
            "n1",
            "Successfully pulled image \"10.0.0.2:5000/app:v1\" in 2m3.5s (2m3.5s including waiting). Image size: 1234 bytes.",
            100,
        ))
        .unwrap();
        assert_eq!(p.image, "10.0.0.2:5000/app:v1");
        assert_eq!(p.took, Duration::from_millis(123_500));
        assert_eq!(p.node, "n1");
        let old = parse(&event(
            "n1",
            "Successfully pulled image \"busybox\" in 350ms",
            1,
        ))
        .unwrap();
        assert_eq!(old.took, Duration::from_millis(350));
        assert_eq!(
            parse(&event(
                "n1",
                "Container image \"busybox\" already present on machine",
                1
            )),
            None
        );
        let mut other = event("n1", "Successfully pulled image \"a\" in 1s", 1);
        other.reason = Some("Pulling".into());
        assert_eq!(parse(&other), None);
        assert_eq!(go_duration("1h0m2s"), Some(Duration::from_secs(3602)));
        assert_eq!(go_duration("1.5µs"), Some(Duration::from_nanos(1500)));
        assert_eq!(go_duration("12"), None);
        assert_eq!(go_duration(""), None);
        assert_eq!(go_duration("1x"), None);
    }

    #[test]
    fn registries_match_as_the_mirror_does() {
        assert_eq!(registry_of("busybox:1"), "docker.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("ghcr.io/a/b:c"), "ghcr.io");
        assert_eq!(registry_of("10.0.0.2:5000/app"), "10.0.0.2:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
        let list = vec!["http://10.0.0.2:5000".to_string(), "docker.io".to_string()];
        assert!(is_mirrored("10.0.0.2:5000", &list));
        assert!(is_mirrored("docker.io", &list));
        assert!(!is_mirrored("ghcr.io", &list));
        assert!(
            is_mirrored("ghcr.io", &[]),
            "an empty list mirrors every registry"
        );
    }

    #[test]
    fn a_pull_the_mirror_never_saw_is_a_bypass() {
        let pulls = vec![
            pull("n1", "10.0.0.2:5000/app:v1", 1000, 10),
            pull("n2", "10.0.0.2:5000/app:v1", 1000, 10),
        ];
        let registries = vec!["http://10.0.0.2:5000".to_string()];
        let now = at(1000 + 121);
        // n1's mirror last saw containerd long before the pull began.
        let view = NodeView {
            node: "n1",
            since: at(0),
            last_mirrored: Some(at(500)),
        };
        assert_eq!(
            bypassed(&pulls, &view, &registries, now).map(|p| p.node.as_str()),
            Some("n1")
        );
        // Seen during the pull: through the mirror.
        let view = NodeView {
            last_mirrored: Some(at(992)),
            ..view
        };
        assert_eq!(bypassed(&pulls, &view, &registries, now), None);
        // Never seen at all.
        let view = NodeView {
            node: "n2",
            since: at(0),
            last_mirrored: None,
        };
        assert!(bypassed(&pulls, &view, &registries, now).is_some());
    }

    #[test]
    fn what_is_not_a_bypass() {
        let registries = vec!["http://10.0.0.2:5000".to_string()];
        let view = NodeView {
            node: "n1",
            since: at(900),
            last_mirrored: None,
        };
        let now = at(5000);
        // Started before the dfdaemon was up (or while it restarted).
        assert_eq!(
            bypassed(
                &[pull("n1", "10.0.0.2:5000/a", 935, 10)],
                &view,
                &registries,
                now
            ),
            None
        );
        // A registry the cluster does not mirror.
        assert_eq!(
            bypassed(&[pull("n1", "ghcr.io/a", 2000, 1)], &view, &registries, now),
            None
        );
        // Too recent: the node report may not carry the stamp yet.
        assert_eq!(
            bypassed(
                &[pull("n1", "10.0.0.2:5000/a", 4950, 1)],
                &view,
                &registries,
                now
            ),
            None
        );
        // Another node's pull.
        assert_eq!(
            bypassed(
                &[pull("n2", "10.0.0.2:5000/a", 2000, 1)],
                &view,
                &registries,
                now
            ),
            None
        );
        // Started after the dfdaemon's start and its files: a bypass.
        assert!(bypassed(
            &[pull("n1", "10.0.0.2:5000/a", 945, 10)],
            &view,
            &registries,
            now
        )
        .is_some());
    }
}
