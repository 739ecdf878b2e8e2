//! `deploy/`: the Kubernetes manifests, the SpinApp and the harness's
//! Dockerfile, checked without a cluster or Docker (neither runs here).
//!
//! Every `deploy/*.yaml` is parsed (all documents) and checked for what
//! matters when it is applied:
//!
//! * documents: `apiVersion`, `kind`, a valid `metadata.name`, all in the
//!   namespace `namespace.yaml` creates, no duplicates, labels as strings;
//! * images: every image (containers, SpinApp, SpinAppExecutor) has a tag or
//!   digest, never `:latest`;
//! * secrets: an env var or Spin variable whose name says secret comes from a
//!   `secretKeyRef`, never a literal; every `secretKeyRef`/`secretRef` names a
//!   Secret and key of the template; no URL with a password in any literal;
//! * the Secret template: only in `*.template.yaml`, `stringData` only, every
//!   value a `REPLACE_ME` placeholder;
//! * pods: non-root (numeric uid), read-only root filesystem, no privilege
//!   escalation, all capabilities dropped, seccomp, resources, no API token;
//! * the harness: `--shard K/N` covers 0..N-1 exactly once with one N, each
//!   shard with a standby; selectors match their pods and no other workload's;
//!   `--component` is where the Dockerfile puts the `.wasm`, `--compile-cache`
//!   an emptyDir, `--config` a key of the mounted ConfigMap, the uid the
//!   image's;
//! * the tenants file in that ConfigMap: valid TOML, required keys, secrets and
//!   the Redis URL only as `${VAR}`, every `${VAR}` provided to the container,
//!   every tenant's `kv` a server of `[host.redis]`, and the file as the
//!   harness loads it (each tenant reads only its own variables);
//! * the SpinApp: its variables are spin.toml's, cover the required ones,
//!   secrets from `secretKeyRef`; `default` store on Redis with its URL from a
//!   Secret; a known executor;
//! * probes: well formed; the harness serves `/healthz` + `/readyz` when its
//!   args carry `--listen`, and then must be probed on both (and not without);
//! * the Dockerfile (textually): multi-stage, pinned bases, builds both
//!   packages in release, non-root numeric USER, the `.wasm` copied from the
//!   builder, no secret-looking ENV/ARG; `.dockerignore` keeps `target/` and
//!   `.git` out.
//!
//! `every_check_catches_what_it_is_for` breaks the real files one way at a
//! time (in memory) and requires a problem for each.

use harness_test_kit::spin_check::REQUIRED_KEYS;
use onepassword_collector::config::SECRET_KEYS;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

/// What a Secret template holds instead of a value.
const PLACEHOLDER: &str = "REPLACE_ME";
/// The SpinKube executor that runs Spin apps in containerd (no cron trigger yet).
const SHIM_EXECUTOR: &str = "containerd-shim-spin";
/// The label the StatefulSet controller puts on each pod (Kubernetes >= 1.28).
const POD_INDEX_FIELD: &str = "metadata.labels['apps.kubernetes.io/pod-index']";
/// The harness reads its shard from this variable when `--shard` is absent.
const SHARD_ENV: &str = "HOST_HARNESS_SHARD";
/// ... and its compile cache's folder from this one.
const COMPILE_CACHE_ENV: &str = "HOST_HARNESS_COMPILE_CACHE";

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

// ---------------------------------------------------------------------------
// The files
// ---------------------------------------------------------------------------

/// The checked files' texts, by path relative to the workspace.
#[derive(Clone)]
struct Sources(BTreeMap<String, String>);

const DOCKERFILE: &str = "deploy/Dockerfile";
const DOCKERIGNORE: &str = ".dockerignore";
const SPIN_TOML: &str = "spin.toml";

impl Sources {
    fn load() -> Sources {
        let root = workspace_dir();
        let mut files = BTreeMap::new();
        let mut yamls: Vec<PathBuf> = std::fs::read_dir(root.join("deploy"))
            .expect("deploy/ exists")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        yamls.sort();
        assert!(!yamls.is_empty(), "no deploy/*.yaml");
        for p in yamls.iter().map(|p| p.strip_prefix(&root).unwrap().to_path_buf()) {
            files.insert(p.to_string_lossy().into_owned(), String::new());
        }
        files.insert(DOCKERFILE.into(), String::new());
        files.insert(DOCKERIGNORE.into(), String::new());
        files.insert(SPIN_TOML.into(), String::new());
        for (path, text) in files.iter_mut() {
            *text = std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        }
        Sources(files)
    }

    fn text(&self, path: &str) -> &str {
        &self.0[path]
    }

    fn yaml_files(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().filter(|(p, _)| p.ends_with(".yaml") || p.ends_with(".yml"))
    }

    /// A copy with one file changed by `f`.
    fn with(&self, path: &str, f: impl FnOnce(&str) -> String) -> Sources {
        let mut copy = self.clone();
        let text = copy.0.get_mut(path).unwrap_or_else(|| panic!("no file {path}"));
        *text = f(text);
        copy
    }
}

/// One YAML document of a manifest file.
struct Doc {
    file: String,
    index: usize,
    y: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        self.y["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.y["metadata"]["name"].as_str().unwrap_or("")
    }
    fn namespace(&self) -> &str {
        self.y["metadata"]["namespace"].as_str().unwrap_or("")
    }
    /// Where a problem is: `deploy/x.yaml #2 Deployment/name`.
    fn at(&self) -> String {
        format!("{} #{} {}/{}", self.file, self.index, self.kind(), self.name())
    }
}

/// Everything the checks look at, parsed.
struct Deploy {
    docs: Vec<Doc>,
    /// Files that are not valid YAML.
    parse_problems: Vec<String>,
    dockerfile: String,
    dockerignore: String,
    spin_toml: String,
}

impl Deploy {
    fn new(sources: &Sources) -> Deploy {
        let mut docs = Vec::new();
        let mut parse_problems = Vec::new();
        for (file, text) in sources.yaml_files() {
            match YamlLoader::load_from_str(text) {
                Ok(ys) if ys.is_empty() => parse_problems.push(format!("{file}: no YAML document")),
                Ok(ys) => {
                    docs.extend(ys.into_iter().enumerate().map(|(index, y)| Doc { file: file.clone(), index, y }))
                }
                Err(e) => parse_problems.push(format!("{file}: not valid YAML: {e}")),
            }
        }
        Deploy {
            docs,
            parse_problems,
            dockerfile: sources.text(DOCKERFILE).to_string(),
            dockerignore: sources.text(DOCKERIGNORE).to_string(),
            spin_toml: sources.text(SPIN_TOML).to_string(),
        }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Doc> + 'a {
        self.docs.iter().filter(move |d| d.kind() == kind)
    }

    fn find(&self, kind: &str, namespace: &str, name: &str) -> Option<&Doc> {
        self.docs.iter().find(|d| d.kind() == kind && d.namespace() == namespace && d.name() == name)
    }

    /// Every workload with a pod template.
    fn workloads(&self) -> Vec<Workload<'_>> {
        self.docs.iter().filter_map(Workload::of).collect()
    }

    /// Keys of each Secret (in the template), by (namespace, name).
    fn secret_keys(&self) -> BTreeMap<(String, String), BTreeSet<String>> {
        self.of_kind("Secret")
            .map(|d| {
                let keys = ["stringData", "data"]
                    .iter()
                    .filter_map(|f| d.y[*f].as_hash())
                    .flat_map(|h| h.keys().filter_map(|k| k.as_str().map(String::from)))
                    .collect();
                ((d.namespace().to_string(), d.name().to_string()), keys)
            })
            .collect()
    }
}

/// A Deployment, StatefulSet, ... : its pod template and selector.
struct Workload<'a> {
    doc: &'a Doc,
    pod: &'a Yaml,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
}

impl<'a> Workload<'a> {
    fn of(doc: &'a Doc) -> Option<Workload<'a>> {
        let spec = &doc.y["spec"];
        let template = match doc.kind() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &spec["template"],
            "CronJob" => &spec["jobTemplate"]["spec"]["template"],
            _ => return None,
        };
        Some(Workload {
            doc,
            pod: &template["spec"],
            labels: string_map(&template["metadata"]["labels"]),
            selector: string_map(&spec["selector"]["matchLabels"]),
        })
    }

    fn replicas(&self) -> i64 {
        self.doc.y["spec"]["replicas"].as_i64().unwrap_or(1)
    }

    fn containers(&self) -> impl Iterator<Item = &'a Yaml> {
        containers(self.pod)
    }

    /// The harness's containers: image `.../host-harness:TAG`.
    fn harness_containers(&self) -> impl Iterator<Item = &'a Yaml> {
        self.containers().filter(|c| is_harness_image(c["image"].as_str().unwrap_or("")))
    }
}

