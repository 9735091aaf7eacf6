//! The architecture's rules that a compiler does not check, checked on the workspace itself:
//! the worker daemon links no training code, and no two source files of a crate import each
//! other (directly or around a loop).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use convoy_testkit::repo_root;
use serde_json::Value;

/// Every package the `convoy-worker` package pulls in to build (normal and build dependencies,
/// transitively; not its tests' dev-dependencies).
fn build_closure(metadata: &Value, root: &str) -> BTreeSet<String> {
    let packages: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["name"].as_str().expect("name"),
            )
        })
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("a resolved graph")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let start = packages
        .iter()
        .find(|(_, name)| **name == root)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("no package {root}"));
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let normal_or_build = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].as_str() != Some("dev"));
            if normal_or_build {
                todo.push(dep["pkg"].as_str().expect("pkg"));
            }
        }
    }
    seen.into_iter()
        .map(|id| packages[id].to_string())
        .collect()
}

#[test]
fn the_worker_daemon_links_no_training_code() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let daemon = build_closure(&metadata, "convoy-worker");
    for banned in [
        "convoy-engine",
        "convoy-kernels",
        "convoy-collective",
        "cudarc",
        "gemm",
        "tiktoken-rs",
    ] {
        assert!(
            !daemon.contains(banned),
            "convoy-worker depends on {banned}"
        );
    }
    // The rank, which trains, does link them: the check above is not vacuous.
    let rank = build_closure(&metadata, "convoy-rank");
    assert!(rank.contains("convoy-engine") && rank.contains("cudarc"));
}

/// A crate's source files by module path (`server/event_loop` for `src/server/event_loop.rs`,
/// `server` for `src/server/mod.rs`, the empty path for `src/lib.rs` or `src/main.rs`).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The source without comments and without its unit-test module (tests import their parent).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file names through `crate::…` and `super::…` (including the items of
/// `use crate::{a, b::c}` groups).
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|seg| {
                seg.trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty())
            .collect()
    };
    let mut out = vec![];
    for (i, _) in text
        .match_indices("crate::")
        .chain(text.match_indices("super::"))
    {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `convoy_crate::` and the like
        }
        let rest = &text[i..];
        let mut base: Vec<String> = if rest.starts_with("crate::") {
            vec![]
        } else {
            module[..module.len().saturating_sub(1)].to_vec()
        };
        let mut path = rest.strip_prefix("crate::").unwrap_or(rest);
        while let Some(r) = path.strip_prefix("super::") {
            base.pop();
            path = r;
        }
        if let Some(group) = path.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let mut p = base.clone();
                p.extend(ident(item.split(" as ").next().unwrap_or("")));
                out.push(p);
            }
        } else {
            let mut p = base;
            p.extend(ident(path));
            out.push(p);
        }
    }
    out
}

/// Strongly connected components of more than one file.
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    fn visit<'a>(
        v: &'a Vec<String>,
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        seen: &mut BTreeSet<&'a Vec<String>>,
        order: &mut Vec<&'a Vec<String>>,
    ) {
        if !seen.insert(v) {
            return;
        }
        for w in &edges[v] {
            visit(w, edges, seen, order);
        }
        order.push(v);
    }
    let mut seen = BTreeSet::new();
    let mut order = vec![];
    for v in edges.keys() {
        visit(v, edges, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (v, ws) in edges {
        for w in ws {
            reversed.entry(w).or_default().push(v);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = vec![];
    for v in order.into_iter().rev() {
        if assigned.contains(v) {
            continue;
        }
        let mut comp = vec![];
        let mut todo = vec![v];
        while let Some(x) = todo.pop() {
            if !assigned.insert(x) {
                continue;
            }
            comp.push(x.clone());
            todo.extend(reversed.get(x).into_iter().flatten().copied());
        }
        if comp.len() > 1 {
            out.push(comp);
        }
    }
    out
}

#[test]
fn no_two_files_of_a_crate_import_each_other() {
    let root = repo_root();
    let mut found = vec![];
    let mut files = 0;
    for entry in std::fs::read_dir(&root).expect("the repository").flatten() {
        let src = entry.path().join("src");
        if !entry.path().join("Cargo.toml").is_file() || !src.is_dir() {
            continue;
        }
        let mods = modules(&src);
        files += mods.len();
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (m, path) in &mods {
            let text = code(&std::fs::read_to_string(path).expect("a source file"));
            let targets = edges.entry(m.clone()).or_default();
            for r in references(m, &text) {
                // The longest prefix of the path that is a file: the module it lands in.
                let target = (0..=r.len())
                    .rev()
                    .map(|n| r[..n].to_vec())
                    .find(|p| mods.contains_key(p));
                if let Some(t) = target
                    && t != *m
                {
                    targets.insert(t);
                }
            }
        }
        for comp in cycles(&edges) {
            let names: Vec<String> = comp
                .iter()
                .map(|m| {
                    format!(
                        "{}/src/{}",
                        entry.file_name().to_string_lossy(),
                        m.join("/")
                    )
                })
                .collect();
            found.push(names.join(" <-> "));
        }
    }
    assert!(files > 50, "only {files} source files found under {root:?}");
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}
