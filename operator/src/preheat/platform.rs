//! Platforms (`os/arch[/variant]`) and which manifests of an image index
//! they select, with the variant defaults containerd applies (an `arm64`
//! node takes `v8` or no variant, an `arm` node `v7`).

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Node;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid platform {text:?}: {why} (expected os/arch[/variant], e.g. linux/arm64)"
            )
        };
        let parts: Vec<&str> = text.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad("wrong number of parts"));
        }
        for p in &parts {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
            {
                return Err(bad("each part is lower-case letters, digits, '_' or '.'"));
            }
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        }
    }

    /// The variant, with the architecture's default when none is named.
    fn effective_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            (_, Some(v)) => Some(v),
            ("arm64", None) => Some("v8"),
            ("arm", None) => Some("v7"),
            _ => None,
        }
    }

    /// The platform of a node, from its well-known labels, else its node info.
    pub fn of_node(node: &Node) -> Option<Platform> {
        let labels = node.metadata.labels.as_ref();
        let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
        let os = labels
            .and_then(|l| l.get("kubernetes.io/os").cloned())
            .or_else(|| info.map(|i| i.operating_system.clone()))
            .filter(|s| !s.is_empty())?;
        let arch = labels
            .and_then(|l| l.get("kubernetes.io/arch").cloned())
            .or_else(|| info.map(|i| i.architecture.clone()))
            .filter(|s| !s.is_empty())?;
        Some(Platform::new(&os, &arch, None))
    }

    /// The platform this binary runs on, in OCI names.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform::new(std::env::consts::OS, arch, None)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The distinct platforms of a set of nodes, sorted.
pub fn of_nodes(nodes: &[Node]) -> Vec<Platform> {
    nodes
        .iter()
        .filter_map(Platform::of_node)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// One entry of an image index (OCI index or Docker manifest list).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<EntryPlatform>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EntryPlatform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl IndexEntry {
    pub fn platform(&self) -> Option<Platform> {
        let p = self.platform.as_ref()?;
        Some(Platform::new(&p.os, &p.architecture, p.variant.as_deref()))
    }
}

/// Wanted platforms the index has no manifest for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform {} not in the image index (it has: {})", join(missing), if available.is_empty() { "none".to_string() } else { join(available) })]
pub struct PlatformMissing {
    pub missing: Vec<Platform>,
    pub available: Vec<Platform>,
}

