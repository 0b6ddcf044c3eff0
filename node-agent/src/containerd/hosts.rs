//! One registry's `hosts.toml`: the local mirror as the first host, with the
//! header naming the real upstream, merged into whatever the node already
//! had (its `server`, its other hosts, their certificates), which keep
//! working after the mirror as fallbacks.

use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::error::ContainerdError;

const BANNER: &str = "# Managed by dfdaemon: pulls try the Dragonfly mirror first, then the hosts below.\n# `dfdaemon containerd restore` puts back what was here before.\n";

/// A registry to mirror, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// Directory under containerd's config_path: `host[:port]` or `_default`.
    pub dir: String,
    /// The upstream's URL (`scheme://host[:port]`); none for `_default`,
    /// where containerd falls back to each image's own registry.
    pub server: Option<String>,
}

impl Registry {
    /// `HOST` means `https://HOST`; `docker.io` means Docker Hub's registry
    /// host; a URL names the scheme too; `_default` covers every registry
    /// without a directory of its own.
    pub fn parse(arg: &str) -> Result<Registry, ContainerdError> {
        let bad = |why: &str| ContainerdError::BadRegistry(arg.to_string(), why.to_string());
        let arg = arg.trim();
        if arg == "_default" {
            return Ok(Registry {
                dir: "_default".into(),
                server: None,
            });
        }
        let (scheme, rest) = match arg.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => ("http", rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => ("https", rest),
            Some(_) => return Err(bad("only http and https URLs")),
            None => ("https", arg),
        };
        let host = rest.strip_suffix('/').unwrap_or(rest).to_ascii_lowercase();
        let url =
            url::Url::parse(&format!("{scheme}://{host}/")).map_err(|e| bad(&e.to_string()))?;
        let authority = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return Err(bad("no host")),
        };
        if authority != host || host.starts_with('.') {
            return Err(bad(
                "expected host[:port] or http(s)://host[:port] without a path",
            ));
        }
        let server_host = match host.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            h => h,
        };
        let dir = match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            h => h.to_string(),
        };
        Ok(Registry {
            dir,
            server: Some(format!("{scheme}://{server_host}")),
        })
    }
}

/// The hosts.toml for `registry` given the node's original file (empty when
/// there was none). Pure, so applying twice gives the same bytes.
pub fn render(
    original: &str,
    registry: &Registry,
    mirror: &str,
) -> Result<String, ContainerdError> {
    let mut doc: DocumentMut = original
        .parse()
        .map_err(|e: toml_edit::TomlError| ContainerdError::BadHostsToml(e.to_string()))?;
    if let (Some(server), false) = (&registry.server, doc.contains_key("server")) {
        doc.insert("server", value(server.as_str()));
    }
    // Hosts written as dotted keys (`host."https://a".capabilities = ..`)
    // or inline tables print where their parent does, above any table we
    // add: they become tables of their own, placed after ours.
    let own_tables = own_tables_after_ours(&mut doc, mirror);
    // Ours goes before every table already there (containerd tries hosts
    // in file order) but after the root keys, which print at position 0:
    // existing tables move down to make room for ours, its header and the
    // hosts made tables above.
    let room = 2 + own_tables.len() as isize;
    for (_, item) in doc.iter_mut() {
        if let Some(table) = item.as_table_mut() {
            shift_positions(table, room);
        }
    }
    let hosts = doc
        .entry("host")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| ContainerdError::BadHostsToml("`host` is not a table".into()))?;
    for (i, (name, mut table)) in own_tables.into_iter().enumerate() {
        set_positions(&mut table, 3 + i as isize);
        hosts.insert(&name, Item::Table(table));
    }
    hosts.remove(mirror);
    let mut entry = Table::new();
    entry.set_position(Some(1));
    let mut capabilities = Array::new();
    capabilities.push("pull");
    capabilities.push("resolve");
    entry.insert("capabilities", value(capabilities));
    if let Some(server) = &registry.server {
        let mut header = Table::new();
        header.set_position(Some(2));
        let mut values = Array::new();
        values.push(server.as_str());
        header.insert(wire::headers::REGISTRY, value(values));
        entry.insert("header", Item::Table(header));
    }
    hosts.insert(mirror, Item::Table(entry));
    let mut text = doc.to_string();
    if !text.starts_with(BANNER) {
        text.insert_str(0, BANNER);
    }
    Ok(text)
}

