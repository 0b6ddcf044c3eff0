//! Reads containerd's config.toml (never writes it), with its `imports`
//! drop-ins, and reports each setting that really makes CRI pulls bypass
//! the hosts.toml mirrors (problems), apart from settings worth knowing
//! that do not (warnings). Config versions 1 (plugin `cri`), 2
//! (`io.containerd.grpc.v1.cri`), 3 and 4 (`io.containerd.cri.v1.images`).
//! A missing file means containerd's built-in defaults.
//!
//! The verdicts follow what the real daemons did (1.6, 1.7, 2.0, 2.1, 2.2,
//! 2.4; `docs/containerd-matrix.md`, `e2e/containerd/bypass-matrix.sh`):
//! some hold on some releases only (a `config_path` list is read by the
//! local pull path but not by 2.1+'s transfer service; a version 1 file
//! loses its registry table on 2.0 to 2.2). Such a problem names the
//! releases it holds for; with the runtime version known, it is kept or
//! dropped here (and by the operator, which knows each node's runtime).

use serde::Serialize;
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, Item};

use super::error::ContainerdError;

/// containerd 2.x's built-in `config_path`.
pub const DEFAULT_CONFIG_PATH_V2: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";
/// `imports` nest at most this deep (containerd follows them recursively).
const MAX_IMPORT_DEPTH: usize = 4;
/// Drop-in files read at most, so a glob over a huge directory stays cheap.
const MAX_IMPORTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Stable identifier for tooling (the operator's per-node report).
    pub code: &'static str,
    pub message: String,
    /// The containerd versions the problem holds on (`<2.0`, `>=2.0`).
    #[serde(skip_serializing_if = "Runtimes::is_all")]
    pub runtimes: Runtimes,
}

/// Which containerd versions a verdict holds for: `[from, before)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Runtimes {
    pub from: Option<RuntimeVersion>,
    pub before: Option<RuntimeVersion>,
}

const fn v(major: u32, minor: u32) -> Option<RuntimeVersion> {
    Some(RuntimeVersion(major, minor))
}

impl Runtimes {
    pub const ALL: Runtimes = Runtimes {
        from: None,
        before: None,
    };

    const fn before(major: u32, minor: u32) -> Runtimes {
        Runtimes {
            from: None,
            before: v(major, minor),
        }
    }

    const fn from(major: u32, minor: u32) -> Runtimes {
        Runtimes {
            from: v(major, minor),
            before: None,
        }
    }

    pub fn is_all(&self) -> bool {
        *self == Runtimes::ALL
    }

    pub fn holds_on(&self, running: RuntimeVersion) -> bool {
        self.from.is_none_or(|f| running >= f) && self.before.is_none_or(|b| running < b)
    }
}

impl std::fmt::Display for Runtimes {
    /// `>=2.0,<2.4`, as the node report carries it (`all` for every version).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            self.from.map(|RuntimeVersion(a, b)| format!(">={a}.{b}")),
            self.before.map(|RuntimeVersion(a, b)| format!("<{a}.{b}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            f.write_str("all")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

impl Serialize for Runtimes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The main file's version; 0 when there is no file (the defaults).
    pub config_version: i64,
    /// containerd's `config_path` for the CRI registry as set in the files,
    /// if set.
    pub config_path: Option<String>,
    /// Settings that make pulls bypass the mirror.
    pub problems: Vec<Problem>,
    /// Settings worth knowing that do not stop pulls going through the
    /// mirror.
    pub warnings: Vec<Problem>,
}

impl Report {
    /// Keeps the problems that hold on `runtime` (a containerd version such
    /// as `2.2.10`, `v1.6.20` or `containerd://2.1.4`).
    pub fn for_runtime(mut self, runtime: &str) -> Report {
        if let Some(running) = RuntimeVersion::parse(runtime) {
            self.problems.retain(|p| p.runtimes.holds_on(running));
            for p in &mut self.problems {
                p.runtimes = Runtimes::ALL;
            }
        }
        self
    }

    /// Problems that hold whatever the runtime version.
    pub fn certain_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.runtimes.is_all())
    }
}