fn join(p: &[Platform]) -> String {
    p.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The manifest each wanted platform runs, as containerd would pick it:
/// same os and architecture; the named variant, else the architecture's
/// default variant (or none), else the first of that architecture.
/// Several wanted platforms may select one manifest; it is listed once.
pub fn select<'a>(
    entries: &'a [IndexEntry],
    wanted: &[Platform],
) -> Result<Vec<(Platform, &'a IndexEntry)>, PlatformMissing> {
    let mut chosen: Vec<(Platform, &IndexEntry)> = Vec::new();
    let mut missing = Vec::new();
    for w in wanted {
        let same_arch: Vec<(Platform, &IndexEntry)> = entries
            .iter()
            .filter_map(|e| e.platform().map(|p| (p, e)))
            .filter(|(p, _)| p.os == w.os && p.architecture == w.architecture)
            .collect();
        let exact = same_arch
            .iter()
            .find(|(p, _)| p.effective_variant() == w.effective_variant());
        let found = match (exact, &w.variant) {
            (Some(found), _) => Some(found),
            // A named variant must match; without one, any of the architecture does.
            (None, Some(_)) => None,
            (None, None) => same_arch.first(),
        };
        match found {
            Some((p, e)) if !chosen.iter().any(|(_, c)| c.digest == e.digest) => {
                chosen.push((p.clone(), *e))
            }
            Some(_) => {}
            None => missing.push(w.clone()),
        }
    }
    if missing.is_empty() {
        Ok(chosen)
    } else {
        let available = entries
            .iter()
            .filter_map(IndexEntry::platform)
            .filter(|p| p.os != "unknown")
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Err(PlatformMissing { missing, available })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};
    use std::collections::BTreeMap;

    fn p(s: &str) -> Platform {
        Platform::parse(s).expect("platform parses")
    }

    fn entry(digest: &str, platform: &str) -> IndexEntry {
        let parts: Vec<&str> = platform.split('/').collect();
        IndexEntry {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.into(),
            size: 100,
            platform: Some(EntryPlatform {
                os: parts[0].into(),
                architecture: parts[1].into(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
        }
    }

    /// A typical multi-arch index, with a BuildKit attestation manifest.
    fn index() -> Vec<IndexEntry> {
        vec![
            entry("sha256:amd", "linux/amd64"),
            entry("sha256:arm7", "linux/arm/v7"),
            entry("sha256:arm6", "linux/arm/v6"),
            entry("sha256:arm64", "linux/arm64/v8"),
            entry("sha256:att", "unknown/unknown"),
        ]
    }

    fn digests(sel: &[(Platform, &IndexEntry)]) -> Vec<String> {
        sel.iter().map(|(_, e)| e.digest.clone()).collect()
    }

    #[test]
    fn parse_and_print() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/arm/v7").variant.as_deref(), Some("v7"));
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "Linux/amd64",
            "linux/amd64/v8/x",
            "linux amd64",
        ] {
            let e = Platform::parse(bad).expect_err(bad);
            assert!(e.starts_with("invalid platform"), "{e}");
        }
    }

    #[test]
    fn selects_one_manifest_per_platform() {
        let idx = index();
        let sel = select(&idx, &[p("linux/amd64")]).expect("found");
        assert_eq!(digests(&sel), ["sha256:amd"]);
        assert_eq!(sel[0].0, p("linux/amd64"));
        // arm64 without a variant means v8; arm without one means v7.
        let sel = select(&idx, &[p("linux/arm64"), p("linux/arm")]).expect("found");
        assert_eq!(digests(&sel), ["sha256:arm64", "sha256:arm7"]);
        let sel = select(&idx, &[p("linux/arm/v6")]).expect("found");
        assert_eq!(digests(&sel), ["sha256:arm6"]);
    }

    #[test]
    fn arm64_entry_without_variant_matches_v8() {
        let idx = vec![entry("sha256:a", "linux/arm64")];
        assert_eq!(
            digests(&select(&idx, &[p("linux/arm64/v8")]).expect("found")),
            ["sha256:a"]
        );
    }

    #[test]
    fn same_manifest_twice_is_listed_once() {
        let idx = index();
        let sel = select(&idx, &[p("linux/arm64"), p("linux/arm64/v8")]).expect("found");
        assert_eq!(digests(&sel), ["sha256:arm64"]);
    }

    #[test]
    fn missing_platform_names_what_exists() {
        let idx = index();
        let e = select(
            &idx,
            &[p("linux/amd64"), p("linux/s390x"), p("linux/arm/v5")],
        )
        .expect_err("missing");
        assert_eq!(e.missing, [p("linux/s390x"), p("linux/arm/v5")]);
        assert_eq!(
            e.to_string(),
            "platform linux/s390x, linux/arm/v5 not in the image index (it has: linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8)"
        );
        let e = select(&[], &[p("linux/amd64")]).expect_err("empty index");
        assert!(e.to_string().ends_with("(it has: none)"), "{e}");
    }

    #[test]
    fn without_variant_any_of_the_architecture_will_do() {
        let idx = vec![entry("sha256:v6", "linux/arm/v6")];
        assert_eq!(
            digests(&select(&idx, &[p("linux/arm")]).expect("found")),
            ["sha256:v6"]
        );
        assert!(select(&idx, &[p("linux/arm/v7")]).is_err());
    }

    #[test]
    fn node_platforms_from_labels_or_node_info() {
        let labelled = Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/os".to_string(), "linux".to_string()),
                    ("kubernetes.io/arch".to_string(), "arm64".to_string()),
                ])),
                ..Default::default()
            },
            ..Node::default()
        };
        let from_info = Node {
            status: Some(NodeStatus {
                node_info: Some(NodeSystemInfo {
                    operating_system: "linux".into(),
                    architecture: "amd64".into(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        let nodes = [labelled.clone(), from_info, labelled, Node::default()];
        assert_eq!(of_nodes(&nodes), [p("linux/amd64"), p("linux/arm64")]);
    }
}
