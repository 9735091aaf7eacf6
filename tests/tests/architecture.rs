//! The architecture's rules that a compiler does not check, checked on the workspace itself:
//! the daemons (worker and coordinator) link no training code, and no two source files of a
//! crate import each other (directly or around a loop).

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
fn the_daemons_link_no_training_code() {
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
    // The worker daemon and the coordinator validate or pass on specs; neither trains.
    for daemon in ["convoy-worker", "convoy-coordinator"] {
        let closure = build_closure(&metadata, daemon);
        for banned in [
            "convoy-engine",
            "convoy-kernels",
            "convoy-collective",
            "cudarc",
            "gemm",
            "tiktoken-rs",
        ] {
            assert!(!closure.contains(banned), "{daemon} depends on {banned}");
        }
    }
    // The GPU stand-ins are test support: no convoy binary links them (emu/README.md).
    for binary in [
        "convoy-cli",
        "convoy-worker",
        "convoy-coordinator",
        "convoy-rank",
    ] {
        let closure = build_closure(&metadata, binary);
        for stand_in in ["convoy-cuda-emu", "convoy-nccl-emu"] {
            assert!(
                !closure.contains(stand_in),
                "{binary} depends on {stand_in}"
            );
        }
    }
    // The rank, which trains, does link them: the check above is not vacuous.
    let rank = build_closure(&metadata, "convoy-rank");
    assert!(rank.contains("convoy-engine") && rank.contains("cudarc"));
}

/// A crate's source files by module path (`server/event_loop` for `src/server/event_loop.rs`,
/// `server` for `src/server/mod.rs`, the empty path for the crate root: `src/lib.rs`, or
/// `src/main.rs` in a crate without a library). Beside a library, `src/main.rs` is a crate of
/// its own and is left out: such binaries are thin wrappers without modules (checked by the
/// caller).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let has_lib = src.join("lib.rs").is_file();
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
            if parts == ["main"] {
                if has_lib {
                    continue;
                }
                parts.pop();
            }
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The source without comments, without its unit-test module (tests import their parent) and
/// without re-exports (`pub use child::Item` publishes a child's item; it is not a use of it).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("pub use ") || l.starts_with("pub(crate) use "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The child modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_children(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub "))
                .unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(|name| name.trim().to_string())
        })
        .collect()
}

/// The module paths a file names through `crate::…`, `super::…`, `self::…` and its own child
/// modules (`child::…`), including the items of `use crate::{a, b::c}` groups.
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
    let children: Vec<String> = declared_children(text)
        .into_iter()
        .map(|c| format!("{c}::"))
        .collect();
    let starts = ["crate::", "super::", "self::"]
        .into_iter()
        .map(String::from)
        .chain(children);
    let mut found: Vec<(usize, String)> = vec![];
    for start in starts {
        found.extend(text.match_indices(&start).map(|(i, _)| (i, start.clone())));
    }
    for (i, start) in found {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `convoy_crate::`, `a::child::` and the like
        }
        let rest = &text[i + start.len()..];
        let mut base: Vec<String> = match start.as_str() {
            "crate::" => vec![],
            "super::" => module[..module.len().saturating_sub(1)].to_vec(),
            // `self::x` names a child of this module.
            "self::" => module.to_vec(),
            // `child::x`: the child is the first segment.
            child => {
                let mut b = module.to_vec();
                b.push(child.trim_end_matches("::").to_string());
                b
            }
        };
        let mut path = rest;
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
    // The crates at the top level, and those one folder down (`emu/cuda`).
    let mut crates: Vec<PathBuf> = vec![];
    for entry in std::fs::read_dir(&root).expect("the repository").flatten() {
        crates.push(entry.path());
        if entry.file_name() == "emu" {
            crates.extend(
                std::fs::read_dir(entry.path())
                    .expect("emu/")
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    for dir in crates {
        let src = dir.join("src");
        if !dir.join("Cargo.toml").is_file() || !src.is_dir() {
            continue;
        }
        let name = dir
            .strip_prefix(&root)
            .expect("under the root")
            .display()
            .to_string();
        if let (true, Ok(main)) = (
            src.join("lib.rs").is_file(),
            std::fs::read_to_string(src.join("main.rs")),
        ) {
            let mods = declared_children(&code(&main));
            assert!(
                mods.is_empty(),
                "{name}/src/main.rs declares modules {mods:?}: binaries are thin wrappers over \
                 their library"
            );
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
                .map(|m| format!("{name}/src/{}", m.join("/")))
                .collect();
            found.push(names.join(" <-> "));
        }
    }
    assert!(files > 50, "only {files} source files found under {root:?}");
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}