fn containers(pod: &Yaml) -> impl Iterator<Item = &Yaml> {
    ["initContainers", "containers"].into_iter().flat_map(|f| pod[f].as_vec().into_iter().flatten())
}

fn is_harness_image(image: &str) -> bool {
    let repo = image.split('@').next().unwrap();
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    repo == "host-harness" || repo.ends_with("/host-harness")
}

/// A mapping of strings (labels, selectors); anything else is left out
/// (`check_documents` reports it).
fn string_map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
        .collect()
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// The value of `--name V` or `--name=V` in a container's args.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(name).and_then(|r| r.strip_prefix('=')).map(String::from)
        }
    })
}

fn container_args(c: &Yaml) -> Vec<String> {
    strings(&c["command"]).into_iter().chain(strings(&c["args"])).collect()
}

/// The env entry called `name`, if any.
fn env_entry<'a>(c: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    c["env"].as_vec()?.iter().find(|e| e["name"].as_str() == Some(name))
}

/// Names that say "this is a secret": tokens, passwords, keys, and Redis
/// URLs (they carry the password).
fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    ["TOKEN", "PASSWORD", "PASSWD", "SECRET", "KEY", "AUTH", "CREDENTIAL"].iter().any(|w| n.contains(w))
        || (n.contains("REDIS") && n.contains("URL"))
}

/// `${NAME}` as a whole value: NAME.
fn env_ref(value: &str) -> Option<&str> {
    let name = value.strip_prefix("${")?.strip_suffix('}')?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(name)
}

/// `scheme://user:password@host` with a literal password (not `$(VAR)`,
/// `${VAR}` or the placeholder).
fn has_url_password(text: &str) -> bool {
    text.match_indices("://").any(|(i, _)| {
        let rest = &text[i + 3..];
        let authority = rest.split(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'').next().unwrap();
        let Some((userinfo, _)) = authority.rsplit_once('@') else { return false };
        let Some((_, password)) = userinfo.split_once(':') else { return false };
        !password.is_empty() && !password.starts_with("$(") && !password.starts_with("${") && password != PLACEHOLDER
    })
}

/// Every string in a YAML tree.
fn walk_strings<'a>(y: &'a Yaml, out: &mut Vec<&'a str>) {
    match y {
        Yaml::String(s) => out.push(s),
        Yaml::Array(a) => a.iter().for_each(|v| walk_strings(v, out)),
        Yaml::Hash(h) => h.iter().for_each(|(k, v)| {
            walk_strings(k, out);
            walk_strings(v, out)
        }),
        _ => {}
    }
}

/// Why an image reference is not pinned, if it is not.
fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("no image".into());
    }
    if image.contains("@sha256:") {
        return None;
    }
    let last = image.rsplit('/').next().unwrap();
    match last.split_once(':') {
        None => Some(format!("image {image} has no tag (that is :latest)")),
        Some((_, "latest")) => Some(format!("image {image} is :latest: pin a version")),
        Some((_, "")) => Some(format!("image {image} has an empty tag")),
        Some(_) => None,
    }
}

fn dns_label_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

// ---------------------------------------------------------------------------
// Checks: each returns its problems, one line each, saying where
// ---------------------------------------------------------------------------

/// Every document is a Kubernetes object with a name, in our namespace.
fn check_documents(d: &Deploy) -> Vec<String> {
    let mut p = d.parse_problems.clone();
    let namespaces: BTreeSet<&str> = d.of_kind("Namespace").map(|n| n.name()).collect();
    if namespaces.len() != 1 {
        p.push(format!("deploy/ must create exactly one Namespace, not {namespaces:?}"));
    }
    let mut seen = BTreeSet::new();
    for doc in &d.docs {
        if !doc.y.is_hash() {
            p.push(format!("{}: not a mapping (empty document?)", doc.at()));
            continue;
        }
        if doc.y["apiVersion"].as_str().is_none_or(str::is_empty) {
            p.push(format!("{}: no apiVersion", doc.at()));
        }
        if doc.kind().is_empty() {
            p.push(format!("{}: no kind", doc.at()));
        }
        // Names here are also pod/label/DNS names: keep them DNS-1123 labels.
        if !dns_label_ok(doc.name()) {
            p.push(format!("{}: metadata.name {:?} is not a DNS-1123 label", doc.at(), doc.name()));
        }
        if doc.kind() != "Namespace" && !namespaces.contains(doc.namespace()) {
            p.push(format!("{}: metadata.namespace {:?} is not the Namespace of deploy/", doc.at(), doc.namespace()));
        }
        if !seen.insert((doc.kind().to_string(), doc.namespace().to_string(), doc.name().to_string())) {
            p.push(format!("{}: defined twice", doc.at()));
        }
        // Label values are strings: an unquoted 0 or true is refused by the API server.
        let spec = &doc.y["spec"];
        let label_maps = [
            ("metadata.labels", &doc.y["metadata"]["labels"]),
            ("metadata.annotations", &doc.y["metadata"]["annotations"]),
            ("spec.selector.matchLabels", &spec["selector"]["matchLabels"]),
            ("spec.template.metadata.labels", &spec["template"]["metadata"]["labels"]),
            ("spec.podLabels", &spec["podLabels"]),
        ];
        for (field, map) in label_maps {
            for (k, v) in map.as_hash().into_iter().flatten() {
                if k.as_str().is_none() || v.as_str().is_none() {
                    p.push(format!("{}: {field} {k:?}: {v:?} must be a string (quote it)", doc.at()));
                }
            }
        }
    }
    p
}

/// Every image is pinned to a tag or digest, never :latest.
fn check_images(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    for w in d.workloads() {
        for c in w.containers() {
            if let Some(e) = image_problem(c["image"].as_str().unwrap_or("")) {
                p.push(format!("{} container {:?}: {e}", w.doc.at(), c["name"].as_str().unwrap_or("?")));
            }
        }
    }
    for app in d.of_kind("SpinApp") {
        if let Some(e) = image_problem(app.y["spec"]["image"].as_str().unwrap_or("")) {
            p.push(format!("{}: spec.image: {e}", app.at()));
        }
    }
    for ex in d.of_kind("SpinAppExecutor") {
        if let Some(image) = ex.y["spec"]["deploymentConfig"]["spinImage"].as_str() {
            if let Some(e) = image_problem(image) {
                p.push(format!("{}: spinImage: {e}", ex.at()));
            }
        }
    }
    p
}

/// Checks one `secretKeyRef` against the Secret template.
fn check_secret_key_ref(
    r: &Yaml,
    namespace: &str,
    secrets: &BTreeMap<(String, String), BTreeSet<String>>,
    at: &str,
    p: &mut Vec<String>,
) {
    let (name, key) = (r["name"].as_str().unwrap_or(""), r["key"].as_str().unwrap_or(""));
    match secrets.get(&(namespace.to_string(), name.to_string())) {
        None => p.push(format!("{at}: secretKeyRef to Secret {name:?}, which deploy/*.template.yaml does not define")),
        Some(keys) if !keys.contains(key) => {
            p.push(format!("{at}: secretKeyRef to key {key:?} of Secret {name:?}, which it does not have"))
        }
        Some(_) => {}
    }
}

