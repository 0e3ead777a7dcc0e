//! Escapes from `/staging` fail, and the sink has no network, environment,
//! arguments, stdin or host files.

use crate::harness::*;
use sluice::{BatchError, Limit, Limits};

#[test]
fn escape_attempts_fail() {
    let h = harness(Limits::default());
    let sink = h.load("sandbox-probe");
    let outside = h.scratch.path().join("outside-secret.txt");
    std::fs::write(&outside, "secret").unwrap();
    let outside = outside.to_str().unwrap().to_owned();
    let cmds = vec![
        "open ../outside-secret.txt".to_owned(),
        "open ../../outside-secret.txt".to_owned(),
        "open /staging/../../etc/passwd".to_owned(),
        "open /etc/passwd".to_owned(),
        format!("open {outside}"),
        "open /".to_owned(),
        "list /".to_owned(),
        "list ..".to_owned(),
        "symlink /etc/passwd abs-link".to_owned(),
        "open abs-link".to_owned(),
        "symlink ../../outside-secret.txt rel-link".to_owned(),
        "open rel-link".to_owned(),
        "stage-file rel-link json-lines leak".to_owned(),
        "hardlink /etc/passwd hard-abs".to_owned(),
        "hardlink ../../outside-secret.txt hard-rel".to_owned(),
        "open hard-rel".to_owned(),
    ];
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let output = run(&sink, 1, &cmds).unwrap();
    let p = probes(&output);
    for cmd in &cmds {
        if cmd.starts_with("symlink") {
            // Creating a dangling symlink may be allowed; following it is not.
            continue;
        }
        let r = probe(&p, cmd);
        assert!(!r.ok, "{cmd} must fail, got {r:?}");
        assert!(!r.result.contains("secret") && !r.result.contains("root:"), "{cmd} leaked {r:?}");
    }
    assert!(rows(&output, "leak").is_empty());
    assert_eq!(std::fs::read_to_string(h.scratch.path().join("outside-secret.txt")).unwrap(), "secret");
}

#[test]
fn no_network_env_args_or_stdin() {
    let h = harness(Limits::default());
    let sink = h.load("sandbox-probe");
    let output = run(&sink, 1, &["connect 127.0.0.1:9", "connect [::1]:80", "env", "stdin"]).unwrap();
    let p = probes(&output);
    for cmd in ["connect 127.0.0.1:9", "connect [::1]:80"] {
        let r = probe(&p, cmd);
        assert!(!r.ok && r.result.contains("PermissionDenied"), "{cmd}: {r:?}");
    }
    assert_eq!(probe(&p, "env").result, "vars=0 [] args=[]");
    assert_eq!(probe(&p, "stdin").result, "0");
}

#[test]
fn staging_quota_ends_the_batch_with_the_limit_named() {
    let h = harness(Limits { staging_bytes: 1 << 20, ..Limits::default() });
    let sink = h.load("sandbox-probe");
    // Within the quota: fine.
    let ok = run(&sink, 1, &["fill small 524288"]).unwrap();
    assert!(probe(&probes(&ok), "fill small 524288").ok);
    // Past it: the batch ends, however the sink handles write errors.
    let err = run(&sink, 2, &["fill big 2097152"]).unwrap_err();
    assert!(matches!(err.error, BatchError::Limit(ref l) if l.limit == Limit::StagingBytes), "{err}");
    assert_eq!(err.to_string(), "batch 2: sink exceeded its /staging quota (limits.staging_bytes = 1048576)");
    // The kept scratch dir holds at most the quota.
    let kept = err.kept_scratch.expect("failed attempts keep /staging");
    let size = std::fs::metadata(kept.join("big")).map(|m| m.len()).unwrap_or(0);
    assert!(size <= 1 << 20, "wrote {size} bytes past the quota");
}
