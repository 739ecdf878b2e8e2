//! The collector deploys to Fermyon Spin unchanged: proven statically, since
//! no Spin runtime runs here.
//!
//! * The BUILT component (`cargo build --release --target wasm32-wasip2 -p
//!   onepassword-collector`) imports only what Spin 3.x's host world and the
//!   cron trigger provide, and exports the cron entry point.
//! * The checker really catches mismatches: small components built here from
//!   WIT, each wrong in one way, are reported by interface and function.
//! * `spin.toml` and `runtime-config.toml` agree with what the component
//!   reads (`config::KEYS`) and with the collector's defaults.

use harness_test_kit::spin_check::{
    check_manifest, check_manifest_with, check_runtime_config, manifest_defaults, ManifestRules, Report, SpinWorlds,
    COMPONENT, OPTIONAL_UNMAPPED_KEYS, RELEASE_SOURCE, REQUIRED_KEYS,
};
use onepassword_collector::config::{Config, KEYS, SECRET_KEYS};
use onepassword_collector::error::MISSING_SETTING;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{LiftLowerAbi, ManglingAndAbi, Resolve};

/// This package's folder (`host-harness/test-kit`).
fn kit_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn workspace_dir() -> PathBuf {
    kit_dir().ancestors().nth(2).unwrap().to_path_buf()
}

/// Spin's WIT, copied from the spin-sdk 5.2.0 crate (see its README).
fn spin_wit_dir() -> PathBuf {
    kit_dir().join("tests/fixtures/spin-sdk-5.2.0-wit")
}

/// The cron trigger's WIT, as vendored for the component itself.
fn cron_wit_dir() -> PathBuf {
    workspace_dir().join("wit/deps/spin-cron-2.0.0")
}

fn spin() -> &'static SpinWorlds {
    static SPIN: OnceLock<SpinWorlds> = OnceLock::new();
    SPIN.get_or_init(|| SpinWorlds::load(&spin_wit_dir(), &cron_wit_dir()).expect("Spin's WIT loads"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The built component against Spin
// ---------------------------------------------------------------------------

#[test]
fn spins_worlds_are_the_expected_ones() {
    assert_eq!(spin().world_names(), ["spin:up/platform@3.6.0", "fermyon:spin-cron/spin-cron@2.0.0"]);
}

#[test]
fn the_built_component_runs_on_spin() {
    let path = host_harness::runtime::default_component_path();
    let wasm = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it first: cargo build --release --target wasm32-wasip2 -p onepassword-collector",
            path.display()
        )
    });
    let report = spin().check_component(&wasm).expect("the component decodes");
    println!("{report}");
    assert!(report.is_compatible(), "{report}");

    // What the component needs from Spin, by the exact versions Spin has.
    for (import, provider) in [
        ("wasi:keyvalue/store@0.2.0-draft2", "wasi:keyvalue/store@0.2.0-draft2"),
        ("wasi:config/store@0.2.0-draft-2024-09-27", "wasi:config/store@0.2.0-draft-2024-09-27"),
        ("wasi:http/outgoing-handler@0.2.6", "wasi:http/outgoing-handler@0.2.6"),
    ] {
        let link = report
            .imports
            .iter()
            .find(|l| l.import == import)
            .unwrap_or_else(|| panic!("the component should import {import}:\n{report}"));
        assert_eq!(link.provider.as_deref(), Some(provider), "{report}");
    }
    assert!(report.exports.iter().any(|e| e == "handle-cron-event"), "{report}");
}

#[test]
fn the_collector_world_as_declared_runs_on_spin() {
    // The WIT world itself, independent of what the build happened to use.
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(workspace_dir().join("wit")).unwrap();
    let world = resolve.select_world(&[pkg], Some("collector")).unwrap();
    let report = spin().check_component(&encode(&resolve, world)).unwrap();
    assert!(report.is_compatible(), "{report}");
}

// ---------------------------------------------------------------------------
// The checker catches real mismatches
// ---------------------------------------------------------------------------