/// Secrets reach pods only through Secret references, to Secrets and keys
/// that exist; no literal anywhere carries a password.
fn check_secret_refs(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    let secrets = d.secret_keys();
    for w in d.workloads() {
        let ns = w.doc.namespace();
        for c in w.containers() {
            let at = format!("{} container {:?}", w.doc.at(), c["name"].as_str().unwrap_or("?"));
            for e in c["env"].as_vec().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or("");
                let secret_ref = &e["valueFrom"]["secretKeyRef"];
                if looks_secret(name) && (secret_ref.is_badvalue() || !e["value"].is_badvalue()) {
                    p.push(format!("{at}: env {name} looks secret: take it from valueFrom.secretKeyRef, not a value"));
                }
                if !secret_ref.is_badvalue() {
                    check_secret_key_ref(secret_ref, ns, &secrets, &format!("{at} env {name}"), &mut p);
                }
            }
            for e in c["envFrom"].as_vec().into_iter().flatten() {
                if let Some(name) = e["secretRef"]["name"].as_str() {
                    if !secrets.contains_key(&(ns.to_string(), name.to_string())) {
                        p.push(format!("{at}: envFrom Secret {name:?} is not defined by deploy/*.template.yaml"));
                    }
                }
                if let Some(name) = e["configMapRef"]["name"].as_str() {
                    let keys = d.find("ConfigMap", ns, name).map(|m| string_map(&m.y["data"])).unwrap_or_default();
                    for k in keys.keys().filter(|k| looks_secret(k)) {
                        p.push(format!("{at}: envFrom ConfigMap {name:?} holds {k}, which looks secret"));
                    }
                }
            }
        }
    }
    for app in d.of_kind("SpinApp") {
        let ns = app.namespace();
        for v in app.y["spec"]["variables"].as_vec().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("");
            let r = &v["valueFrom"]["secretKeyRef"];
            if (looks_secret(name) || SECRET_KEYS.contains(&name)) && (r.is_badvalue() || !v["value"].is_badvalue()) {
                p.push(format!("{}: variable {name} is secret: take it from valueFrom.secretKeyRef", app.at()));
            }
            if !r.is_badvalue() {
                check_secret_key_ref(r, ns, &secrets, &format!("{} variable {name}", app.at()), &mut p);
            }
        }
        let rc = &app.y["spec"]["runtimeConfig"];
        let stores =
            ["keyValueStores", "sqliteDatabases"].into_iter().flat_map(|f| rc[f].as_vec().into_iter().flatten());
        for opt in stores.flat_map(|s| s["options"].as_vec().into_iter().flatten()) {
            let name = opt["name"].as_str().unwrap_or("");
            let r = &opt["valueFrom"]["secretKeyRef"];
            // A store URL may carry a password: it comes from a Secret too.
            if (looks_secret(name) || name == "url") && (r.is_badvalue() || !opt["value"].is_badvalue()) {
                p.push(format!("{}: runtimeConfig option {name}: take it from valueFrom.secretKeyRef", app.at()));
            }
            if !r.is_badvalue() {
                check_secret_key_ref(r, ns, &secrets, &format!("{} runtimeConfig option {name}", app.at()), &mut p);
            }
        }
    }
    for doc in d.docs.iter().filter(|doc| doc.kind() != "Secret") {
        let mut texts = Vec::new();
        walk_strings(&doc.y, &mut texts);
        for t in texts.into_iter().filter(|t| has_url_password(t)) {
            let shown: String = t.chars().take(40).collect();
            p.push(format!("{}: a literal URL carries a password ({shown}...): use a Secret", doc.at()));
        }
    }
    p
}

/// Secrets only in `*.template.yaml`, only `stringData`, only placeholders.
fn check_secret_template(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    let mut n = 0;
    for s in d.of_kind("Secret") {
        n += 1;
        if !s.file.ends_with(".template.yaml") {
            p.push(format!("{}: a Secret outside a *.template.yaml file", s.at()));
        }
        if !s.y["data"].is_badvalue() {
            p.push(format!("{}: `data` (base64) hides what it holds: use stringData with {PLACEHOLDER}", s.at()));
        }
        let data = s.y["stringData"].as_hash();
        if data.is_none_or(|h| h.is_empty()) {
            p.push(format!("{}: no stringData", s.at()));
        }
        for (k, v) in data.into_iter().flatten() {
            let (k, v) = (k.as_str().unwrap_or("?"), v.as_str().unwrap_or(""));
            if !v.contains(PLACEHOLDER) {
                p.push(format!("{}: {k} is not a {PLACEHOLDER} placeholder", s.at()));
            }
            // What is left around the placeholder must not look like a token
            // (a JWT, a Devo token: long runs of letters and digits).
            let rest = v.replace(PLACEHOLDER, " ");
            if rest.split(|c: char| !c.is_ascii_alphanumeric()).any(|run| run.len() >= 20) {
                p.push(format!("{}: {k} holds a token-like string besides the placeholder", s.at()));
            }
        }
    }
    if n == 0 {
        p.push("no Secret template in deploy/ (secretKeyRefs need one to point at)".into());
    }
    p
}

/// Every pod: non-root with a numeric uid, read-only root filesystem, no
/// privilege escalation, no capabilities, seccomp, resources, no API token.
fn check_pod_security(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    for w in d.workloads() {
        let (at, pod) = (w.doc.at(), w.pod);
        let psc = &pod["securityContext"];
        if pod["automountServiceAccountToken"].as_bool() != Some(false) {
            p.push(format!("{at}: set automountServiceAccountToken: false (no Kubernetes API access needed)"));
        }
        for f in ["hostNetwork", "hostPID", "hostIPC"] {
            if pod[f].as_bool() == Some(true) {
                p.push(format!("{at}: {f}: true"));
            }
        }
        for c in w.containers() {
            let at = format!("{at} container {:?}", c["name"].as_str().unwrap_or("?"));
            let csc = &c["securityContext"];
            let either = |f: &str| if csc[f].is_badvalue() { &psc[f] } else { &csc[f] };
            if either("runAsNonRoot").as_bool() != Some(true) {
                p.push(format!("{at}: runAsNonRoot must be true"));
            }
            match either("runAsUser").as_i64() {
                Some(uid) if uid > 0 => {}
                other => p.push(format!("{at}: runAsUser must be a numeric non-root uid, not {other:?}")),
            }
            if !matches!(either("seccompProfile")["type"].as_str(), Some("RuntimeDefault" | "Localhost")) {
                p.push(format!("{at}: seccompProfile.type must be RuntimeDefault"));
            }
            if csc["readOnlyRootFilesystem"].as_bool() != Some(true) {
                p.push(format!("{at}: readOnlyRootFilesystem must be true"));
            }
            if csc["allowPrivilegeEscalation"].as_bool() != Some(false) {
                p.push(format!("{at}: allowPrivilegeEscalation must be false"));
            }
            if csc["privileged"].as_bool() == Some(true) {
                p.push(format!("{at}: privileged"));
            }
            if !strings(&csc["capabilities"]["drop"]).iter().any(|c| c == "ALL") {
                p.push(format!("{at}: capabilities.drop must hold ALL"));
            }
            if !csc["capabilities"]["add"].is_badvalue() {
                p.push(format!("{at}: adds capabilities"));
            }
            for (kind, res) in [("requests", "cpu"), ("requests", "memory"), ("limits", "cpu"), ("limits", "memory")] {
                if c["resources"][kind][res].is_badvalue() {
                    p.push(format!("{at}: resources.{kind}.{res} is not set"));
                }
            }
        }
    }
    p
}

/// Selectors pick their own pods and no other workload's; PDBs, Services and
/// NetworkPolicies select pods that exist; Redis's clients may reach it.
fn check_selectors(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    let workloads = d.workloads();
    for w in &workloads {
        if w.selector.is_empty() {
            p.push(format!("{}: no spec.selector.matchLabels", w.doc.at()));
        } else if !is_subset(&w.selector, &w.labels) {
            p.push(format!("{}: spec.selector does not match its own pod template's labels", w.doc.at()));
        }
        for other in workloads.iter().filter(|o| !std::ptr::eq(*o, w) && o.doc.namespace() == w.doc.namespace()) {
            if !w.selector.is_empty() && is_subset(&w.selector, &other.labels) {
                p.push(format!("{}: its selector also selects the pods of {}", w.doc.at(), other.doc.at()));
            }
        }
    }
    let selects_some = |ns: &str, sel: &BTreeMap<String, String>| {
        workloads.iter().any(|w| w.doc.namespace() == ns && is_subset(sel, &w.labels))
    };
    for (kind, path) in [
        ("PodDisruptionBudget", &["spec", "selector", "matchLabels"][..]),
        ("Service", &["spec", "selector"][..]),
        ("NetworkPolicy", &["spec", "podSelector", "matchLabels"][..]),
    ] {
        for doc in d.of_kind(kind) {
            let sel = string_map(path.iter().fold(&doc.y, |y, k| &y[*k]));
            if sel.is_empty() || !selects_some(doc.namespace(), &sel) {
                p.push(format!("{}: its selector {sel:?} selects no pod of deploy/", doc.at()));
            }
        }
    }
    // Whoever NetworkPolicies let in must be labelled so: the harness pods
    // and the SpinApp's pods, which all talk to Redis.
    for np in d.of_kind("NetworkPolicy") {
        let allowed: Vec<BTreeMap<String, String>> = np.y["spec"]["ingress"]
            .as_vec()
            .into_iter()
            .flatten()
            .flat_map(|r| r["from"].as_vec().into_iter().flatten())
            .map(|f| string_map(&f["podSelector"]["matchLabels"]))
            .collect();
        let admitted = |labels: &BTreeMap<String, String>| allowed.iter().any(|a| is_subset(a, labels));
        for w in workloads.iter().filter(|w| w.harness_containers().next().is_some()) {
            if !admitted(&w.labels) {
                p.push(format!("{}: its pods are not let in by {}", w.doc.at(), np.at()));
            }
        }
        for app in d.of_kind("SpinApp") {
            if !admitted(&string_map(&app.y["spec"]["podLabels"])) {
                p.push(format!("{}: spec.podLabels are not let in by {}", app.at(), np.at()));
            }
        }
    }
    p
}

