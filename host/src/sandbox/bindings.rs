//! The one `bindgen!` site: host-side types and traits of `sluice:sink@0.1.0`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sink",
    // Host functions may end the batch (a limit) by trapping.
    imports: { default: trappable },
    with: {
        "sluice:sink/records.record-stream": super::state::RecordStream,
    },
});
