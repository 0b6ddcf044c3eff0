//! The node agent's modules depend on each other one way only: no module
//! uses one that uses it back, directly or through others. Read from the
//! sources (`crate::`, `super::` and child-module paths outside test code),
//! so a new cycle fails here before anyone has to untangle it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("read source dir");
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `mirror/mod.rs` -> `mirror`, `mirror/blob.rs` -> `mirror::blob`.
fn module_path(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The longest prefix of `path` that names a module.
fn resolve<'a>(modules: &'a BTreeSet<String>, path: &str) -> Option<&'a String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| modules.get(&parts[..n].join("::")))
}

/// Every `a::b::c` path a `use` group like `crate::{a, b::{c, d}}` names.
fn expand_groups(prefix: &str, group: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut start = 0;
    let bytes: Vec<char> = group.chars().collect();
    let mut items = Vec::new();
    for (i, c) in bytes.iter().enumerate() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(bytes[start..i].iter().collect::<String>());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(bytes[start..].iter().collect::<String>());
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once('{') {
            Some((base, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or(rest);
                expand_groups(&format!("{prefix}{base}"), inner, out);
            }
            None => {
                let name = item.split_whitespace().next().unwrap_or(item);
                out.push(format!("{prefix}{name}"));
            }
        }
    }
}

fn dependencies(module: &str, source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    // Tests may reach anywhere; only the code that ships counts.
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut paths = Vec::new();
    let group = regex::Regex::new(r"crate::((?:[a-z_0-9]+::)*)\{").expect("regex");
    for found in group.captures_iter(code) {
        let open = found.get(0).expect("match").end();
        let mut depth = 1;
        let end = code[open..]
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(open + i)
            })
            .unwrap_or(code.len());
        expand_groups(&found[1], &code[open..end], &mut paths);
    }
    let plain = regex::Regex::new(r"crate::([A-Za-z_0-9:]+)").expect("regex");
    paths.extend(plain.captures_iter(code).map(|c| c[1].to_string()));
    let sup = regex::Regex::new(r"((?:super::)+)([A-Za-z_0-9:]+)").expect("regex");
    for found in sup.captures_iter(code) {
        let levels = found[1].len() / "super::".len();
        let mut base: Vec<&str> = module.split("::").filter(|p| !p.is_empty()).collect();
        base.truncate(base.len().saturating_sub(levels));
        base.push(&found[2]);
        paths.push(base.join("::"));
    }
    // A parent using its own children by their bare names.
    let child = regex::Regex::new(r"(?m)^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;")
        .expect("regex");
    for found in child.captures_iter(code) {
        let name = &found[1];
        let used =
            regex::Regex::new(&format!(r"(?:^|[^a-z_0-9:])(?:self::)?{name}::")).expect("regex");
        if used.is_match(code) {
            let prefix = if module.is_empty() {
                String::new()
            } else {
                format!("{module}::")
            };
            paths.push(format!("{prefix}{name}"));
        }
    }
    paths
        .iter()
        .filter_map(|p| resolve(modules, p.trim_end_matches(':')))
        .filter(|d| d.as_str() != module && !d.is_empty())
        .cloned()
        .collect()
}

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| !f.starts_with(src.join("bin")));
    let modules: BTreeSet<String> = files.iter().map(|f| module_path(src, f)).collect();
    files
        .iter()
        .map(|f| {
            let module = module_path(src, f);
            let source = std::fs::read_to_string(f).expect("read source");
            let deps = dependencies(&module, &source, &modules);
            (module, deps)
        })
        .collect()
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on_stack.insert(v);
        for next in w.graph.get(v).into_iter().flatten() {
            let next = next.as_str();
            if !w.index.contains_key(next) {
                visit(w, next);
                let low = w.low[v].min(w.low[next]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(next) {
                let low = w.low[v].min(w.index[next]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(top) = w.stack.pop() {
                w.on_stack.remove(top);
                component.push(top.to_string());
                if top == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for module in graph.keys() {
        if !walk.index.contains_key(module.as_str()) {
            visit(&mut walk, module);
        }
    }
    walk.found
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 40, "found only {} modules", graph.len());
    let found = cycles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| {
                    format!(
                        "{m} -> {:?}",
                        graph[m]
                            .intersection(&c.iter().cloned().collect())
                            .collect::<Vec<_>>()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles: {described:#?}");
}

#[test]
fn the_checker_sees_a_cycle_through_a_use_group() {
    let modules: BTreeSet<String> = ["a", "b", "c", "c::d"].map(String::from).into();
    let mut graph = Graph::new();
    graph.insert(
        "a".into(),
        dependencies("a", "use crate::{b::X, c::d::{Y, Z}};", &modules),
    );
    graph.insert(
        "b".into(),
        dependencies("b", "fn f() { crate::c::d::g() }", &modules),
    );
    graph.insert(
        "c".into(),
        dependencies("c", "mod d;\nfn h() { d::g() }", &modules),
    );
    graph.insert(
        "c::d".into(),
        dependencies(
            "c::d",
            "use super::super::a;\n#[cfg(test)]\nuse crate::b;",
            &modules,
        ),
    );
    assert_eq!(graph["a"], ["b", "c::d"].map(String::from).into());
    assert_eq!(graph["c"], ["c::d"].map(String::from).into());
    assert_eq!(
        cycles(&graph),
        vec![vec!["a".to_string(), "b".into(), "c::d".into()]]
    );
}