/// A component with a dummy core module for `world`.
fn encode(resolve: &Resolve, world: wit_parser::WorldId) -> Vec<u8> {
    let mangling = ManglingAndAbi::Legacy(LiftLowerAbi::Sync);
    let mut module = wit_component::dummy_module(resolve, world, mangling);
    wit_component::embed_component_metadata(&mut module, resolve, world, StringEncoding::UTF8).unwrap();
    ComponentEncoder::default().module(&module).unwrap().validate(true).encode().unwrap()
}

/// Builds a component from WIT packages (dependencies first; the last one
/// holds world `test`), with the cron trigger's WIT available to `use`.
fn component(packages: &[&str]) -> Vec<u8> {
    let mut resolve = Resolve::default();
    resolve.push_dir(cron_wit_dir()).unwrap();
    let mut last = None;
    for (i, text) in packages.iter().enumerate() {
        last = Some(resolve.push_str(format!("test-{i}.wit"), text).unwrap_or_else(|e| panic!("{e:?}\n{text}")));
    }
    let world = resolve.select_world(&[last.unwrap()], Some("test")).unwrap();
    encode(&resolve, world)
}

/// World `test` of package `test:probe`: the given imports plus the correct
/// cron export.
fn probe(imports: &str) -> String {
    format!(
        "package test:probe;
         world test {{
             {imports}
             use fermyon:spin-cron/cron-types@2.0.0.{{metadata, error}};
             export handle-cron-event: func(metadata: metadata) -> result<_, error>;
         }}"
    )
}

fn check(packages: &[&str]) -> Report {
    let report = spin().check_component(&component(packages)).unwrap();
    println!("{report}");
    report
}

fn assert_reported(report: &Report, subject: &str, words: &[&str]) {
    let found = report.problems.iter().any(|p| p.subject == subject && words.iter().all(|w| p.message.contains(w)));
    assert!(found, "expected a problem for {subject} mentioning {words:?}, got:\n{report}");
}

/// Spin's `wasi:cli/environment` shape, under another version.
fn environment(version: &str, body: &str) -> String {
    format!("package wasi:cli@{version}; interface environment {{ {body} }}")
}

const ENVIRONMENT_0_2: &str = "
    get-environment: func() -> list<tuple<string, string>>;
    get-arguments: func() -> list<string>;
    initial-cwd: func() -> option<string>;
";

#[test]
fn a_good_probe_is_compatible() {
    let env = environment("0.2.6", ENVIRONMENT_0_2);
    let report = check(&[&env, &probe("import wasi:cli/environment@0.2.6;")]);
    assert!(report.is_compatible(), "{report}");
}

#[test]
fn a_newer_patch_release_links_to_spins_version() {
    // wasmtime links wasi:cli/environment@0.2.12 to the host's @0.2.6.
    let env = environment("0.2.12", ENVIRONMENT_0_2);
    let report = check(&[&env, &probe("import wasi:cli/environment@0.2.12;")]);
    assert!(report.is_compatible(), "{report}");
    let link = report.imports.iter().find(|l| l.import == "wasi:cli/environment@0.2.12").unwrap();
    assert_eq!(link.provider.as_deref(), Some("wasi:cli/environment@0.2.6"));
}

#[test]
fn another_draft_of_an_interface_is_reported() {
    let draft = "package wasi:keyvalue@0.2.0-draft;
        interface store {
            variant error { no-such-store, access-denied, other(string) }
            resource bucket {
                get: func(key: string) -> result<option<list<u8>>, error>;
            }
            open: func(identifier: string) -> result<bucket, error>;
        }";
    let report = check(&[draft, &probe("import wasi:keyvalue/store@0.2.0-draft;")]);
    assert!(!report.is_compatible());
    assert_reported(&report, "wasi:keyvalue/store@0.2.0-draft", &["not provided", "wasi:keyvalue/store@0.2.0-draft2"]);
}

#[test]
fn a_minor_release_spin_lacks_is_reported() {
    let env = environment("0.3.0", ENVIRONMENT_0_2);
    let report = check(&[&env, &probe("import wasi:cli/environment@0.3.0;")]);
    assert_reported(&report, "wasi:cli/environment@0.3.0", &["not provided", "wasi:cli/environment@0.2.6"]);
}