/// The node's own file inside one dfdaemon rendered (possibly edited by an
/// admin since): the banner and every mirror host dfdaemon adds (a host
/// carrying the registry header, or named `mirror`) taken out, the rest kept
/// as written. Used when another writer edited a managed file, so that its
/// edits become the new original instead of being overwritten or lost.
pub fn strip_ours(text: &str, mirror: &str) -> Result<String, ContainerdError> {
    let body = text.strip_prefix(BANNER).unwrap_or(text);
    let mut doc: DocumentMut = body
        .parse()
        .map_err(|e: toml_edit::TomlError| ContainerdError::BadHostsToml(e.to_string()))?;
    if let Some(hosts) = doc.get_mut("host").and_then(Item::as_table_like_mut) {
        let ours: Vec<String> = hosts
            .iter()
            .filter(|(name, item)| *name == mirror || is_dragonfly_host(item))
            .map(|(name, _)| name.to_string())
            .collect();
        for name in ours {
            hosts.remove(&name);
        }
        if hosts.is_empty() {
            doc.remove("host");
        }
    }
    Ok(doc.to_string())
}

/// Whether a rendered file carries a dfdaemon mirror host.
pub fn has_ours(text: &str, mirror: &str) -> bool {
    let Ok(doc) = text.parse::<DocumentMut>() else {
        return false;
    };
    doc.get("host")
        .and_then(Item::as_table_like)
        .is_some_and(|hosts| {
            hosts
                .iter()
                .any(|(name, item)| name == mirror || is_dragonfly_host(item))
        })
}

/// A host entry with the `X-Dragonfly-Registry` header: only dfdaemon adds it.
fn is_dragonfly_host(item: &Item) -> bool {
    item.get("header")
        .and_then(|h| h.as_table_like())
        .is_some_and(|h| {
            h.iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(wire::headers::REGISTRY))
        })
}

/// Takes out of `host` every entry that is not a table with a header of its
/// own (dotted keys, inline tables), as such tables, in file order. The
/// `host` table itself then prints no keys of its own.
fn own_tables_after_ours(doc: &mut DocumentMut, mirror: &str) -> Vec<(String, Table)> {
    let Some(hosts) = doc.get_mut("host").and_then(Item::as_table_like_mut) else {
        return Vec::new();
    };
    let names: Vec<String> = hosts
        .iter()
        .filter(|(name, item)| {
            *name != mirror
                && match item {
                    Item::Table(t) => t.is_dotted(),
                    Item::Value(v) => v.is_inline_table(),
                    _ => false,
                }
        })
        .map(|(name, _)| name.to_string())
        .collect();
    let mut out = Vec::new();
    for name in names {
        let table = match hosts.remove(&name) {
            Some(Item::Table(mut t)) => {
                t.set_dotted(false);
                t
            }
            Some(Item::Value(toml_edit::Value::InlineTable(inline))) => inline.into_table(),
            _ => continue,
        };
        out.push((name, table));
    }
    if !out.is_empty() {
        // A `host` that was dotted (or inline) becomes a plain parent.
        match doc.get_mut("host") {
            Some(Item::Table(t)) => {
                t.set_dotted(false);
                if t.is_empty() {
                    t.set_implicit(true);
                }
            }
            Some(item @ Item::Value(_)) => {
                // An inline `host = { .. }` (now emptied of hosts) becomes
                // a table; anything else stays as it was.
                *item = match std::mem::take(item).into_table() {
                    Ok(mut t) => {
                        t.set_implicit(true);
                        Item::Table(t)
                    }
                    Err(unchanged) => unchanged,
                };
            }
            _ => {}
        }
    }
    out
}

/// Places `table` (and the tables under it) at `at`.
fn set_positions(table: &mut Table, at: isize) {
    table.set_position(Some(at));
    for (_, item) in table.iter_mut() {
        if let Some(t) = item.as_table_mut() {
            if !t.is_dotted() {
                set_positions(t, at);
            }
        }
    }
}

