//! The layout docs/ARCHITECTURE.md promises, checked on the source itself: which crate may depend
//! on what, and no import cycle between the files of one crate.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kit::process::workspace_file;

/// The crates `package` compiles in (normal dependencies, no dev or build ones).
fn dependencies(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-e", "normal", "--prefix", "none", "-p", package])
        .current_dir(workspace_file(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn each_crate_depends_only_on_what_its_floor_allows() {
    let workspace = |deps: &BTreeSet<String>, package: &str| -> BTreeSet<String> {
        deps.iter()
            .filter(|d| d.starts_with("tillbridge") && *d != package)
            .cloned()
            .collect()
    };
    let allowed: [(&str, &[&str], &[&str]); 7] = [
        (
            "tillbridge-domain",
            &[],
            &["rdkafka", "sled", "prost", "reqwest"],
        ),
        (
            "tillbridge-proto",
            &["tillbridge-domain"],
            &["rdkafka", "rdkafka-sys", "sled", "prometheus", "reqwest"],
        ),
        (
            "tillbridge-core",
            &["tillbridge-domain", "tillbridge-proto"],
            &["reqwest", "governor"],
        ),
        (
            "tillbridge-ingest",
            &["tillbridge-domain", "tillbridge-proto", "tillbridge-core"],
            &["reqwest", "governor", "hyper"],
        ),
        (
            "tillbridge-delivery",
            &["tillbridge-domain", "tillbridge-proto", "tillbridge-core"],
            &[],
        ),
        (
            "tillbridge-reconciler",
            &["tillbridge-domain", "tillbridge-proto", "tillbridge-core"],
            &["reqwest", "governor", "hyper"],
        ),
        (
            "tillbridge-fraud-guard",
            &["tillbridge-domain", "tillbridge-proto", "tillbridge-core"],
            &["reqwest", "governor", "hyper"],
        ),
    ];
    for (package, may, never) in allowed {
        let deps = dependencies(package);
        let got = workspace(&deps, package);
        let may: BTreeSet<String> = may.iter().map(|s| s.to_string()).collect();
        assert!(
            got.is_subset(&may),
            "{package} depends on {:?}, beyond {may:?}",
            got.difference(&may).collect::<Vec<_>>()
        );
        for n in never {
            assert!(!deps.contains(*n), "{package} compiles {n}");
        }
    }
}

/// The module path of every `.rs` file under `src`, `lib`/`main`/`mod` files naming their folder.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("lib" | "main" | "mod")
            ) {
                parts.pop();
            }
            (parts.join("::"), p)
        })
        .collect()
}

/// The files `text` (the file of module `this`) refers to: `crate::a::b`, `super::x`,
/// `self::x` and its child modules by bare name. Test modules and comments are left out.
fn references(this: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let text = text.split("#[cfg(test)]").next().unwrap();
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let base: Vec<&str> = if this.is_empty() {
        Vec::new()
    } else {
        this.split("::").collect()
    };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut refs = BTreeSet::new();
    // The longest module that is a prefix of `path`.
    let resolve = |path: Vec<String>, refs: &mut BTreeSet<String>| {
        for k in (0..=path.len()).rev() {
            let cand = path[..k].join("::");
            if modules.contains(&cand) {
                refs.insert(cand);
                return;
            }
        }
    };
    for (i, _) in code.match_indices("::") {
        // The path this `::` belongs to, from its first segment.
        let start = code[..i]
            .rfind(|c: char| !(ident(c) || c == ':'))
            .map_or(0, |s| s + 1);
        let end = code[i..]
            .find(|c: char| !(ident(c) || c == ':'))
            .map_or(code.len(), |e| i + e);
        if code[start..i].contains("::") {
            continue; // not the first `::` of its path
        }
        let segs: Vec<String> = code[start..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let Some(head) = segs.first() else { continue };
        let path: Vec<String> = match head.as_str() {
            "crate" => segs[1..].to_vec(),
            "super" => base[..base.len().saturating_sub(1)]
                .iter()
                .map(|s| s.to_string())
                .chain(segs[1..].iter().cloned())
                .collect(),
            "self" => base
                .iter()
                .map(|s| s.to_string())
                .chain(segs[1..].iter().cloned())
                .collect(),
            child => {
                let mut p: Vec<String> = base.iter().map(|s| s.to_string()).collect();
                p.push(child.to_owned());
                if !modules.contains(&p.join("::")) {
                    continue; // another crate, or an item
                }
                p.extend(segs[1..].iter().cloned());
                p
            }
        };
        resolve(path, &mut refs);
    }
    refs.remove(this);
    refs
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let mut crates: Vec<PathBuf> = std::fs::read_dir(workspace_file("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .collect();
    crates.push(workspace_file("tests/src"));
    let mut cycles = Vec::new();
    for src in crates {
        let mods = modules(&src);
        let names: BTreeSet<String> = mods.keys().cloned().collect();
        let graph: BTreeMap<&str, BTreeSet<String>> = mods
            .iter()
            .map(|(m, p)| {
                let text = std::fs::read_to_string(p).unwrap();
                (m.as_str(), references(m, &text, &names))
            })
            .collect();
        // A cycle exists iff some module reaches itself.
        for start in graph.keys() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<(String, Vec<String>)> = graph[start]
                .iter()
                .map(|n| (n.clone(), vec![start.to_string(), n.clone()]))
                .collect();
            while let Some((node, path)) = stack.pop() {
                if node == *start {
                    cycles.push(format!("{}: {}", src.display(), path.join(" -> ")));
                    break;
                }
                if !seen.insert(node.clone()) {
                    continue;
                }
                for n in &graph[node.as_str()] {
                    let mut p = path.clone();
                    p.push(n.clone());
                    stack.push((n.clone(), p));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles (\"\" is lib.rs):\n{}",
        cycles.join("\n")
    );
}