pub use wire::node_report::RuntimeVersion;

/// Checks the file at `path` (and its imports); a missing file is
/// containerd's defaults. `expected_config_path` is where dfdaemon writes
/// hosts.toml files.
pub fn check_file(
    path: &Path,
    expected_config_path: Option<&Path>,
) -> Result<Report, ContainerdError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ContainerdError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let Some(text) = text else {
        return Ok(defaults_report(expected_config_path));
    };
    let base = path.parent().unwrap_or(Path::new("/"));
    let main = parse(&text).map_err(|e| in_file(path, e))?;
    let mut files = vec![(path.to_path_buf(), main)];
    load_imports(base, 0, &mut files)?;
    Ok(judge(&files, expected_config_path))
}

/// Checks one file's text (its imports are not followed).
pub fn check(text: &str, expected_config_path: Option<&Path>) -> Result<Report, ContainerdError> {
    let main = parse(text)?;
    Ok(judge(&[(PathBuf::new(), main)], expected_config_path))
}

fn in_file(path: &Path, e: ContainerdError) -> ContainerdError {
    match e {
        ContainerdError::BadConfig(why) => {
            ContainerdError::BadConfig(format!("{}: {why}", path.display()))
        }
        other => other,
    }
}

/// The settings this check needs from one file, read with the paths of
/// that file's own version.
#[derive(Debug, Default, Clone)]
struct Settings {
    version: i64,
    imports: Vec<String>,
    config_path: Option<String>,
    /// The table naming `config_path`, for messages.
    registry_table: String,
    legacy_mirrors: Option<String>,
    discard: Option<(bool, String)>,
    local_pull: Option<bool>,
}