/// One harness container's shard: `(index or None for a StatefulSet's
/// ordinal, N)`.
fn shard_of(w: &Workload, c: &Yaml, p: &mut Vec<String>) -> Option<(Option<u32>, u32)> {
    let at = w.doc.at();
    let value = flag(&container_args(c), "--shard").or_else(|| {
        let e = env_entry(c, SHARD_ENV)?;
        e["value"].as_str().map(String::from)
    });
    let Some(value) = value else {
        p.push(format!("{at}: the harness runs without --shard K/N"));
        return None;
    };
    let Some((k, n)) = value.split_once('/') else {
        p.push(format!("{at}: --shard {value:?} is not K/N"));
        return None;
    };
    let Ok(n) = n.parse::<u32>() else {
        p.push(format!("{at}: --shard {value:?}: N is not a number"));
        return None;
    };
    if n == 0 {
        p.push(format!("{at}: --shard {value:?}: N is 0"));
        return None;
    }
    if let Ok(k) = k.parse::<u32>() {
        // One shard per Deployment, with a standby.
        if w.doc.kind() != "Deployment" {
            p.push(format!("{at}: a fixed --shard {value} belongs in a Deployment (all replicas run it)"));
        }
        if w.replicas() < 2 {
            p.push(format!("{at}: shard {k}/{n} has {} replica(s): keep a standby (replicas >= 2)", w.replicas()));
        }
        return Some((Some(k), n));
    }
    // `$(VAR)/N`: each pod of a StatefulSet its ordinal.
    let var = k.strip_prefix("$(").and_then(|r| r.strip_suffix(')'));
    let from_index = var.and_then(|v| env_entry(c, v)).and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str());
    if w.doc.kind() != "StatefulSet" || from_index != Some(POD_INDEX_FIELD) {
        p.push(format!(
            "{at}: --shard {value:?}: K must be a number, or $(VAR) in a StatefulSet with VAR from {POD_INDEX_FIELD}"
        ));
        return None;
    }
    if w.replicas() != i64::from(n) {
        p.push(format!("{at}: --shard {value:?} but replicas = {}", w.replicas()));
    }
    Some((None, n))
}

/// The harness's shards: one N, every index 0..N-1 exactly once.
fn check_shards(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    let mut ns = BTreeSet::new();
    let mut owners: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let workloads = d.workloads();
    let harness: Vec<&Workload> = workloads.iter().filter(|w| w.harness_containers().next().is_some()).collect();
    if harness.is_empty() {
        p.push("no workload runs the host-harness image".into());
    }
    for w in harness {
        for c in w.harness_containers() {
            let Some((k, n)) = shard_of(w, c, &mut p) else { continue };
            ns.insert(n);
            let indices: Vec<u32> = match k {
                Some(k) => vec![k],
                None => (0..n).collect(),
            };
            for k in indices {
                owners.entry(k).or_default().push(w.doc.at());
            }
        }
    }
    if ns.len() > 1 {
        p.push(format!("the harness's --shard N differs between workloads: {ns:?}"));
    }
    if let Some(&n) = ns.iter().max() {
        for k in 0..n {
            match owners.get(&k).map(Vec::len) {
                None => p.push(format!("shard {k}/{n} is run by no workload: its tenants are never ticked")),
                Some(1) => {}
                Some(_) => p.push(format!("shard {k}/{n} is run by several workloads: {:?}", owners[&k])),
            }
        }
        for (k, who) in owners.range(n..) {
            p.push(format!("shard {k} is out of range for N = {n}: {who:?}"));
        }
    }
    p
}

/// What the Dockerfile says about the image.
#[derive(Default)]
struct ImageFacts {
    uid: Option<i64>,
    wasm_path: Option<String>,
    binary_path: Option<String>,
}

/// A Dockerfile: stages of (INSTRUCTION, rest) logical lines.
struct Stage {
    image: String,
    name: Option<String>,
    lines: Vec<(String, String)>,
}

/// The Dockerfile's logical lines (continuations joined, comments dropped)
/// as (INSTRUCTION, rest).
fn dockerfile_lines(text: &str) -> Vec<(String, String)> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        logical.push(current);
    }
    logical
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (instr, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (instr.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect()
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for (instr, rest) in dockerfile_lines(text) {
        if instr == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            stages.push(Stage { image: words.first().unwrap_or(&"").to_string(), name, lines: Vec::new() });
        } else if let Some(s) = stages.last_mut() {
            s.lines.push((instr, rest));
        }
    }
    stages
}

/// `KEY=VALUE`, `KEY VALUE` (ENV) and `KEY` (ARG) names of ENV/ARG lines.
fn env_arg_names(rest: &str) -> Vec<(String, String)> {
    if !rest.contains('=') {
        let (k, v) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        return vec![(k.to_string(), v.trim().to_string())];
    }
    rest.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

fn check_dockerfile_text(text: &str, dockerignore: &str) -> (Vec<String>, ImageFacts) {
    let mut p = Vec::new();
    let mut facts = ImageFacts::default();
    let stages = parse_dockerfile(text);
    if stages.len() < 2 {
        p.push(format!("Dockerfile: {} stage(s): build in one stage, run in another", stages.len()));
        return (p, facts);
    }
    let names: Vec<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
    for s in &stages {
        if !names.contains(&s.image) {
            if let Some(e) = image_problem(&s.image) {
                p.push(format!("Dockerfile: FROM {}: {e}", s.image));
            }
        }
    }
    // Every ENV and ARG, global ones (before the first FROM) included.
    for (instr, rest) in dockerfile_lines(text).iter().filter(|(i, _)| i == "ENV" || i == "ARG") {
        for (k, v) in env_arg_names(rest) {
            if looks_secret(&k) {
                p.push(format!("Dockerfile: {instr} {k}: secrets never go into an image or its build args"));
            }
            if has_url_password(&v) {
                p.push(format!("Dockerfile: {instr} {k} holds a URL with a password"));
            }
        }
    }
    let builder = &stages[0];
    let runs: Vec<&str> = builder.lines.iter().filter(|(i, _)| i == "RUN").map(|(_, r)| r.as_str()).collect();
    let runs_all = |words: &[&str]| runs.iter().any(|r| words.iter().all(|w| r.contains(w)));
    if builder.name.is_none() {
        p.push("Dockerfile: name the build stage (FROM ... AS builder)".into());
    }
    if !runs_all(&["rustup target add", "wasm32-wasip2"]) {
        p.push("Dockerfile: the build stage does not add the wasm32-wasip2 target".into());
    }
    if !runs_all(&["cargo build", "--release", "--target wasm32-wasip2", "-p onepassword-collector"]) {
        p.push("Dockerfile: the build stage does not build the component in release".into());
    }
    if !runs_all(&["cargo build", "--release", "-p host-harness-cli"]) {
        p.push("Dockerfile: the build stage does not build host-harness-cli in release".into());
    }
    let last = stages.last().unwrap();
    match last.lines.iter().rev().find(|(i, _)| i == "USER").map(|(_, r)| r.as_str()) {
        None => p.push("Dockerfile: the final stage sets no USER: it would run as root".into()),
        Some(user) => {
            let ids: Vec<Option<i64>> = user.split(':').map(|s| s.parse().ok()).collect();
            match ids.as_slice() {
                [Some(uid)] | [Some(uid), Some(_)] if *uid > 0 => facts.uid = Some(*uid),
                _ => p.push(format!(
                    "Dockerfile: USER {user}: use a numeric non-root uid[:gid] (runAsNonRoot checks it)"
                )),
            }
        }
    }
    for (_, rest) in last.lines.iter().filter(|(i, _)| i == "COPY" || i == "ADD") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let from = words.iter().find_map(|w| w.strip_prefix("--from="));
        let paths: Vec<&str> = words.iter().copied().filter(|w| !w.starts_with("--")).collect();
        if from.is_none() {
            p.push(format!(
                "Dockerfile: the final stage copies from the build context ({rest}): only build outputs go in"
            ));
            continue;
        }
        let Some((dest, srcs)) = paths.split_last() else { continue };
        let dest_for = |file: &str| {
            if dest.ends_with('/') {
                format!("{dest}{file}")
            } else {
                dest.to_string()
            }
        };
        if srcs.iter().any(|s| s.ends_with("onepassword_collector.wasm")) {
            facts.wasm_path = Some(dest_for("onepassword_collector.wasm"));
        }
        if srcs.iter().any(|s| s.ends_with("/host-harness")) {
            facts.binary_path = Some(dest_for("host-harness"));
        }
    }
    if facts.wasm_path.is_none() {
        p.push("Dockerfile: the final stage does not copy onepassword_collector.wasm from the build stage".into());
    }
    if facts.binary_path.is_none() {
        p.push("Dockerfile: the final stage does not copy the host-harness binary from the build stage".into());
    }
    let entrypoint = last.lines.iter().rev().find(|(i, _)| i == "ENTRYPOINT").map(|(_, r)| r.as_str());
    let entry_ok = entrypoint
        .and_then(|e| serde_json::from_str::<Vec<String>>(e).ok())
        .and_then(|v| v.first().cloned())
        .is_some_and(|first| Some(&first) == facts.binary_path.as_ref() || first == "host-harness");
    if !entry_ok {
        p.push(format!("Dockerfile: ENTRYPOINT {entrypoint:?} is not [\"<the host-harness binary>\"] in exec form"));
    }
    let ignored: BTreeSet<&str> =
        dockerignore.lines().map(|l| l.trim().trim_start_matches('/').trim_end_matches('/')).collect();
    for must in ["target", ".git"] {
        if !ignored.contains(must) {
            p.push(format!(".dockerignore: {must}/ is sent to the build (add a line `{must}`)"));
        }
    }
    (p, facts)
}

