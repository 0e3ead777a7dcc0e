//! The `bindgen!` sites: host-side types and traits of every WIT version
//! the host runs. A version is added beside the others, never edited.
//!
//! `v0_1` is the original `sluice:sink@0.1.0`; `v0_2` adds the `delete`
//! write mode. The records, types and log interfaces are the same in both,
//! so the host implements them once and links them under each version's
//! name; `output.stage` and `log.log` are linked by hand (`guest_args`).

/// `sluice:sink@0.1.0`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "sink",
        // Host functions may end the batch (a limit) by trapping.
        imports: { default: trappable },
        with: {
            "sluice:sink/records.record-stream": crate::sandbox::state::RecordStream,
        },
    });
}

/// `sluice:sink@0.2.0`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "sink",
        imports: { default: trappable },
        with: {
            "sluice:sink/records.record-stream": crate::sandbox::state::RecordStream,
        },
    });
}

// The host's own types are 0.1.0's; 0.2.0's are the same shapes.
pub use v0_1::*;
