//! The host library stays a host: an embedder that depends on
//! `host-harness` pulls in none of the test kit (emulators and their HTTP
//! server, Spin checker) nor the CLI and its argument parser. This is the README's
//! `cargo tree` check, run by the tests so it cannot silently rot.

use std::process::Command;

#[test]
fn the_host_library_does_not_depend_on_the_test_kit_or_the_cli() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", "host-harness", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"wasmtime") && crates.contains(&"rusqlite"), "not the host's tree:\n{tree}");
    for unwanted in ["harness-test-kit", "host-harness-cli", "tiny_http", "clap"] {
        assert!(!crates.contains(&unwanted), "host-harness depends on {unwanted}:\n{tree}");
    }
}