fn check_dockerfile(d: &Deploy) -> Vec<String> {
    check_dockerfile_text(&d.dockerfile, &d.dockerignore).0
}

/// The environment variable names a container gets: `env` entries and the
/// keys of Secrets/ConfigMaps pulled in by `envFrom`.
fn provided_env(d: &Deploy, namespace: &str, c: &Yaml) -> BTreeSet<String> {
    let secrets = d.secret_keys();
    let mut names: BTreeSet<String> =
        c["env"].as_vec().into_iter().flatten().filter_map(|e| e["name"].as_str().map(String::from)).collect();
    for e in c["envFrom"].as_vec().into_iter().flatten() {
        let prefix = e["prefix"].as_str().unwrap_or("");
        if let Some(keys) = e["secretRef"]["name"].as_str().and_then(|n| secrets.get(&(namespace.into(), n.into()))) {
            names.extend(keys.iter().map(|k| format!("{prefix}{k}")));
        }
        if let Some(m) = e["configMapRef"]["name"].as_str().and_then(|n| d.find("ConfigMap", namespace, n)) {
            names.extend(string_map(&m.y["data"]).into_keys().map(|k| format!("{prefix}{k}")));
        }
    }
    names
}

/// The tenants file a harness container reads: `--config` inside a volume
/// mount of a ConfigMap, as (ConfigMap doc, key).
fn config_source<'a>(d: &'a Deploy, w: &Workload, c: &Yaml, p: &mut Vec<String>) -> Option<(&'a Doc, String)> {
    let at = w.doc.at();
    let Some(config) = flag(&container_args(c), "--config") else {
        p.push(format!("{at}: the harness has no --config"));
        return None;
    };
    let mount = c["volumeMounts"].as_vec().into_iter().flatten().find_map(|m| {
        let path = m["mountPath"].as_str()?;
        if let Some(sub) = m["subPath"].as_str() {
            return (path == config).then(|| (m, sub.to_string()));
        }
        let rest = config.strip_prefix(path)?.strip_prefix('/')?;
        Some((m, rest.to_string()))
    });
    let Some((mount, file)) = mount else {
        p.push(format!("{at}: --config {config} is on no volume mount"));
        return None;
    };
    let vol_name = mount["name"].as_str().unwrap_or("");
    let vol = w.pod["volumes"].as_vec().into_iter().flatten().find(|v| v["name"].as_str() == Some(vol_name));
    let Some(cm_name) = vol.and_then(|v| v["configMap"]["name"].as_str()) else {
        p.push(format!("{at}: --config {config} is not on a ConfigMap volume"));
        return None;
    };
    // With `items`, the file is an item's path and the key that item's key.
    let key = vol
        .and_then(|v| v["configMap"]["items"].as_vec())
        .map(|items| items.iter().find(|i| i["path"].as_str() == Some(&file)).and_then(|i| i["key"].as_str()))
        .unwrap_or(Some(&file))
        .map(String::from);
    let cm = d.find("ConfigMap", w.doc.namespace(), cm_name);
    match (cm, key) {
        (Some(cm), Some(key)) if cm.y["data"][key.as_str()].as_str().is_some() => Some((cm, key)),
        _ => {
            p.push(format!("{at}: --config {config}: ConfigMap {cm_name:?} has no such key"));
            None
        }
    }
}

/// The harness's arguments against the image and the pod's volumes.
fn check_harness_args(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    let (_, image) = check_dockerfile_text(&d.dockerfile, &d.dockerignore);
    for w in d.workloads() {
        for c in w.harness_containers() {
            let at = w.doc.at();
            let args = container_args(c);
            if args.first().map(String::as_str) != Some("run") {
                p.push(format!("{at}: the harness's first argument is {:?}, not run", args.first()));
            }
            match (flag(&args, "--component"), &image.wasm_path) {
                (Some(given), Some(in_image)) if &given == in_image => {}
                (given, in_image) => p.push(format!(
                    "{at}: --component {given:?} is not where the Dockerfile puts the .wasm ({in_image:?})"
                )),
            }
            // The root filesystem is read-only: the compile cache needs a
            // writable emptyDir.
            let env_value = |name: &str| env_entry(c, name).and_then(|e| e["value"].as_str().map(String::from));
            match flag(&args, "--compile-cache").or_else(|| env_value(COMPILE_CACHE_ENV)) {
                None => p.push(format!("{at}: no --compile-cache: the default (next to the .wasm) is read-only")),
                Some(dir) => {
                    // A subfolder of the mount: an emptyDir is root-owned and
                    // world-writable, which the compile cache refuses; the
                    // harness creates the subfolder 0700 as its own user.
                    let mount = c["volumeMounts"].as_vec().into_iter().flatten().find(|m| {
                        m["mountPath"].as_str().map(|m| m.trim_end_matches('/')).is_some_and(|m| {
                            dir.trim_end_matches('/')
                                .strip_prefix(m)
                                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
                        })
                    });
                    let vol = mount.and_then(|m| {
                        w.pod["volumes"]
                            .as_vec()
                            .into_iter()
                            .flatten()
                            .find(|v| v["name"].as_str() == m["name"].as_str())
                    });
                    if mount.is_none_or(|m| m["readOnly"].as_bool() == Some(true))
                        || vol.is_none_or(|v| v["emptyDir"].is_badvalue())
                    {
                        p.push(format!("{at}: --compile-cache {dir} is not a subfolder of a writable emptyDir mount"));
                    }
                }
            }
            config_source(d, &w, c, &mut p);
            let csc = &c["securityContext"]["runAsUser"];
            let uid = if csc.is_badvalue() { w.pod["securityContext"]["runAsUser"].as_i64() } else { csc.as_i64() };
            if image.uid.is_some() && uid != image.uid {
                p.push(format!("{at}: runAsUser {uid:?} is not the image's USER {:?}", image.uid));
            }
        }
    }
    p
}

/// The tenants file: TOML, complete, secret-free, every `${VAR}` provided.
fn check_tenants(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    for w in d.workloads() {
        for c in w.harness_containers() {
            let Some((cm, key)) = config_source(d, &w, c, &mut p) else { continue };
            let at = format!("{} key {key}", cm.at());
            let text = cm.y["data"][key.as_str()].as_str().unwrap_or("");
            let provided = provided_env(d, w.doc.namespace(), c);
            for problem in tenants_problems(text, &provided) {
                p.push(format!("{at} (read by {}): {problem}", w.doc.at()));
            }
        }
    }
    p.sort();
    p.dedup();
    p
}

