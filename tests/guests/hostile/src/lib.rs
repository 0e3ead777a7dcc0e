//! A sink that misbehaves on request, for the host's containment tests: each
//! misbehaviour must end the batch with a trap or an exceeded limit, never
//! hang or crash the host, and leave nothing committed.
//!
//! The first record's value selects it: `loop`, `alloc`, `recurse`, `trap`,
//! `panic`, `flood-output` (stages to table `hostile`), `flood-log`,
//! `flood-stdout`, or `ok`. A batch without records succeeds.

use std::hint::black_box;

use sluice_sdk::{Batch, SinkError, Table, log};

fn misbehave(batch: Batch) -> Result<(), SinkError> {
    let Some(first) = batch.records().next() else {
        return Ok(());
    };
    let mode = String::from_utf8_lossy(first.value.as_deref().unwrap_or_default()).into_owned();
    match mode.trim() {
        "loop" => spin(),
        "alloc" => hoard(),
        "recurse" => {
            black_box(recurse(0, black_box(1)));
            Ok(())
        }
        "trap" => trap(),
        "panic" => panic!("sink panicked on purpose"),
        "flood-output" => {
            let table = Table::new("hostile");
            loop {
                table.append_json([r#"{"flood":1}"#])?;
            }
        }
        "flood-log" => loop {
            log::info("flooding the batch log");
        },
        "flood-stdout" => loop {
            println!("flooding stdout");
        },
        "ok" => Ok(()),
        other => Err(SinkError::invalid_input(format!(
            "unknown misbehaviour {other:?}"
        ))),
    }
}

/// Burns CPU without ever calling the host: only fuel or epochs can stop it.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Grows memory 1 MiB at a time, writing every byte so the pages are real.
fn hoard() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(black_box(vec![1u8; 1 << 20]));
    }
}

/// Unbounded recursion on the Wasm stack, the one `limits.stack_bytes` caps.
/// Each frame keeps eight values live across the call and mixes them into the
/// result without an associative operation, so the optimiser can neither drop
/// the frames nor turn the recursion into a loop. Nothing has its address
/// taken: the frames stay out of the shadow stack in linear memory, which
/// would otherwise overflow first and end in a plain out-of-bounds trap.
#[inline(never)]
fn recurse(depth: u64, seed: u64) -> u64 {
    if depth == u64::MAX {
        return seed;
    }
    let a = seed.rotate_left(7) ^ depth;
    let b = a.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let c = b.rotate_left(13) ^ a;
    let d = c.wrapping_add(depth.rotate_right(3));
    let e = d.wrapping_mul(b | 1);
    let f = e.rotate_left(29) ^ c;
    let g = f.wrapping_sub(a);
    let h = g.rotate_right(17) ^ e;
    let r = recurse(depth + 1, h);
    r.rotate_left((a & 63) as u32).wrapping_mul(b | 1)
        ^ c.wrapping_sub(d)
        ^ e.rotate_right((f & 63) as u32)
        ^ g.wrapping_mul(h)
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

sluice_sdk::export_sink!(misbehave);
