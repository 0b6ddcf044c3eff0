//! How a node's containerd integration went, as dfdaemon reports it to the
//! operator: JSON in an annotation on dfdaemon's own Pod.

use serde::{Deserialize, Serialize};

/// The Pod annotation that carries the report.
pub const ANNOTATION: &str = "p2p.dragonfly.dev/node-report";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProblem {
    /// Stable CamelCase code, e.g. NoConfigPath.
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// The containerd versions the problem holds on (`<2.0`, `>=2.0`),
    /// when the node agent could not tell which one runs; empty: all.
    /// The operator, which knows each node's runtime, drops the others.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtimes: String,
}

/// Missing fields read as "not configured, no problems": a report from an
/// older or newer dfdaemon is read leniently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeReport {
    /// The mirror's hosts.toml files are in place.
    pub configured: bool,
    /// States that make containerd bypass the mirror; empty when none.
    pub problems: Vec<NodeProblem>,
    /// Settings worth knowing that do not stop pulls going through the
    /// mirror (not node problems).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<NodeProblem>,
    /// When containerd last pulled through this node's mirror (RFC 3339):
    /// proof of use, not of files. None until the first such pull.
    #[serde(rename = "lastMirroredPull", skip_serializing_if = "Option::is_none")]
    pub last_mirrored_pull: Option<String>,
}

impl NodeReport {
    /// Drops the problems that do not hold on the node's containerd
    /// (`containerd://2.2.10`, as the Node's containerRuntimeVersion says);
    /// an unknown runtime keeps them all.
    pub fn for_runtime(mut self, runtime: Option<&str>) -> NodeReport {
        if let Some(running) = runtime.and_then(RuntimeVersion::parse) {
            self.problems
                .retain(|p| runtimes_hold_on(&p.runtimes, running));
        }
        self
    }
}

/// `major.minor` of containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuntimeVersion(pub u32, pub u32);

impl RuntimeVersion {
    /// `2.2.10`, `v1.6.20`, `containerd://2.1.4`, `1.7.28-1`; None for
    /// another runtime or no version.
    pub fn parse(text: &str) -> Option<RuntimeVersion> {
        let text = text.trim();
        let text = text.strip_prefix("containerd://").unwrap_or(text);
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut parts = text.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(RuntimeVersion(major, minor))
    }
}

/// Whether a problem's `runtimes` (empty, `<2.0`, `>=2.1` or both, as in
/// `>=2.0,<2.4`) holds on `running`; an unreadable part holds (a problem
/// is never hidden by a typo).
pub fn runtimes_hold_on(runtimes: &str, running: RuntimeVersion) -> bool {
    runtimes.split(',').all(|part| {
        let part = part.trim();
        if let Some(v) = part.strip_prefix(">=").and_then(RuntimeVersion::parse) {
            running >= v
        } else if let Some(v) = part.strip_prefix('<').and_then(RuntimeVersion::parse) {
            running < v
        } else {
            true
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_follow_the_nodes_runtime() {
        let v = |s| RuntimeVersion::parse(s).unwrap();
        assert_eq!(v("containerd://2.2.10"), RuntimeVersion(2, 2));
        assert_eq!(v("v1.6.20"), RuntimeVersion(1, 6));
        assert_eq!(v("1.7.28-1"), RuntimeVersion(1, 7));
        assert!(RuntimeVersion::parse("cri-o://x").is_none());
        let problem = |code: &str, runtimes: &str| NodeProblem {
            code: code.into(),
            runtimes: runtimes.into(),
            ..NodeProblem::default()
        };
        let report = NodeReport {
            configured: true,
            problems: vec![
                problem("NoConfigPath", "<2.0"),
                problem("ConfigPathMismatch", ">=2.0"),
                problem("LegacyMirrors", ""),
                problem("ConfigVersionUnsupported", ">=2.0,<2.4"),
            ],
            ..NodeReport::default()
        };
        let codes = |r: NodeReport| r.problems.into_iter().map(|p| p.code).collect::<Vec<_>>();
        assert_eq!(
            codes(report.clone().for_runtime(Some("containerd://1.6.20"))),
            ["NoConfigPath", "LegacyMirrors"]
        );
        assert_eq!(
            codes(report.clone().for_runtime(Some("containerd://2.2.10"))),
            [
                "ConfigPathMismatch",
                "LegacyMirrors",
                "ConfigVersionUnsupported"
            ]
        );
        assert_eq!(
            codes(report.clone().for_runtime(Some("containerd://2.4.2"))),
            ["ConfigPathMismatch", "LegacyMirrors"]
        );
        assert_eq!(codes(report.for_runtime(None)).len(), 4);
    }

    #[test]
    fn reports_round_trip_and_missing_fields_default() {
        let report = NodeReport {
            configured: false,
            problems: vec![NodeProblem {
                code: "NoConfigPath".into(),
                message: "no config_path".into(),
                ..NodeProblem::default()
            }],
            ..NodeReport::default()
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"configured":false,"problems":[{"code":"NoConfigPath","message":"no config_path"}]}"#
        );
        assert_eq!(serde_json::from_str::<NodeReport>(&json).unwrap(), report);
        let bare: NodeReport = serde_json::from_str(r#"{"configured":true}"#).unwrap();
        assert!(bare.configured && bare.problems.is_empty());
        assert_eq!(bare.last_mirrored_pull, None);
        let used: NodeReport = serde_json::from_str(
            r#"{"configured":true,"lastMirroredPull":"2026-12-07T18:00:00Z","warnings":[{"code":"DiscardUnpackedLayers"}]}"#,
        )
        .unwrap();
        assert_eq!(
            used.last_mirrored_pull.as_deref(),
            Some("2026-12-07T18:00:00Z")
        );
        assert_eq!(used.warnings[0].code, "DiscardUnpackedLayers");
    }
}