fn tenants_problems(text: &str, provided: &BTreeSet<String>) -> Vec<String> {
    let mut p = Vec::new();
    let file: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => return vec![format!("not valid TOML: {e}")],
    };
    let Some(tenants) = file.get("tenants").and_then(|t| t.as_table()).filter(|t| !t.is_empty()) else {
        return vec!["no [tenants.NAME]".into()];
    };
    let mut refs = BTreeSet::new();
    // The operator's Redis servers: their URLs (with the password) come from
    // the environment.
    let servers = file.get("host").and_then(|h| h.get("redis")).and_then(|r| r.as_table());
    for (server, url) in servers.into_iter().flatten() {
        match url.as_str().and_then(env_ref) {
            Some(var) => {
                refs.insert(var.to_string());
            }
            None => p.push(format!("[host.redis] {server} must be \"${{VAR}}\" (the Redis URL from a Secret)")),
        }
    }
    for (name, t) in tenants {
        if let Some(s) = t.get("schedule").and_then(|s| s.as_str()) {
            if let Err(e) = host_harness::schedule::parse(s) {
                p.push(format!("tenant {name}: schedule {s:?}: {e}"));
            }
        }
        // State lives in the shared Redis the operator declares. A file
        // would sit on a read-only or throw-away filesystem.
        match t.get("kv").and_then(|k| k.as_str()).and_then(|kv| kv.strip_prefix("redis:")) {
            Some(server) if servers.is_some_and(|s| s.contains_key(server)) => {}
            _ => p.push(format!("tenant {name}: kv must be \"redis:NAME\", a server of [host.redis]")),
        }
        let vars = t.get("variables").and_then(|v| v.as_table());
        for key in REQUIRED_KEYS {
            if vars.is_none_or(|v| !v.contains_key(*key)) {
                p.push(format!("tenant {name}: required variable {key} is missing"));
            }
        }
        for (key, value) in vars.into_iter().flatten() {
            let Some(s) = value.as_str() else { continue };
            match env_ref(s) {
                Some(var) => {
                    refs.insert(var.to_string());
                }
                None if SECRET_KEYS.contains(&key.as_str()) => {
                    p.push(format!("tenant {name}: {key} is a secret: write \"${{VAR}}\", never the value"))
                }
                None if s.contains("${") => p.push(format!(
                    "tenant {name}: {key}: only a WHOLE value \"${{VAR}}\" is read from the environment"
                )),
                None => {}
            }
        }
    }
    for var in refs.difference(provided) {
        p.push(format!("${{{var}}} is not in the container's environment"));
    }
    // What the harness itself refuses (a tenant naming another's variable,
    // a store of the old forms), with every variable set to a stand-in.
    if let Err(e) = host_harness::tenant::parse(text, Path::new("/etc/host-harness"), stand_in) {
        p.push(format!("the harness refuses it: {e:#}"));
    }
    p
}

/// A value for every `${VAR}` (a Redis URL for the Redis ones), for loading
/// a tenants file with the harness's parser.
fn stand_in(name: &str) -> Option<String> {
    Some(if name.contains("REDIS") {
        "redis://:stand-in@redis.invalid:6379/0".to_string()
    } else {
        format!("stand-in-{}", name.to_ascii_lowercase())
    })
}

/// The SpinApp: spin.toml's variables, the required ones, secrets from
/// Secrets, Redis for `default`, a known executor, no HTTP checks.
fn check_spinapp(d: &Deploy) -> Vec<String> {
    let mut p = Vec::new();
    let manifest: toml::Table = match toml::from_str(&d.spin_toml) {
        Ok(t) => t,
        Err(e) => return vec![format!("spin.toml: {e}")],
    };
    let declared = manifest.get("variables").and_then(|v| v.as_table()).cloned().unwrap_or_default();
    let flagged = |key: &str| -> Vec<String> {
        declared
            .iter()
            .filter(|(_, v)| v.get(key).and_then(|b| b.as_bool()) == Some(true))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let required: BTreeSet<String> =
        flagged("required").into_iter().chain(REQUIRED_KEYS.iter().map(|k| k.to_string())).collect();
    let secret: BTreeSet<String> =
        flagged("secret").into_iter().chain(SECRET_KEYS.iter().map(|k| k.to_string())).collect();
    let apps: Vec<&Doc> = d.of_kind("SpinApp").collect();
    if apps.is_empty() {
        p.push("no SpinApp in deploy/".into());
    }
    for app in apps {
        let (at, spec) = (app.at(), &app.y["spec"]);
        if app.y["apiVersion"].as_str() != Some("core.spinkube.dev/v1alpha1") {
            p.push(format!("{at}: apiVersion must be core.spinkube.dev/v1alpha1"));
        }
        let mut names = BTreeSet::new();
        for v in spec["variables"].as_vec().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("").to_string();
            if !declared.contains_key(&name) {
                p.push(format!("{at}: variable {name:?} is not declared in spin.toml"));
            }
            let has_ref = !v["valueFrom"]["secretKeyRef"].is_badvalue();
            if secret.contains(&name) && (!has_ref || !v["value"].is_badvalue()) {
                p.push(format!("{at}: variable {name} is secret: valueFrom.secretKeyRef only"));
            }
            if !has_ref && v["valueFrom"].is_badvalue() && v["value"].as_str().is_none_or(str::is_empty) {
                p.push(format!("{at}: variable {name} has no value"));
            }
            if !names.insert(name.clone()) {
                p.push(format!("{at}: variable {name} bound twice"));
            }
        }
        for missing in required.difference(&names) {
            p.push(format!("{at}: required variable {missing} is not bound"));
        }
        let default_store = spec["runtimeConfig"]["keyValueStores"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|s| s["name"].as_str() == Some("default"));
        match default_store {
            None => p.push(format!(
                "{at}: runtimeConfig.keyValueStores has no `default` store: replicas would not share state"
            )),
            Some(s) => {
                if s["type"].as_str() != Some("redis") {
                    p.push(format!("{at}: the default store's type is {:?}, not redis", s["type"]));
                }
                let url = s["options"].as_vec().into_iter().flatten().find(|o| o["name"].as_str() == Some("url"));
                if url.is_none_or(|u| u["valueFrom"]["secretKeyRef"].is_badvalue()) {
                    p.push(format!("{at}: the default store's url must come from valueFrom.secretKeyRef"));
                }
            }
        }
        let executor = spec["executor"].as_str().unwrap_or("");
        if executor != SHIM_EXECUTOR && d.find("SpinAppExecutor", app.namespace(), executor).is_none() {
            p.push(format!("{at}: executor {executor:?} is neither {SHIM_EXECUTOR} nor a SpinAppExecutor of deploy/"));
        }
        if spec["replicas"].as_i64().is_none_or(|r| r < 1) {
            p.push(format!("{at}: spec.replicas must be >= 1"));
        }
        // A cron app serves no HTTP: an HTTP check would never pass.
        if !spec["checks"].is_badvalue() {
            p.push(format!("{at}: spec.checks: the cron-triggered app serves no HTTP to probe"));
        }
    }
    for ex in d.of_kind("SpinAppExecutor") {
        let dc = &ex.y["spec"]["deploymentConfig"];
        if dc["spinImage"].is_badvalue() == dc["runtimeClassName"].is_badvalue() {
            p.push(format!("{}: set exactly one of spinImage and runtimeClassName", ex.at()));
        }
    }
    p
}

/// Checks one probe's shape.
fn probe_problems(probe: &Yaml, ports: &BTreeSet<String>) -> Vec<String> {
    let mut p = Vec::new();
    let handlers: Vec<&str> =
        ["httpGet", "tcpSocket", "exec", "grpc"].into_iter().filter(|h| !probe[*h].is_badvalue()).collect();
    if handlers.len() != 1 {
        p.push(format!("needs exactly one of httpGet, tcpSocket, exec, grpc, has {handlers:?}"));
    }
    for h in ["httpGet", "tcpSocket", "grpc"] {
        let port = &probe[h]["port"];
        if probe[h].is_badvalue() {
            continue;
        }
        let ok =
            port.as_i64().is_some_and(|n| (1..=65535).contains(&n)) || port.as_str().is_some_and(|n| ports.contains(n));
        if !ok {
            p.push(format!("{h}.port {port:?} is not a port number or a named port of the container"));
        }
    }
    if !probe["httpGet"].is_badvalue() && !probe["httpGet"]["path"].as_str().is_some_and(|s| s.starts_with('/')) {
        p.push("httpGet.path must start with /".into());
    }
    if !probe["exec"].is_badvalue() && strings(&probe["exec"]["command"]).is_empty() {
        p.push("exec.command is empty".into());
    }
    p
}

