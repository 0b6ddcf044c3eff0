//! How a node's containerd integration went, as dfdaemon reports it to the
//! operator: JSON in an annotation on dfdaemon's own Pod.

use serde::{Deserialize, Serialize};

/// The Pod annotation that carries the report.
pub const ANNOTATION: &str = "p2p.dragonfly.dev/node-report";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProblem {
    /// Stable CamelCase code, e.g. NoConfigPath.
    pub code: String,
    #[serde(default)]
    pub message: String,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_missing_fields_default() {
        let report = NodeReport {
            configured: false,
            problems: vec![NodeProblem {
                code: "NoConfigPath".into(),
                message: "no config_path".into(),
            }],
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"configured":false,"problems":[{"code":"NoConfigPath","message":"no config_path"}]}"#
        );
        assert_eq!(serde_json::from_str::<NodeReport>(&json).unwrap(), report);
        let bare: NodeReport = serde_json::from_str(r#"{"configured":true}"#).unwrap();
        assert!(bare.configured && bare.problems.is_empty());
    }
}
