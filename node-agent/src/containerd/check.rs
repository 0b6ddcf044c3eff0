//! Reads containerd's config.toml (never writes it) and reports every
//! setting that makes image pulls silently bypass the hosts.toml mirrors.
//! Understands config version 1 (plugin `cri`), 2
//! (`io.containerd.grpc.v1.cri`) and 3 (`io.containerd.cri.v1.images`).

use serde::Serialize;
use std::path::Path;
use toml_edit::{DocumentMut, Item};

use super::error::ContainerdError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Stable identifier for tooling (the operator's per-node report).
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub config_version: i64,
    /// containerd's `config_path` for the CRI registry, if set.
    pub config_path: Option<String>,
    pub problems: Vec<Problem>,
}

/// Checks the file at `path`; `expected_config_path` is where dfdaemon
/// writes hosts.toml files.
pub fn check_file(
    path: &Path,
    expected_config_path: Option<&Path>,
) -> Result<Report, ContainerdError> {
    let text = std::fs::read_to_string(path).map_err(|source| ContainerdError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check(&text, expected_config_path).map_err(|e| match e {
        ContainerdError::BadConfig(why) => {
            ContainerdError::BadConfig(format!("{}: {why}", path.display()))
        }
        other => other,
    })
}

pub fn check(text: &str, expected_config_path: Option<&Path>) -> Result<Report, ContainerdError> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ContainerdError::BadConfig(e.to_string()))?;
    let version = match doc.get("version") {
        None => 1,
        Some(item) => item
            .as_integer()
            .ok_or_else(|| ContainerdError::BadConfig("`version` is not an integer".into()))?,
    };
    // (plugin holding `registry`, plugin holding `discard_unpacked_layers`)
    let (images, runtime) = match version {
        1 => (vec!["cri"], vec!["cri", "containerd"]),
        2 => (
            vec!["io.containerd.grpc.v1.cri"],
            vec!["io.containerd.grpc.v1.cri", "containerd"],
        ),
        3 => (
            vec!["io.containerd.cri.v1.images"],
            vec!["io.containerd.cri.v1.images"],
        ),
        v => {
            return Err(ContainerdError::BadConfig(format!(
                "unknown config version {v}"
            )))
        }
    };
    let plugins = doc.get("plugins");
    let lookup = |path: &[&str]| -> Option<&Item> {
        let mut item = plugins?;
        for key in path {
            item = item.get(key)?;
        }
        Some(item)
    };
    let mut problems = Vec::new();
    let registry_path = |key: &'static str| {
        let mut p = images.clone();
        p.push("registry");
        p.push(key);
        p
    };
    let config_path = lookup(&registry_path("config_path"))
        .and_then(Item::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    match &config_path {
        None => problems.push(Problem {
            code: "no_config_path",
            message: format!(
                "{} has no config_path: containerd ignores hosts.toml files and never uses the mirror",
                table_name(&registry_path("config_path")[..images.len() + 1])
            ),
        }),
        Some(found) => {
            if let Some(expected) = expected_config_path {
                // containerd accepts a colon-separated list of directories.
                let listed = found.split(':').any(|d| Path::new(d) == expected);
                if !listed {
                    problems.push(Problem {
                        code: "config_path_mismatch",
                        message: format!(
                            "containerd reads hosts.toml from {found}, but the mirror is configured in {}",
                            expected.display()
                        ),
                    });
                }
            }
        }
    }
    let has_entries = |item: Option<&Item>| {
        item.and_then(|i| i.as_table_like())
            .is_some_and(|t| !t.is_empty())
    };
    if has_entries(lookup(&registry_path("mirrors"))) {
        problems.push(Problem {
            code: "legacy_mirrors",
            message: format!(
                "{} is set: this legacy table is deprecated, conflicts with config_path (containerd refuses to start with both) and is never written by dfdaemon; move it to hosts.toml files",
                table_name(&registry_path("mirrors"))
            ),
        });
    }
    if version == 3 {
        let local_pull = lookup(&["io.containerd.cri.v1.images", "use_local_image_pull"])
            .and_then(Item::as_bool)
            .unwrap_or(false);
        if !local_pull {
            problems.push(Problem {
                code: "transfer_service",
                message: "containerd 2.1+ pulls CRI images through the transfer service unless [plugins.\"io.containerd.cri.v1.images\"] use_local_image_pull = true; that path can bypass the CRI registry config_path and thus the mirror".into(),
            });
        }
    }
    let mut discard = runtime.clone();
    discard.push("discard_unpacked_layers");
    if lookup(&discard).and_then(Item::as_bool) == Some(true) {
        problems.push(Problem {
            code: "discard_unpacked_layers",
            message: format!(
                "{} discard_unpacked_layers = true: layers are dropped after unpacking, so every new pull fetches them again and the node cannot share them",
                table_name(&runtime)
            ),
        });
    }
    Ok(Report {
        config_version: version,
        config_path,
        problems,
    })
}

/// `[plugins."io.containerd.grpc.v1.cri".registry]` for messages.
fn table_name(path: &[&str]) -> String {
    let mut out = String::from("[plugins");
    for key in path {
        if key.contains('.') {
            out.push_str(&format!(".\"{key}\""));
        } else {
            out.push('.');
            out.push_str(key);
        }
    }
    out.push(']');
    out
}