/// Probes are well formed. The harness serves no health endpoint yet, so it
/// has no network probe; once its args carry `--listen ADDR` (the health
/// endpoint issue), it must have liveness on /healthz and readiness on
/// /readyz at ADDR's port.
fn check_probes(d: &Deploy) -> Vec<String> {
    const PROBES: [&str; 3] = ["livenessProbe", "readinessProbe", "startupProbe"];
    let mut p = Vec::new();
    for w in d.workloads() {
        for c in w.containers() {
            let at = format!("{} container {:?}", w.doc.at(), c["name"].as_str().unwrap_or("?"));
            let ports: BTreeSet<String> = c["ports"]
                .as_vec()
                .into_iter()
                .flatten()
                .filter_map(|port| port["name"].as_str().map(String::from))
                .collect();
            for kind in PROBES.iter().filter(|k| !c[**k].is_badvalue()) {
                for problem in probe_problems(&c[*kind], &ports) {
                    p.push(format!("{at}: {kind}: {problem}"));
                }
            }
            if !is_harness_image(c["image"].as_str().unwrap_or("")) {
                continue;
            }
            match flag(&container_args(c), "--listen") {
                None => {
                    for kind in PROBES {
                        if ["httpGet", "tcpSocket", "grpc"].iter().any(|h| !c[kind][*h].is_badvalue()) {
                            p.push(format!("{at}: {kind} probes the network, but the harness has no --listen"));
                        }
                    }
                }
                Some(addr) => {
                    let port: Option<i64> = addr.rsplit(':').next().and_then(|s| s.parse().ok());
                    let named: BTreeMap<String, i64> = c["ports"]
                        .as_vec()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| Some((x["name"].as_str()?.to_string(), x["containerPort"].as_i64()?)))
                        .collect();
                    for (kind, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                        let get = &c[kind]["httpGet"];
                        let probe_port = get["port"].as_i64().or_else(|| named.get(get["port"].as_str()?).copied());
                        if get["path"].as_str() != Some(path) || probe_port.is_none() || probe_port != port {
                            p.push(format!("{at}: --listen {addr}: {kind} must be httpGet {path} on port {port:?}"));
                        }
                    }
                }
            }
        }
    }
    p
}

type Check = fn(&Deploy) -> Vec<String>;

const CHECKS: &[(&str, Check)] = &[
    ("documents", check_documents),
    ("images", check_images),
    ("secret refs", check_secret_refs),
    ("secret template", check_secret_template),
    ("pod security", check_pod_security),
    ("selectors", check_selectors),
    ("shards", check_shards),
    ("harness args", check_harness_args),
    ("tenants", check_tenants),
    ("spinapp", check_spinapp),
    ("probes", check_probes),
    ("dockerfile", check_dockerfile),
];

fn all_problems(d: &Deploy) -> Vec<String> {
    CHECKS.iter().flat_map(|(name, check)| check(d).into_iter().map(move |e| format!("[{name}] {e}"))).collect()
}

fn real() -> Deploy {
    Deploy::new(&Sources::load())
}

fn assert_clean(problems: Vec<String>) {
    assert!(problems.is_empty(), "{} problem(s):\n  {}", problems.len(), problems.join("\n  "));
}

// ---------------------------------------------------------------------------
// The real files
// ---------------------------------------------------------------------------

#[test]
fn manifests_parse_and_every_document_is_a_named_object_in_the_namespace() {
    let d = real();
    assert!(d.docs.len() >= 10, "expected the whole deploy/ set, found {} documents", d.docs.len());
    assert_clean(check_documents(&d));
}

#[test]
fn images_are_pinned() {
    assert_clean(check_images(&real()));
}

#[test]
fn secrets_reach_pods_only_through_secret_refs() {
    assert_clean(check_secret_refs(&real()));
}

#[test]
fn the_secret_template_holds_only_placeholders() {
    assert_clean(check_secret_template(&real()));
}

#[test]
fn every_pod_runs_non_root_on_a_read_only_root() {
    let d = real();
    assert!(d.workloads().len() >= 4, "the harness shards and Redis");
    assert_clean(check_pod_security(&d));
}

#[test]
fn selectors_pick_their_own_pods_only() {
    assert_clean(check_selectors(&real()));
}

#[test]
fn harness_shards_cover_every_index_once() {
    assert_clean(check_shards(&real()));
}

#[test]
fn harness_args_match_the_image_and_the_volumes() {
    assert_clean(check_harness_args(&real()));
}

#[test]
fn tenants_file_is_complete_secret_free_and_fully_provided() {
    assert_clean(check_tenants(&real()));
}

#[test]
fn spinapp_binds_the_collectors_variables() {
    assert_clean(check_spinapp(&real()));
}

#[test]
fn probes_are_well_formed_and_fit_the_harness() {
    assert_clean(check_probes(&real()));
}

#[test]
fn dockerfile_builds_a_non_root_image_with_the_component() {
    let d = real();
    let (problems, facts) = check_dockerfile_text(&d.dockerfile, &d.dockerignore);
    assert_clean(problems);
    assert_eq!(facts.wasm_path.as_deref(), Some("/opt/collector/onepassword_collector.wasm"));
    assert_eq!(facts.uid, Some(10001));
}

/// The tenants file as the harness itself loads it (its own TOML schema,
/// `${VAR}` resolution, Redis `kv` URLs), each provided `${VAR}` set to a
/// stand-in.
#[test]
fn tenants_file_loads_with_the_harness_parser() {
    let d = real();
    let w = d.workloads().into_iter().find(|w| w.harness_containers().next().is_some()).expect("a harness workload");
    let c = w.harness_containers().next().unwrap();
    let mut p = Vec::new();
    let (cm, key) = config_source(&d, &w, c, &mut p).unwrap_or_else(|| panic!("{p:?}"));
    let text = cm.y["data"][key.as_str()].as_str().unwrap();
    let provided = provided_env(&d, w.doc.namespace(), c);
    let tenants = host_harness::tenant::parse(text, Path::new("/etc/host-harness"), |name| {
        provided.contains(name).then(|| stand_in(name)).flatten()
    })
    .expect("the harness loads the tenants file");
    assert!(
        tenants.iter().all(|t| matches!(&t.kv, host_harness::kv::KvLocation::Redis(r) if r.server().name() == "main")),
        "every tenant on the operator's Redis"
    );
    let file: toml::Table = toml::from_str(text).unwrap();
    assert_eq!(tenants.len(), file["tenants"].as_table().unwrap().len());
    assert!(tenants.len() >= 2, "the example shows several tenants on one Redis");
}

// ---------------------------------------------------------------------------
// Every check can fail
// ---------------------------------------------------------------------------

fn replace_nth(text: &str, from: &str, to: &str, n: usize) -> String {
    let (at, _) = text.match_indices(from).nth(n).unwrap_or_else(|| panic!("{from:?} (#{n}) not in the file"));
    format!("{}{to}{}", &text[..at], &text[at + from.len()..])
}

fn replace(text: &str, from: &str, to: &str) -> String {
    replace_nth(text, from, to, 0)
}