/// Moves `table` and every table under it down by `by`, arrays of tables
/// (`[[host.NAME.FIELD]]`) included: each prints at its own position, so one
/// left behind would keep its host above the mirror.
fn shift_positions(table: &mut Table, by: isize) {
    if let Some(p) = table.position() {
        table.set_position(Some(p + by));
    }
    for (_, item) in table.iter_mut() {
        match item {
            Item::Table(t) => shift_positions(t, by),
            Item::ArrayOfTables(array) => {
                for t in array.iter_mut() {
                    shift_positions(t, by);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_arguments() {
        let r = |dir: &str, server: Option<&str>| Registry {
            dir: dir.into(),
            server: server.map(Into::into),
        };
        assert_eq!(
            Registry::parse("docker.io").unwrap(),
            r("docker.io", Some("https://registry-1.docker.io"))
        );
        assert_eq!(
            Registry::parse("registry.example.com").unwrap(),
            r("registry.example.com", Some("https://registry.example.com"))
        );
        assert_eq!(
            Registry::parse("http://10.0.0.5:5000").unwrap(),
            r("10.0.0.5:5000", Some("http://10.0.0.5:5000"))
        );
        assert_eq!(
            Registry::parse("HTTPS://Quay.io/").unwrap(),
            r("quay.io", Some("https://quay.io"))
        );
        assert_eq!(Registry::parse("_default").unwrap(), r("_default", None));
        for bad in [
            "ftp://x",
            "x/y",
            "../etc",
            "https://x/v2",
            "a b",
            "",
            "user@x",
            "..",
        ] {
            assert!(Registry::parse(bad).is_err(), "{bad} accepted");
        }
    }

    /// Where each host's table starts in `text`: containerd tries hosts in
    /// this order.
    fn host_order(text: &str) -> Vec<String> {
        let doc: toml_edit::Document<String> = text.parse().unwrap();
        let hosts = doc["host"].as_table().unwrap();
        let mut at: Vec<(usize, String)> = hosts
            .iter()
            .map(|(name, item)| {
                let key = hosts.get_key_value(name).and_then(|(k, _)| k.span());
                let start = item
                    .as_table()
                    .and_then(|t| t.span())
                    .or(key)
                    .map(|s| s.start)
                    .unwrap();
                (start, name.to_string())
            })
            .collect();
        at.sort();
        at.into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn hosts_written_as_dotted_keys_or_inline_tables_come_after_the_mirror() {
        let registry = Registry::parse("registry.example.com").unwrap();
        let mirror = "http://127.0.0.1:65001";
        for original in [
            "host.\"https://a\".capabilities = [\"pull\"]\n",
            "host.\"https://a\" = { capabilities = [\"pull\"] }\n",
            "[host]\n\"https://a\".capabilities = [\"pull\"]\n",
            "[host]\n\"https://a\" = { capabilities = [\"pull\"] }\n[host.\"https://b\"]\ncapabilities = [\"pull\"]\n",
            "host = { \"https://a\" = { capabilities = [\"pull\"] } }\n",
        ] {
            let rendered = render(original, &registry, mirror).unwrap();
            let order = host_order(&rendered);
            assert_eq!(order[0], mirror, "{original:?} gave\n{rendered}");
            assert!(order.contains(&"https://a".to_string()), "{rendered}");
            // Kept as it was, and the same bytes when applied again.
            let doc: toml_edit::DocumentMut = rendered.parse().unwrap();
            assert_eq!(
                doc["host"]["https://a"]["capabilities"][0].as_str(),
                Some("pull"),
                "{rendered}"
            );
            assert_eq!(render(&rendered, &registry, mirror).unwrap(), rendered);
        }
    }

    #[test]
    fn hosts_defined_through_arrays_of_tables_come_after_the_mirror() {
        let registry = Registry::parse("registry.example.com").unwrap();
        let mirror = "http://127.0.0.1:65001";
        for original in [
            // The fuzzer's input (fuzz/known/array_of_tables_host).
            "# HTq ts0`\n[[host.ght.ghst]] #[dfohst}f\n",
            "[[host.\"https://a\".extra]]\nk = 1\n[[host.\"https://a\".extra]]\nk = 2\n",
            "[host.\"https://b\"]\ncapabilities = [\"pull\"]\n[[host.\"https://a\".x.y]]\nk = 1\n",
        ] {
            let rendered = render(original, &registry, mirror).unwrap();
            let doc: toml_edit::Document<String> = rendered.parse().unwrap();
            let hosts = doc["host"].as_table().unwrap();
            let mirror_at = hosts[mirror].as_table().unwrap().span().unwrap().start;
            let arrays = rendered.match_indices("[[").map(|(at, _)| at);
            for at in arrays {
                assert!(mirror_at < at, "{original:?} gave\n{rendered}");
            }
            assert_eq!(render(&rendered, &registry, mirror).unwrap(), rendered);
        }
    }
}
