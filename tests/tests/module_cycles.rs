//! The crates' modules import one another in one direction only: this test reads the
//! `crate::…` paths of every module of `coordinator`, `client` and `core` (outside its
//! `#[cfg(test)] mod tests` and comments) and fails on an import cycle, naming its modules.
//! A cycle is where a change in one module ripples through others for no reason; see
//! ARCHITECTURE.md for the layering.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fedmark_tests::sim::workspace_root;

/// Module → the crate's modules it names, for every `.rs` file under `src` (a folder module
/// counts as one module; `lib.rs`, `main.rs` and `bin/` are the crate's roots, not modules).
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    let mut sources = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            sources.push(path);
        }
    }
    for path in sources {
        let rel = path.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if matches!(top.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        graph
            .entry(top.clone())
            .or_default()
            .extend(named_modules(&text));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (module, deps) in graph.iter_mut() {
        deps.retain(|d| modules.contains(d) && d != module);
    }
    graph
}

/// The first segments of the `crate::` paths in `text`, outside comments and the test module.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut names = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c}`: each member's first segment.
                let inner = group.split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let name = part.trim().split("::").next().unwrap_or("");
                    if !name.is_empty() {
                        names.insert(name.to_owned());
                    }
                }
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The import cycles of `graph`: its strongly connected components of more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on its transpose.
    fn finish(
        v: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(v.to_owned()) {
            return;
        }
        for w in &graph[v] {
            finish(w, graph, seen, order);
        }
        order.push(v.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in graph.keys() {
        finish(v, graph, &mut seen, &mut order);
    }
    let mut transpose: BTreeMap<String, BTreeSet<String>> =
        graph.keys().map(|k| (k.clone(), BTreeSet::new())).collect();
    for (v, deps) in graph {
        for w in deps {
            transpose.get_mut(w).unwrap().insert(v.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        if assigned.contains(v) {
            continue;
        }
        let mut component = Vec::new();
        let mut stack = vec![v.clone()];
        while let Some(x) = stack.pop() {
            if !assigned.insert(x.clone()) {
                continue;
            }
            component.push(x.clone());
            stack.extend(transpose[&x].iter().cloned());
        }
        if component.len() > 1 {
            component.sort();
            out.push(component);
        }
    }
    out
}

#[test]
fn no_crate_has_an_import_cycle_among_its_modules() {
    for krate in ["coordinator", "client", "core"] {
        let src = workspace_root().join(krate).join("src");
        let graph = imports(&src);
        assert!(graph.len() > 5, "{krate}: read {} modules", graph.len());
        let found = cycles(&graph);
        assert!(
            found.is_empty(),
            "{krate} has import cycles among its modules: {found:?}"
        );
    }
}

/// The check itself: a cycle through a `use crate::{…}` group and a plain path is found, a
/// mention in a comment or in the test module is not an import.
#[test]
fn the_check_finds_a_cycle_and_ignores_comments_and_tests() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a.rs", "use crate::{b::B, c};\n");
    write(
        "b.rs",
        "fn f() { crate::c::g() } // crate::a is only named here\n",
    );
    write(
        "c.rs",
        "pub fn g() {}\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
    );
    let graph = imports(dir.path());
    assert_eq!(cycles(&graph), Vec::<Vec<String>>::new(), "{graph:?}");
    write("c.rs", "use crate::a::A;\npub fn g() {}\n");
    let graph = imports(dir.path());
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]], "{graph:?}");
}
