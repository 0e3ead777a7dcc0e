//! Property tests of the checkpoint's file parsing (`offsets/N`,
//! `commits/N`, `attempts/*.jsonl`): whatever bytes a disk, a crash or a
//! person leaves there, reading never panics, and a file that cannot be used
//! is a `Corrupt` error naming the file and what is wrong (attempt lines:
//! an error naming the file and line). `PROPTEST_CASES` sets the cases per
//! property (default 256).

use super::*;
use crate::checkpoint::attempt_log::{self, AttemptRecord};
use proptest::prelude::*;

fn planned() -> PlannedBatch {
    PlannedBatch {
        batch_id: 0,
        planned_timestamp_ms: 1_700_000_000_000,
        ranges: vec![
            SourceRange { topic: "orders".into(), partition: 0, start: 0, end: 10 },
            SourceRange { topic: "orders".into(), partition: 1, start: 5, end: 9 },
        ],
        component_digest: "c".repeat(64),
        config_digest: "f".repeat(64),
        release: None,
    }
}

/// A checkpoint file for `body`, with a matching checksum (as a careless
/// edit that fixes the checksum would leave it).
fn sealed(body: &[u8]) -> Vec<u8> {
    let mut file = format!("{MAGIC} sha256={}\n", hex::encode(Sha256::digest(body))).into_bytes();
    file.extend_from_slice(body);
    file.push(b'\n');
    file
}

/// Read `bytes` as `offsets/0` and `commits/0`: a record or a `Corrupt`
/// error naming the file.
fn read_both(cp: &Checkpoint, bytes: &[u8]) -> Result<(), TestCaseError> {
    for log in ["offsets", "commits"] {
        let path = cp.attempts_dir().join(log).join("0");
        std::fs::write(&path, bytes).unwrap();
        let result = if log == "offsets" { cp.planned(0).map(|p| p.is_some()) } else { cp.committed(0).map(|c| c.is_some()) };
        match result {
            Ok(found) => prop_assert!(found),
            Err(CheckpointError::Corrupt { path: named, reason }) => {
                prop_assert_eq!(named, path);
                prop_assert!(!reason.is_empty());
            }
            Err(e) => prop_assert!(false, "not a corruption error: {e}"),
        }
    }
    Ok(())
}

fn mutate(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)], cut: &prop::sample::Index) -> Vec<u8> {
    for (at, byte) in flips {
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] = *byte;
        }
    }
    bytes.truncate(cut.index(bytes.len() + 1));
    bytes
}

#[test]
fn arbitrary_and_damaged_checkpoint_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = Checkpoint::open(tmp.path()).unwrap();
    let body = serde_json::to_vec(&planned()).unwrap();
    let damage = || proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6);
    proptest!(|(junk in proptest::collection::vec(any::<u8>(), 0..600))| {
        read_both(&cp, &junk)?;
        read_both(&cp, &sealed(&junk))?;
    });
    // Damage in the JSON itself, checksum fixed so the record is parsed.
    proptest!(|(flips in damage(), cut in any::<prop::sample::Index>())| {
        read_both(&cp, &sealed(&mutate(body.clone(), &flips, &cut)))?;
    });
    // Damage anywhere in a valid file, checksum left as it was.
    proptest!(|(flips in damage(), cut in any::<prop::sample::Index>())| {
        read_both(&cp, &mutate(sealed(&body), &flips, &cut))?;
    });
    // Values of the right shape at the edges: never a panic on use.
    proptest!(|(n in any::<u64>(), start in any::<i64>(), end in any::<i64>(), partition in any::<i32>(), digest in ".{0,70}")| {
        let p = PlannedBatch {
            batch_id: n,
            ranges: vec![SourceRange { topic: digest.clone(), partition, start, end }],
            component_digest: digest,
            ..planned()
        };
        read_both(&cp, &sealed(&serde_json::to_vec(&p).unwrap()))?;
    });
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = Checkpoint::open(tmp.path()).unwrap();
    // Typed fields stop at the first wrong token; an unknown field's value
    // is skipped, and skipping is where nesting could recurse without end.
    let deep = format!("{{\"unknown\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    std::fs::write(tmp.path().join("offsets/0"), sealed(deep.as_bytes())).unwrap();
    let err = cp.planned(0).unwrap_err().to_string();
    assert!(err.starts_with(&format!("checkpoint file {} is corrupt: unreadable record: ", tmp.path().join("offsets/0").display())), "{err}");
}

#[test]
fn arbitrary_attempt_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let good = serde_json::to_vec(&AttemptRecord::started(7, 1, 10)).unwrap();
    let path = tmp.path().join("attempts/0.jsonl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let damage = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6);
    proptest!(|(junk in proptest::collection::vec(any::<u8>(), 0..600), flips in damage, cut in any::<prop::sample::Index>())| {
        for bytes in [junk.clone(), mutate(good.clone(), &flips, &cut)] {
            std::fs::write(&path, &bytes).unwrap();
            for read in attempt_log::read(tmp.path(), 7) {
                if let Err(e) = read {
                    prop_assert!(e.starts_with(&format!("{} line ", path.display())), "{e}");
                }
            }
        }
    });
}