#[test]
fn an_interface_spin_never_heard_of_is_reported() {
    let other = "package acme:vault@1.0.0; interface secrets { read: func(name: string) -> string; }";
    let report = check(&[other, &probe("import acme:vault/secrets@1.0.0;")]);
    assert_reported(&report, "acme:vault/secrets@1.0.0", &["no interface of that name"]);
}

#[test]
fn a_function_spin_lacks_is_reported() {
    let body = format!("{ENVIRONMENT_0_2} get-secrets: func() -> list<string>;");
    let env = environment("0.2.9", &body);
    let report = check(&[&env, &probe("import wasi:cli/environment@0.2.9;")]);
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_reported(
        &report,
        "wasi:cli/environment@0.2.9#get-secrets",
        &["get-secrets", "wasi:cli/environment@0.2.6", "no such function"],
    );
}

#[test]
fn a_function_of_another_type_is_reported() {
    let body = ENVIRONMENT_0_2.replace("get-arguments: func() -> list<string>", "get-arguments: func() -> list<u8>");
    let env = environment("0.2.9", &body);
    let report = check(&[&env, &probe("import wasi:cli/environment@0.2.9;")]);
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_reported(
        &report,
        "wasi:cli/environment@0.2.9#get-arguments",
        &["func() -> list<u8>", "func() -> list<string>"],
    );
}

#[test]
fn a_resource_method_of_another_type_is_reported() {
    // Spin's store returns the value as bytes; this one wants a string.
    let store = "package wasi:keyvalue@0.2.0-draft2;
        interface store {
            variant error { no-such-store, access-denied, other(string) }
            resource bucket {
                get: func(key: string) -> result<option<string>, error>;
            }
            open: func(identifier: string) -> result<bucket, error>;
        }";
    let report = check(&[store, &probe("import wasi:keyvalue/store@0.2.0-draft2;")]);
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_reported(
        &report,
        "wasi:keyvalue/store@0.2.0-draft2#[method]bucket.get",
        &["result<option<string>, error>", "list<u8>"],
    );
}

#[test]
fn a_record_of_another_shape_is_reported() {
    let cron = "package fermyon:spin-cron@2.0.1; interface cron-types {
        record metadata { timestamp: u32 }
        variant error { other(string) }
    }";
    let world = "package test:probe; world test {
        use fermyon:spin-cron/cron-types@2.0.1.{metadata, error};
        export handle-cron-event: func(metadata: metadata) -> result<_, error>;
    }";
    let report = check(&[cron, world]);
    assert_reported(&report, "fermyon:spin-cron/cron-types@2.0.1#metadata", &["timestamp", "u32", "u64"]);
    assert_reported(&report, "handle-cron-event", &["timestamp"]);
}

#[test]
fn a_wrong_cron_entry_point_is_reported() {
    let world = "package test:probe; world test {
        export handle-cron-event: func(timestamp: u64) -> result<_, string>;
    }";
    let report = check(&[world]);
    assert!(!report.is_compatible());
    assert_reported(
        &report,
        "handle-cron-event",
        &["func(timestamp: u64) -> result<_, string>", "the cron trigger calls"],
    );
}

#[test]
fn a_missing_cron_entry_point_is_reported() {
    let world = "package test:probe; world test { export tick: func(); }";
    let report = check(&[world]);
    assert_reported(&report, "handle-cron-event", &["does not export"]);
}

#[test]
fn a_top_level_function_import_is_reported() {
    let world = "package test:probe; world test {
        import log: func(line: string);
        use fermyon:spin-cron/cron-types@2.0.0.{metadata, error};
        export handle-cron-event: func(metadata: metadata) -> result<_, error>;
    }";
    let report = check(&[world]);
    assert_reported(&report, "log", &["Spin provides no such import"]);
}

// ---------------------------------------------------------------------------
// spin.toml and runtime-config.toml
// ---------------------------------------------------------------------------

fn manifest() -> String {
    read(&workspace_dir().join("spin.toml"))
}

#[test]
fn spin_toml_is_consistent_with_the_component() {
    let problems = check_manifest(&manifest());
    assert!(problems.is_empty(), "spin.toml:\n{}", problems.iter().map(|p| format!("  {p}\n")).collect::<String>());
}

