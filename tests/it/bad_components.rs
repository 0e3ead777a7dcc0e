//! Files that are not sinks fail at load time, before any batch runs, with
//! a message that says what is wrong and what to do.

use crate::harness::*;
use sluice::{LoadError, Limits};

fn load_err(h: &Harness, name: &str, bytes: &[u8]) -> LoadError {
    let path = h.scratch.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    match h.runtime.load(&path) {
        Ok(_) => panic!("{name} must not load"),
        Err(e) => e,
    }
}

fn assert_nothing_ran(h: &Harness) {
    assert_eq!(std::fs::read_dir(h.scratch.path().join("live")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(h.scratch.path().join("failed")).unwrap().count(), 0);
}

#[test]
fn not_wasm() {
    let h = harness(Limits::default());
    let e = load_err(&h, "sink.wasm", b"#!/bin/sh\necho pwned\n");
    assert!(matches!(e, LoadError::NotWasm { .. }));
    assert!(e.to_string().ends_with(
        "sink.wasm is not a WebAssembly component (it does not start with the \\0asm magic); \
         build the sink with `cargo build --target wasm32-wasip2` or another component toolchain"
    ), "{e}");
    assert_nothing_ran(&h);
}

#[test]
fn core_module() {
    let h = harness(Limits::default());
    let module = wat::parse_str(r#"(module (func (export "for-each-batch")))"#).unwrap();
    let e = load_err(&h, "core.wasm", &module);
    assert!(matches!(e, LoadError::CoreModule { .. }), "{e}");
    assert!(e.to_string().contains("is a core WebAssembly module, not a component; build for wasm32-wasip2"), "{e}");
    assert_nothing_ran(&h);
}

#[test]
fn truncated_component() {
    let h = harness(Limits::default());
    let mut bytes = std::fs::read(guest("noop")).unwrap();
    bytes.truncate(bytes.len() / 2);
    let e = load_err(&h, "truncated.wasm", &bytes);
    assert!(matches!(e, LoadError::Compile { .. }), "{e}");
    assert!(e.to_string().contains("truncated.wasm: invalid WebAssembly component"), "{e}");
}

#[test]
fn component_of_another_world() {
    let h = harness(Limits::default());
    let e = h.runtime.load(guest("other-world")).err().expect("other-world must not load");
    assert!(matches!(e, LoadError::WrongWorld { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("is not a sluice sink"), "{msg}");
    assert!(msg.contains("sluice:sink/handler@0.2.0") && msg.contains("`@0.1.0`"), "{msg}");
    let empty = wat::parse_str("(component)").unwrap();
    let e = load_err(&h, "empty.wasm", &empty);
    assert!(matches!(e, LoadError::WrongWorld { .. }), "{e}");
    assert_nothing_ran(&h);
}

#[test]
fn component_importing_what_the_host_does_not_provide() {
    let h = harness(Limits::default());
    let c = wat::parse_str(r#"(component (import "evil:host/spawn" (instance (export "run" (func)))))"#).unwrap();
    let e = load_err(&h, "imports.wasm", &c);
    assert!(matches!(e, LoadError::WrongWorld { .. }), "{e}");
    assert!(e.to_string().contains("evil:host/spawn"), "the message names the import: {e}");
}

#[test]
fn compiled_components_are_cached_by_digest() {
    let cache = tempfile::tempdir().unwrap();
    let cached = || {
        let mut files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    };
    let h = harness_with(Limits::default(), |b| b.with_cache_dir(cache.path()));
    let first = h.load("noop");
    let files = cached();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with(first.digest()) && name.ends_with(".cwasm"), "{name}");
    // A second runtime (a restart) loads the cached code: same digest, no new file.
    let again = harness_with(Limits::default(), |b| b.with_cache_dir(cache.path()));
    assert_eq!(again.load("noop").digest(), first.digest());
    assert_eq!(cached(), files);
    // A corrupt cache entry is recompiled, not trusted.
    std::fs::write(&files[0], b"garbage").unwrap();
    let sink = again.load("noop");
    run(&sink, 1, &[]).unwrap();
    assert!(std::fs::read(&files[0]).unwrap().len() > 100, "the entry was rewritten");
}
