//! containerd's config.toml as dfdaemon checks it, the `--registry`
//! arguments, and the node's hosts.toml as dfdaemon rewrites it. All pure:
//! nothing here touches the filesystem.
//!
//! Input: a flags byte, then NUL-separated UTF-8 fields: the registry
//! argument, the original hosts.toml, containerd's config.toml (missing
//! fields are empty). Flags: bits 0-1 pick the mirror URL (3: the registry
//! argument is also the mirror URL), bit 2 whether the check expects a
//! config_path.
//!
//! Invariants: a registry argument that parses names one plain directory
//! under config_path and an http(s) server; a rendered hosts.toml parses
//! again, carries the banner, has the mirror with its capabilities and
//! upstream header, keeps or sets `server`, and puts the mirror first in
//! file order (containerd tries hosts in that order); the check report is
//! consistent with what it found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::containerd::check;
use node_agent::containerd::hosts::{self, Registry};
use node_agent::containerd::ContainerdError;
use std::path::Path;
use toml_edit::{Document, Item, Table};

// Bugs found here (fuzz/known), all fixed, so nothing is skipped:
//
// - `toml_edit_panic`: toml_edit 0.23.10 panicked ("all items have spans",
//   parser/document.rs:491) on some invalid documents, e.g. `==\n.=`,
//   instead of returning an error. Fixed by moving to 0.25; no longer
//   skipped.
// - `dotted_hosts`: an original hosts.toml that defined hosts with dotted
//   keys (`host."https://a".capabilities = [...]`) or inline tables kept
//   them above the mirror's `[host."..."]` table, so containerd tried them
//   first. Fixed: such hosts become tables placed after the mirror's (unit
//   test `hosts_written_as_dotted_keys_or_inline_tables_come_after_the_mirror`);
//   no longer skipped.
// - `array_of_tables_host`: a host defined through an array of tables
//   (`[[host.NAME.FIELD]]`) kept its position above the mirror's table.
//   Fixed: arrays of tables move down with the other tables (unit test
//   `hosts_defined_through_arrays_of_tables_come_after_the_mirror`).

/// `text` parsed by toml_edit as the node agent does. (toml_edit 0.23
/// panicked on some inputs, fuzz/known/toml_edit_panic; 0.25 does not, so
/// a panic here is a finding again.)
fn parse_guarded(text: &str) -> Option<Result<Document<&str>, toml_edit::TomlError>> {
    Some(Document::parse(text))
}

const CODES: &[&str] = &[
    "no_config_path",
    "config_path_mismatch",
    "config_path_list",
    "config_version_unsupported",
    "legacy_mirrors",
];
const WARNINGS: &[&str] = &["discard_unpacked_layers"];

fn check_registry(arg: &str) -> Option<Registry> {
    let registry = Registry::parse(arg).ok()?;
    let dir = &registry.dir;
    // Joined to containerd's config_path: one plain component.
    assert!(
        !dir.is_empty() && !dir.starts_with('.'),
        "dir {dir:?} from {arg:?}"
    );
    assert!(!dir.contains(['/', '\\', '\0']), "dir {dir:?} from {arg:?}");
    match &registry.server {
        None => assert_eq!(dir, "_default"),
        Some(server) => assert!(
            server.starts_with("http://") || server.starts_with("https://"),
            "server {server:?} from {arg:?}"
        ),
    }
    Some(registry)
}

/// Where `item` first appears in the text it was parsed from.
fn first_offset(item: &Item) -> Option<usize> {
    match item {
        Item::None => None,
        Item::Value(v) => v.span().map(|s| s.start),
        Item::ArrayOfTables(a) => a.span().map(|s| s.start),
        Item::Table(t) => table_offset(t),
    }
}

fn table_offset(table: &Table) -> Option<usize> {
    let mut first = table.span().map(|s| s.start);
    for (name, item) in table.iter() {
        let key = table
            .get_key_value(name)
            .and_then(|(k, _)| k.span())
            .map(|s| s.start);
        for offset in [key, first_offset(item)].into_iter().flatten() {
            first = Some(first.map_or(offset, |f| f.min(offset)));
        }
    }
    first
}