/// Values that satisfy every required setting.
fn required_values() -> HashMap<&'static str, String> {
    HashMap::from([
        ("base_url", "https://events.1password.com".to_string()),
        ("token", "op-token".to_string()),
        ("devo_url", "https://http-us.devo.io".to_string()),
        ("devo_domain", "acme".to_string()),
        ("devo_token", "abcdef0123456789abcdef0123456789".to_string()),
    ])
}

fn load(values: &HashMap<&str, String>) -> Result<Config, onepassword_collector::error::CollectorError> {
    Config::load(|k| Ok(values.get(k).cloned()))
}

#[test]
fn the_required_keys_are_what_the_collector_requires() {
    let values = required_values();
    let mut sample_keys: Vec<&str> = values.keys().copied().collect();
    let mut required: Vec<&str> = REQUIRED_KEYS.to_vec();
    sample_keys.sort();
    required.sort();
    assert_eq!(sample_keys, required, "the test's sample values must cover spin_check::REQUIRED_KEYS");
    if let Err(e) = load(&values) {
        panic!(
            "the collector needs more than spin_check::REQUIRED_KEYS: {} — if a new key is required, add it \
             there, here, and to spin.toml with required = true",
            e.message
        );
    }
    for key in REQUIRED_KEYS {
        let mut v = values.clone();
        v.remove(key);
        let e = load(&v).expect_err(key);
        assert_eq!(e.id, MISSING_SETTING, "{key}: {}", e.message);
        assert!(e.message.contains(key), "{}", e.message);
    }
}

#[test]
fn manifest_defaults_are_the_collectors_defaults() {
    let defaults = manifest_defaults(&manifest(), COMPONENT).unwrap();
    let values = required_values();
    let baseline = format!("{:?}", load(&values).unwrap());
    for key in KEYS {
        if REQUIRED_KEYS.contains(key) || OPTIONAL_UNMAPPED_KEYS.contains(key) {
            assert!(!defaults.contains_key(*key), "{key} must not have a default in spin.toml");
            continue;
        }
        let value = defaults.get(*key).unwrap_or_else(|| panic!("spin.toml gives {key} no default"));
        let mut v = values.clone();
        v.insert(*key, value.clone());
        match load(&v) {
            Ok(config) => assert_eq!(
                format!("{config:?}"),
                baseline,
                "spin.toml's default {key} = {value:?} is not the collector's default"
            ),
            Err(e) => panic!("spin.toml's default {key} = {value:?} is refused: {}", e.message),
        }
    }
}

#[test]
fn secrets_are_marked_secret_in_spin_toml() {
    // check_manifest covers this; spelled out for the keys that exist today.
    let doc: toml::Table = manifest().parse().unwrap();
    let vars = doc["variables"].as_table().unwrap();
    for key in SECRET_KEYS {
        if OPTIONAL_UNMAPPED_KEYS.contains(key) {
            continue;
        }
        assert_eq!(vars[*key].get("secret").and_then(|s| s.as_bool()), Some(true), "{key}");
    }
}

/// `a/b/../c` -> `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_manifest_source_is_the_release_build() {
    if std::env::var_os("CARGO_TARGET_DIR").is_some() {
        // spin build would also write there; only the file name can be compared.
        assert!(host_harness::runtime::default_component_path()
            .ends_with(Path::new(RELEASE_SOURCE).strip_prefix("target").unwrap()));
        return;
    }
    assert_eq!(
        normalize(&workspace_dir().join(RELEASE_SOURCE)),
        normalize(&host_harness::runtime::default_component_path())
    );
}

/// Applies a text edit to spin.toml and returns the problems found.
fn problems_after(from: &str, to: &str) -> Vec<String> {
    let text = manifest();
    assert!(text.contains(from), "spin.toml no longer contains {from:?}");
    check_manifest(&text.replacen(from, to, 1)).iter().map(|p| p.to_string()).collect()
}

fn assert_flags(from: &str, to: &str, words: &[&str]) {
    let problems = problems_after(from, to);
    assert!(
        problems.iter().any(|p| words.iter().all(|w| p.contains(w))),
        "replacing {from:?} by {to:?} should report {words:?}, got {problems:#?}"
    );
}