fn parse(text: &str) -> Result<Settings, ContainerdError> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ContainerdError::BadConfig(e.to_string()))?;
    let version = match doc.get("version") {
        None => 1,
        Some(item) => item
            .as_integer()
            .ok_or_else(|| ContainerdError::BadConfig("`version` is not an integer".into()))?,
    };
    // (plugin holding `registry`, table holding `discard_unpacked_layers`)
    let (images, runtime): (&[&str], &[&str]) = match version {
        1 => (&["cri"], &["cri", "containerd"]),
        2 => (
            &["io.containerd.grpc.v1.cri"],
            &["io.containerd.grpc.v1.cri", "containerd"],
        ),
        3 | 4 => (
            &["io.containerd.cri.v1.images"],
            &["io.containerd.cri.v1.images"],
        ),
        v => {
            return Err(ContainerdError::BadConfig(format!(
                "unknown config version {v} (this dfdaemon knows 1 to 4)"
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
    fn with<'a>(base: &[&'a str], key: &'a str) -> Vec<&'a str> {
        let mut p = base.to_vec();
        p.push(key);
        p
    }
    let registry = with(images, "registry");
    let config_path = lookup(&with(&registry, "config_path"))
        .and_then(Item::as_str)
        .map(str::to_string);
    let mirrors = with(&registry, "mirrors");
    let has_entries = |item: Option<&Item>| {
        item.and_then(|i| i.as_table_like())
            .is_some_and(|t| !t.is_empty())
    };
    let imports = match doc.get("imports") {
        None => Vec::new(),
        Some(item) => item
            .as_array()
            .ok_or_else(|| ContainerdError::BadConfig("`imports` is not an array".into()))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    };
    Ok(Settings {
        version,
        imports,
        config_path,
        registry_table: table_name(&registry),
        legacy_mirrors: has_entries(lookup(&mirrors)).then(|| table_name(&mirrors)),
        discard: lookup(&with(runtime, "discard_unpacked_layers"))
            .and_then(Item::as_bool)
            .map(|on| (on, table_name(runtime))),
        local_pull: (version >= 3)
            .then(|| lookup(&with(images, "use_local_image_pull")).and_then(Item::as_bool))
            .flatten(),
    })
}

/// Follows `imports` as containerd does: paths relative to the importing
/// file's directory, `*` globs in the file name, each file once.
fn load_imports(
    base: &Path,
    depth: usize,
    files: &mut Vec<(PathBuf, Settings)>,
) -> Result<(), ContainerdError> {
    if depth >= MAX_IMPORT_DEPTH {
        return Ok(());
    }
    let patterns = files
        .last()
        .map(|(_, s)| s.imports.clone())
        .unwrap_or_default();
    for pattern in patterns {
        for path in expand(base, &pattern)? {
            if files.len() >= MAX_IMPORTS || files.iter().any(|(p, _)| *p == path) {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|source| ContainerdError::Io {
                path: path.clone(),
                source,
            })?;
            let settings = parse(&text).map_err(|e| in_file(&path, e))?;
            files.push((path.clone(), settings));
            load_imports(path.parent().unwrap_or(base), depth + 1, files)?;
        }
    }
    Ok(())
}

/// The files a pattern names, sorted; a glob matching nothing is no error
/// (containerd skips it), a plain missing path is.
fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, ContainerdError> {
    let full = base.join(pattern);
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains('*') {
        return Ok(vec![full]);
    }
    let dir = full.parent().unwrap_or(base);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ContainerdError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| glob_match(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// `*` matches any run of characters; everything else itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The verdict on the merged settings: later files (imports) override.
fn judge(files: &[(PathBuf, Settings)], expected: Option<&Path>) -> Report {
    let main = &files[0].1;
    let mut merged = Settings {
        version: main.version,
        registry_table: main.registry_table.clone(),
        ..Settings::default()
    };
    for (_, s) in files {
        if s.config_path.is_some() {
            merged.config_path = s.config_path.clone();
            merged.registry_table = s.registry_table.clone();
        }
        if s.legacy_mirrors.is_some() {
            merged.legacy_mirrors = s.legacy_mirrors.clone();
        }
        if s.discard.is_some() {
            merged.discard = s.discard.clone();
        }
        if s.local_pull.is_some() {
            merged.local_pull = s.local_pull;
        }
    }
    let mut report = Report {
        config_version: main.version,
        config_path: merged.config_path.clone().filter(|p| !p.is_empty()),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    // What each containerd release really does with these settings was
    // measured on the real daemons (docs/containerd-matrix.md).
    version_problems(&mut report, main.version, &merged.registry_table);
    // containerd 2.1+ pulls through the transfer service unless told to
    // pull locally (or forced to, by discard_unpacked_layers).
    let local_pull = merged.local_pull == Some(true) || matches!(merged.discard, Some((true, _)));
    match merged.config_path.as_deref().filter(|p| !p.is_empty()) {
        Some(found) => {
            path_listed(&mut report, found, expected, Runtimes::ALL);
            if found.split(':').filter(|d| !d.is_empty()).count() > 1 && !local_pull {
                report.problems.push(Problem {
                    code: "config_path_list",
                    message: format!(
                        "{} config_path = \"{found}\" is a list: containerd 2.1+ pulls through its transfer service, which reads config_path as one directory and so no hosts.toml at all; set it to the one directory dfdaemon writes{} (or use_local_image_pull = true)",
                        merged.registry_table,
                        expected.map(|e| format!(" ({})", e.display())).unwrap_or_default()
                    ),
                    runtimes: Runtimes::from(2, 1),
                });
            }
        }
        None => {
            // Unset or empty: no hosts.toml on any release, but for 2.2+
            // pulling locally, whose built-in default is a list.
            let set = if merged.config_path.is_some() {
                "is empty"
            } else {
                "is not set"
            };
            let (runtimes, note) = if local_pull && main.version >= 3 {
                (
                    Runtimes::before(2, 2),
                    format!(" (2.2+ pulling locally read {DEFAULT_CONFIG_PATH_V2})"),
                )
            } else {
                (Runtimes::ALL, String::new())
            };
            report.problems.push(Problem {
                code: "no_config_path",
                message: format!(
                    "{} config_path {set}: containerd reads no hosts.toml files and never uses the mirror{note}; set config_path = \"{}\"",
                    merged.registry_table,
                    expected.map(|e| e.display().to_string()).unwrap_or_else(|| "/etc/containerd/certs.d".into())
                ),
                runtimes,
            });
            if !runtimes.is_all() {
                path_listed(
                    &mut report,
                    DEFAULT_CONFIG_PATH_V2,
                    expected,
                    Runtimes::from(2, 2),
                );
            }
        }
    }
    if let Some(table) = &merged.legacy_mirrors {
        report.problems.push(Problem {
            code: "legacy_mirrors",
            message: format!(
                "{table} is set: containerd uses this deprecated table instead of hosts.toml files (or, with config_path also set, refuses to load its CRI plugin); move it to hosts.toml files"
            ),
            runtimes: Runtimes::ALL,
        });
    }
    if let Some((true, table)) = &merged.discard {
        report.warnings.push(Problem {
            code: "discard_unpacked_layers",
            message: format!(
                "{table} discard_unpacked_layers = true: containerd drops layers after unpacking, so re-pulls fetch them again (from this node's dfdaemon cache, not the registry); pulls still go through the mirror"
            ),
            runtimes: Runtimes::ALL,
        });
    }
    report
}

/// Whether containerd's `found` config_path (a colon-separated list) holds
/// the directory dfdaemon writes to.
fn path_listed(report: &mut Report, found: &str, expected: Option<&Path>, runtimes: Runtimes) {
    let Some(expected) = expected else { return };
    if found.split(':').any(|d| Path::new(d) == expected) {
        return;
    }
    let default = if runtimes.is_all() {
        ""
    } else {
        " (containerd 2.x's default)"
    };
    report.problems.push(Problem {
        code: "config_path_mismatch",
        message: format!(
            "containerd reads hosts.toml from {found}{default}, but the mirror is configured in {}",
            expected.display()
        ),
        runtimes,
    });
}

/// Config file versions a release does not read as written.
fn version_problems(report: &mut Report, version: i64, registry_table: &str) {
    let (runtimes, why) = match version {
        // 2.0 to 2.2 load version 1 files without their registry table
        // ("Ignoring unknown key"); 2.4 migrates them (2.3 not measured).
        1 => (
            Runtimes {
                from: v(2, 0),
                before: v(2, 4),
            },
            format!("containerd 2.0 to 2.3 ignore {registry_table} in a version 1 file"),
        ),
        // 1.6 loads a version 3 file without its config_path; 1.7 refuses it.
        3 => (
            Runtimes::before(2, 0),
            "containerd 1.x does not read version 3 files (1.6 drops their config_path, 1.7 refuses them)".to_string(),
        ),
        // Version 4 exists from 2.3 on; older releases refuse it or drop it.
        4 => (
            Runtimes::before(2, 3),
            "containerd before 2.3 does not read version 4 files (2.0 to 2.2 refuse them, 1.6 drops their settings)".to_string(),
        ),
        _ => return,
    };
    report.problems.push(Problem {
        code: "config_version_unsupported",
        message: format!("{why}: pulls bypass the mirror; write the config in the version this containerd's `containerd config default` prints"),
        runtimes,
    });
}

/// No config file: containerd's defaults, which read no hosts.toml on any
/// release (2.2+ have a built-in config_path that only the local pull path
/// uses, and CRI pulls through the transfer service by default).
fn defaults_report(expected: Option<&Path>) -> Report {
    Report {
        config_version: 0,
        config_path: None,
        problems: vec![Problem {
            code: "no_config_path",
            message: format!(
                "no containerd config file: containerd's defaults read no hosts.toml files for CRI pulls, so pulls never use the mirror; write one with config_path = \"{}\"",
                expected.map(|e| e.display().to_string()).unwrap_or_else(|| "/etc/containerd/certs.d".into())
            ),
            runtimes: Runtimes::ALL,
        }],
        warnings: Vec::new(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.toml", "a.toml"));
        assert!(glob_match("10-*.toml", "10-mirror.toml"));
        assert!(!glob_match("*.toml", "a.toml.bak"));
        assert!(!glob_match("a*b*c", "ac"));
        assert!(glob_match("a*b*c", "axbyc"));
    }
}