fn check_render(
    original: &str,
    parsed: Option<&Document<&str>>,
    registry: &Registry,
    mirror: &str,
) {
    let rendered = match hosts::render(original, registry, mirror) {
        Ok(text) => text,
        Err(ContainerdError::BadHostsToml(_)) => return,
        Err(e) => panic!("render answered {e:?}"),
    };
    let parsed = parsed.unwrap_or_else(|| panic!("rendered an original toml_edit refuses"));
    assert!(rendered.starts_with("# Managed by dfdaemon"));
    let doc = match Document::parse(rendered.as_str()) {
        Ok(doc) => doc,
        Err(e) => panic!("rendered hosts.toml does not parse: {e}\n{rendered}"),
    };
    let root = doc.as_item().as_table().expect("root table");
    if let Some(server) = &registry.server {
        assert!(root.contains_key("server"), "no server in\n{rendered}");
        // An original `server` is kept; otherwise it is the upstream.
        if !parsed.as_table().contains_key("server") {
            assert_eq!(root["server"].as_str(), Some(server.as_str()));
        }
    }
    let hosts_table = root
        .get("host")
        .and_then(Item::as_table)
        .unwrap_or_else(|| panic!("no [host] table in\n{rendered}"));
    let ours = hosts_table
        .get(mirror)
        .and_then(Item::as_table)
        .unwrap_or_else(|| panic!("no host {mirror:?} in\n{rendered}"));
    let capabilities: Vec<&str> = ours
        .get("capabilities")
        .and_then(Item::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(capabilities, ["pull", "resolve"], "in\n{rendered}");
    if let Some(server) = &registry.server {
        let header = ours
            .get("header")
            .and_then(|h| h.get(wire::headers::REGISTRY))
            .and_then(Item::as_array)
            .and_then(|a| a.get(0))
            .and_then(|v| v.as_str());
        assert_eq!(header, Some(server.as_str()), "in\n{rendered}");
    }
    // containerd orders hosts by where they appear in the file.
    let mirror_at = table_offset(ours)
        .into_iter()
        .chain(
            hosts_table
                .get_key_value(mirror)
                .and_then(|(k, _)| k.span())
                .map(|s| s.start),
        )
        .min()
        .expect("mirror has a position");
    for (name, item) in hosts_table.iter() {
        if name == mirror || !item.is_table_like() {
            continue;
        }
        let key = hosts_table
            .get_key_value(name)
            .and_then(|(k, _)| k.span())
            .map(|s| s.start);
        if let Some(at) = key.into_iter().chain(first_offset(item)).min() {
            assert!(
                mirror_at < at,
                "host {name:?} (at {at}) comes before the mirror (at {mirror_at}) in\n{rendered}"
            );
        }
    }
}

fn check_config(text: &str, expected: Option<&Path>) {
    let report = match check::check(text, expected) {
        Ok(report) => report,
        Err(ContainerdError::BadConfig(_)) => return,
        Err(e) => panic!("check answered {e:?}"),
    };
    assert!(
        (1..=4).contains(&report.config_version),
        "{}",
        report.config_version
    );
    for problem in &report.problems {
        assert!(CODES.contains(&problem.code), "{}", problem.code);
    }
    for warning in &report.warnings {
        assert!(WARNINGS.contains(&warning.code), "{}", warning.code);
    }
    let has = |code: &str| report.problems.iter().any(|p| p.code == code);
    match &report.config_path {
        // No config_path: reported, on every release or on those the
        // built-in default does not cover.
        None => assert!(has("no_config_path")),
        Some(path) => {
            assert!(!path.is_empty());
            assert!(!has("no_config_path"));
            if expected.is_none() {
                assert!(!has("config_path_mismatch"));
            }
            if !path.contains(':') {
                assert!(!has("config_path_list"));
            }
        }
    }
    // The same report narrowed to one release keeps a subset, all of them
    // holding there.
    for release in ["1.6.20", "2.1.9", "2.4.2"] {
        let narrowed = report.clone().for_runtime(release);
        assert!(narrowed.problems.len() <= report.problems.len());
        assert!(narrowed.problems.iter().all(|p| p.runtimes.is_all()));
    }
    // The operator's node report carries it as JSON.
    serde_json::to_string(&report).expect("report as JSON");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let mut fields = rest.splitn(3, '\0');
    let arg = fields.next().unwrap_or("");
    let hosts_toml = fields.next().unwrap_or("");
    let config_toml = fields.next().unwrap_or("");
    let mirror = match flags & 3 {
        0 => "http://127.0.0.1:65001",
        1 => "http://[::1]:65001",
        2 => "http://10.0.0.7:4001",
        _ => arg,
    };
    // An argument that does not parse renders for `_default` (no server).
    let registry = check_registry(arg).unwrap_or(Registry {
        dir: "_default".into(),
        server: None,
    });
    if let Some(parsed) = parse_guarded(hosts_toml) {
        check_render(hosts_toml, parsed.as_ref().ok(), &registry, mirror);
    }
    if parse_guarded(config_toml).is_some() {
        let expected = Path::new("/etc/containerd/certs.d");
        check_config(config_toml, (flags & 4 != 0).then_some(expected));
    }
});