#[test]
fn manifest_mistakes_are_reported() {
    assert_flags(
        "token = { required = true, secret = true }",
        "token = { required = true }",
        &["variables.token", "secret = true"],
    );
    assert_flags(
        "devo_domain = { required = true }",
        "devo_domain = { default = \"acme\" }",
        &["variables.devo_domain", "required = true"],
    );
    assert_flags("page_size = \"{{ page_size }}\"\n", "", &["variables.page_size", "does not map it"]);
    assert_flags(
        "page_size = \"{{ page_size }}\"",
        "page_size = \"{{ page_sise }}\"",
        &["page_sise", "does not declare"],
    );
    assert_flags(
        "api_version = { default = \"v2\" }",
        "api_version = { default = \"\" }",
        &["api_version", "empty string"],
    );
    assert_flags(
        "services = { default = \"audit,item_usage,sign_in_attempts\" }",
        "services = { }",
        &["variables.services", "needs a default"],
    );
    assert_flags(
        "[\"{{ base_url }}\", \"{{ devo_url }}\"]",
        "[\"{{ base_url }}\"]",
        &["allowed_outbound_hosts", "devo_url"],
    );
    assert_flags(
        "[\"{{ base_url }}\", \"{{ devo_url }}\"]",
        "[\"{{ base_url }}\", \"{{ devo_url }}\", \"https://example.com\"]",
        &["allowed_outbound_hosts", "https://example.com"],
    );
    assert_flags(
        "[\"{{ base_url }}\", \"{{ devo_url }}\"]",
        "[\"{{ base_url }}\", \"{{ devo_url }}\", \"{{ devo_host }}\"]",
        &["allowed_outbound_hosts", "not configured to call"],
    );
    assert_flags("key_value_stores = [\"default\"]", "key_value_stores = []", &["key_value_stores"]);
    assert_flags(
        "cron_expression = \"0 * * * * *\"",
        "cron_expression = \"* * * *\"",
        &["cron_expression", "6 fields"],
    );
    assert_flags("component = \"collector\"", "component = \"other\"", &["trigger.cron"]);
    assert_flags(
        "source = \"target/wasm32-wasip2/release/onepassword_collector.wasm\"",
        "source = \"target/wasm32-wasip2/debug/onepassword_collector.wasm\"",
        &["source", "release"],
    );
    assert_flags("#   obfuscate_fields ", "#   ", &["obfuscate_fields", "comment"]);
    assert_flags(
        "[component.collector.variables]\n",
        "[component.collector.variables]\nnot_a_setting = \"{{ page_size }}\"\n",
        &["not_a_setting", "never reads"],
    );
}

#[test]
fn a_new_config_key_must_reach_spin_toml() {
    // What a later key would cause until spin.toml maps it.
    let mut keys = KEYS.to_vec();
    keys.push("brand_new_key");
    let rules = ManifestRules { keys: &keys, ..ManifestRules::collector() };
    let problems = check_manifest_with(&manifest(), &rules);
    assert!(
        problems.iter().any(|p| p.subject.ends_with(".brand_new_key") && p.message.contains("does not map it")),
        "{problems:#?}"
    );
}

#[test]
fn runtime_config_maps_the_store_to_redis_and_secrets_to_vault() {
    let text = read(&workspace_dir().join("runtime-config.toml"));
    let problems = check_runtime_config(&text);
    assert!(problems.is_empty(), "{problems:#?}");
    let doc: toml::Table = text.parse().unwrap();
    assert_eq!(doc["key_value_store"]["default"]["type"].as_str(), Some("redis"));
    assert_eq!(doc["config_provider"][0]["type"].as_str(), Some("vault"));

    let broken = text.replace("type = \"redis\"", "type = \"memcached\"");
    assert!(!check_runtime_config(&broken).is_empty());
    let broken = text.replace("mount = \"secret\"", "mount_point = \"secret\"");
    assert!(check_runtime_config(&broken).iter().any(|p| p.subject.ends_with(".mount")));
}
