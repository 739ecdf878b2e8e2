//! The host library stays a host: an embedder that depends on
//! `host-harness` pulls in none of the test kit (emulators and their HTTP
//! server, Spin checker) nor the CLI and its argument parser. This is the README's
//! `cargo tree` check, run by the tests so it cannot silently rot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The crates `package` links outside its tests (`cargo tree -e normal`).
fn normal_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    tree.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Asserts that `package` links `wanted` and none of `unwanted`.
fn assert_links(package: &str, wanted: &[&str], unwanted: &[&str]) {
    let crates = normal_dependencies(package);
    for name in wanted {
        assert!(crates.iter().any(|c| c == name), "not {package}'s tree (no {name}): {crates:?}");
    }
    for name in unwanted {
        assert!(!crates.iter().any(|c| c == name), "{package} depends on {name} outside its tests: {crates:?}");
    }
}

#[test]
fn the_host_library_does_not_depend_on_the_test_kit_or_the_cli() {
    assert_links(
        "host-harness",
        &["wasmtime", "rusqlite"],
        &["harness-test-kit", "host-harness-cli", "tiny_http", "clap"],
    );
}

#[test]
fn the_production_command_does_not_link_the_test_kit() {
    assert_links("host-harness-cli", &["host-harness", "clap"], &["harness-test-kit", "tiny_http"]);
}

/// The top-level modules of a crate's `src/` and which of them each one's
/// code (comments and its `#[cfg(test)] mod` aside) names as `crate::MODULE`.
fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            // A module's own tests may reach any layer.
            if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|l| l.trim_start().starts_with("mod ")) {
                break;
            }
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                let name: String =
                    code[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A circle of imports among `graph`'s modules, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        at: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == at) {
            let mut found = path[start..].to_vec();
            found.push(at.to_string());
            return Some(found);
        }
        if !done.insert(at.to_string()) {
            return None;
        }
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_top_level_modules_import_each_other_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (src, skip) in [
        // The generated bindings name host types in their `with:` (the
        // wasmtime idiom); they are not a layer of their own.
        (root.join("src"), &["bindings", "lib"][..]),
        (root.join("cli/src"), &["main"][..]),
        // The core's simulator and test suites sit above everything.
        (root.join("../src"), &["lib", "tests"][..]),
    ] {
        let mut graph = module_imports(&src);
        graph.retain(|m, _| !skip.contains(&m.as_str()));
        for uses in graph.values_mut() {
            uses.retain(|m| !skip.contains(&m.as_str()));
        }
        assert!(graph.len() >= 3, "{} read: {graph:?}", src.display());
        if let Some(found) = circle(&graph) {
            panic!("{}: modules import each other in a circle: {}", src.display(), found.join(" -> "));
        }
    }
    // The check itself finds one.
    let mut looped = BTreeMap::new();
    looped.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    looped.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    looped.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(circle(&looped).unwrap(), ["a", "b", "c", "a"]);
    looped.get_mut("c").unwrap().clear();
    assert!(circle(&looped).is_none());
}
