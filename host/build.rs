//! Builds the Wasm components the host needs — the example sinks and the
//! guest programs of the tests — from source, for `wasm32-wasip2`.
//!
//! They are built by a nested `cargo` into their own target directory (a
//! nested build into the outer one would wait forever on its lock), and
//! their paths are handed to the crate as `SLUICE_GUEST_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("host/ sits in the workspace").to_owned();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: put the guests
    // beside the profiles so every profile and test binary shares them.
    // SLUICE_GUEST_TARGET_DIR moves them elsewhere: two checkouts that share
    // one target directory (worktrees) must not overwrite each other's guests.
    println!("cargo:rerun-if-env-changed=SLUICE_GUEST_TARGET_DIR");
    let target_dir = match std::env::var_os("SLUICE_GUEST_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => out_dir.ancestors().nth(4).expect("OUT_DIR has the usual shape").join("guests"),
    };

    for dir in ["wit", "guest-sdk", "examples", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());

    let mut packages = Vec::new();
    for dir in ["examples", "tests/guests"] {
        packages.extend(crate_names(&root.join(dir)));
    }
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&root)
        .args(["build", "--release", "--locked", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for p in &packages {
        cargo.args(["-p", p]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "RUSTC_WRAPPER"] {
        cargo.env_remove(var);
    }
    let status = cargo.status().expect("running cargo for the guest components");
    if !status.success() {
        panic!(
            "building the guest components failed (is the target installed? `rustup target add {TARGET}`); \
             see the cargo output above"
        );
    }
    let guests = target_dir.join(TARGET).join("release");
    println!("cargo:rustc-env=SLUICE_GUEST_DIR={}", guests.display());
}

/// Package names of the crates directly under `dir`.
fn crate_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return names };
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name").map(|r| r.trim_start_matches([' ', '=']).trim().trim_matches('"').to_owned()));
        if let Some(name) = name {
            names.push(name);
        }
    }
    names.sort();
    names
}