#[test]
fn every_check_catches_what_it_is_for() {
    let src = Sources::load();
    const HARNESS: &str = "deploy/harness.yaml";
    const REDIS: &str = "deploy/redis.yaml";
    const SPIN: &str = "deploy/spinapp.yaml";
    const SECRETS: &str = "deploy/secrets.template.yaml";
    type Edit = Box<dyn Fn(&str) -> String>;
    let r = |from: &'static str, to: &'static str| -> Edit { Box::new(move |t| replace(t, from, to)) };
    let r_nth = |from: &'static str, to: &'static str, n| -> Edit { Box::new(move |t| replace_nth(t, from, to, n)) };
    let append = |more: &'static str| -> Edit { Box::new(move |t| format!("{t}{more}")) };
    let cases: Vec<(&str, &str, Edit, &str)> = vec![
        // documents
        (HARNESS, "no apiVersion", r("apiVersion: v1\nkind: ServiceAccount", "kind: ServiceAccount"), "no apiVersion"),
        (REDIS, "wrong namespace", r("namespace: onepassword-collector", "namespace: default"), "metadata.namespace"),
        (REDIS, "bad name", r("name: redis\n  namespace", "name: Redis_DB\n  namespace"), "DNS-1123"),
        (HARNESS, "unquoted label", r("onepassword-collector/shard: \"0\"", "onepassword-collector/shard: 0"), "must be a string"),
        (HARNESS, "not YAML", r("kind: ServiceAccount", "kind: [ServiceAccount"), "not valid YAML"),
        // images
        (HARNESS, ":latest", r("host-harness:0.1.0", "host-harness:latest"), ":latest"),
        (REDIS, "untagged", r("image: redis:7.4-bookworm", "image: redis"), "no tag"),
        (SPIN, "untagged spin app", r("image: registry.example.com/onepassword-collector/spin-app:0.1.0", "image: registry.example.com/onepassword-collector/spin-app"), "no tag"),
        // secret refs
        (
            REDIS,
            "literal password",
            r(
                "- name: REDIS_PASSWORD\n              valueFrom:\n                secretKeyRef:\n                  name: onepassword-collector-redis\n                  key: password",
                "- name: REDIS_PASSWORD\n              value: hunter2",
            ),
            "env REDIS_PASSWORD looks secret",
        ),
        (HARNESS, "unknown key", r("key: url", "key: uri"), "which it does not have"),
        (HARNESS, "unknown envFrom Secret", r("name: onepassword-collector-tenants\n", "name: tenants\n"), "envFrom Secret"),
        (
            SPIN,
            "literal spin token",
            r(
                "- name: token\n      valueFrom:\n        secretKeyRef:\n          name: onepassword-collector-spin\n          key: token",
                "- name: token\n      value: \"op-token\"",
            ),
            "variable token is secret",
        ),
        (
            SPIN,
            "literal redis url",
            r(
                "- name: url\n            valueFrom:\n              secretKeyRef:\n                name: onepassword-collector-spin\n                key: redis-url",
                "- name: url\n            value: \"redis://:pw@redis:6379/1\"",
            ),
            "carries a password",
        ),
        // secret template
        (SECRETS, "real-looking token", r("ACME_OP_TOKEN: \"REPLACE_ME\"", "ACME_OP_TOKEN: \"eyJhbGciOiJFUzI1NiIsImtpZCI6\""), "placeholder"),
        (SECRETS, "placeholder plus token", r("ACME_DEVO_TOKEN: \"REPLACE_ME\"", "ACME_DEVO_TOKEN: \"REPLACE_ME0a1b2c3d4e5f6a7b8c9d0e1f\""), "token-like"),
        (SECRETS, "base64 data", r("stringData:\n  ACME", "data:\n  ACME"), "base64"),
        (
            HARNESS,
            "Secret outside the template",
            append("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: extra\n  namespace: onepassword-collector\nstringData:\n  a: REPLACE_ME\n"),
            "outside a *.template.yaml",
        ),
        // pod security
        (HARNESS, "writable root", r("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"), "readOnlyRootFilesystem"),
        (HARNESS, "root uid", r("runAsUser: 10001", "runAsUser: 0"), "runAsUser"),
        (REDIS, "may run as root", r("runAsNonRoot: true", "runAsNonRoot: false"), "runAsNonRoot"),
        (HARNESS, "privilege escalation", r("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true"), "allowPrivilegeEscalation"),
        (HARNESS, "capabilities kept", r("drop: [\"ALL\"]", "drop: [\"NET_RAW\"]"), "capabilities.drop"),
        (HARNESS, "no limits", r("            limits:\n              cpu: \"1\"\n              memory: 512Mi\n", ""), "resources.limits"),
        (HARNESS, "API token mounted", r_nth("automountServiceAccountToken: false", "automountServiceAccountToken: true", 1), "automountServiceAccountToken"),
        // selectors
        (HARNESS, "selector overlaps", r_nth("onepassword-collector/shard: \"1\"", "onepassword-collector/shard: \"0\"", 1), "selector"),
        (REDIS, "Service selects nothing", r("selector:\n    app.kubernetes.io/name: redis", "selector:\n    app.kubernetes.io/name: rediss"), "selects no pod"),
        (SPIN, "SpinApp shut out of Redis", r("podLabels:\n    app.kubernetes.io/part-of: onepassword-collector", "podLabels:\n    team: x"), "not let in"),
        // shards
        (HARNESS, "shard twice, one missing", r("- \"1/3\"", "- \"0/3\""), "run by"),
        (HARNESS, "N differs", r("- \"2/3\"", "- \"2/4\""), "differs"),
        (HARNESS, "no standby", r("replicas: 2", "replicas: 1"), "standby"),
        (HARNESS, "no shard", r("            - --shard\n            - \"0/3\"\n", ""), "without --shard"),
        // harness args
        (HARNESS, "component elsewhere", r("- /opt/collector/onepassword_collector.wasm", "- /opt/collector/collector.wasm"), "--component"),
        (HARNESS, "cache not mounted", r("- --compile-cache\n            - /var/cache/host-harness/component", "- --compile-cache\n            - /opt/cache"), "--compile-cache"),
        (HARNESS, "cache on the world-writable emptyDir itself", r("            - /var/cache/host-harness/component\n", "            - /var/cache/host-harness\n"), "subfolder"),
        (HARNESS, "config key missing", r("- /etc/host-harness/collector.toml", "- /etc/host-harness/tenants.toml"), "no such key"),
        // tenants
        (HARNESS, "literal token", r("token = \"${ACME_OP_TOKEN}\"", "token = \"op-token\""), "token is a secret"),
        (HARNESS, "unprovided var", r("\"${GLOBEX_DEVO_TOKEN}\"", "\"${GLOBEX_DEVO_TOKN}\""), "GLOBEX_DEVO_TOKN"),
        (HARNESS, "missing required", r("devo_domain = \"initech\"\n", ""), "devo_domain is missing"),
        (HARNESS, "kv file", r("kv = \"redis:main\"", "kv = \"acme.sqlite\""), "kv must be \"redis:NAME\""),
        (HARNESS, "kv Redis URL", r("kv = \"redis:main\"", "kv = \"${REDIS_URL}\""), "kv no longer reads the environment"),
        (HARNESS, "kv undeclared server", r("kv = \"redis:main\"", "kv = \"redis:other\""), "names no Redis server"),
        (HARNESS, "Redis URL literal", r("main = \"${REDIS_URL}\"", "main = \"redis://redis:6379/0\""), "[host.redis] main must be"),
        (HARNESS, "another tenant's token", r("token = \"${GLOBEX_OP_TOKEN}\"", "token = \"${ACME_OP_TOKEN}\""), "which tenant globex may not read"),
        (HARNESS, "bad TOML", r("[tenants.acme]", "[tenants.acme"), "not valid TOML"),
        (HARNESS, "bad schedule", r("schedule = \"20 * * * * *\"", "schedule = \"every minute\""), "schedule"),
        // spinapp
        (SPIN, "misspelt variable", r("name: devo_domain", "name: devo_domian"), "not declared in spin.toml"),
        (SPIN, "default store not Redis", r("type: redis", "type: spin"), "not redis"),
        (SPIN, "unknown executor", r("executor: spin-cron", "executor: spin-crn"), "executor"),
        (
            SPIN,
            "HTTP check on a cron app",
            r("  replicas: 2\n", "  replicas: 2\n  checks:\n    readiness:\n      httpGet:\n        path: /\n"),
            "checks",
        ),
        // probes
        (REDIS, "empty exec probe", r("command: [\"sh\", \"-c\", \"redis-cli ping | grep -q PONG\"]", "command: []"), "exec.command"),
        (
            HARNESS,
            "HTTP probe without --listen",
            r("            - --listen\n            - 0.0.0.0:9464\n", ""),
            "no --listen",
        ),
        (HARNESS, "--listen without probes", r("          livenessProbe:\n            httpGet:\n              path: /healthz\n              port: metrics\n            periodSeconds: 20\n", ""), "/healthz"),
        (HARNESS, "readiness on the wrong path", r("              path: /readyz\n", "              path: /healthz\n"), "/readyz"),
        // Dockerfile and .dockerignore
        (DOCKERFILE, "root user", r("USER 10001:10001", "USER root"), "USER root"),
        (DOCKERFILE, "uid differs from the pods'", r("USER 10001:10001", "USER 10002:10002"), "not the image's USER"),
        (DOCKERFILE, "no wasm target", r("RUN rustup target add wasm32-wasip2\n", ""), "wasm32-wasip2 target"),
        (DOCKERFILE, "secret ENV", r("USER 10001:10001", "ENV DEVO_TOKEN=abc\nUSER 10001:10001"), "ENV DEVO_TOKEN"),
        (DOCKERFILE, "secret ARG", r("FROM rust", "ARG OP_TOKEN\nFROM rust"), "ARG OP_TOKEN"),
        (DOCKERFILE, "latest base", r("FROM debian:bookworm-slim AS runtime", "FROM debian:latest AS runtime"), ":latest"),
        (DOCKERFILE, "wasm not copied", r("COPY --from=builder /out/onepassword_collector.wasm", "COPY onepassword_collector.wasm"), "build context"),
        (DOCKERFILE, "one stage", Box::new(|t: &str| t.lines().filter(|l| !l.starts_with("FROM rust")).collect::<Vec<_>>().join("\n")), "stage"),
        (DOCKERIGNORE, "target sent", r("\ntarget\n", "\n"), "target/"),
    ];
    let mut missed = Vec::new();
    for (file, what, edit, expect) in &cases {
        let broken = Deploy::new(&src.with(file, |t| edit(t)));
        let problems = all_problems(&broken);
        if !problems.iter().any(|p| p.contains(expect)) {
            missed.push(format!("{file}: {what}: no problem containing {expect:?}; got {problems:#?}"));
        }
    }
    assert!(missed.is_empty(), "{} breakage(s) not caught:\n{}", missed.len(), missed.join("\n"));
    // ... and the unbroken files have none.
    assert_clean(all_problems(&Deploy::new(&src)));
}
