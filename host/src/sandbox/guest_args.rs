//! `output.stage` and `log.log`, linked by hand so their arguments are read
//! lazily from guest memory, each piece charged before it is copied.
//!
//! Functions bindgen links receive their arguments already lifted: a
//! `list<string>` becomes a `Vec<String>` before any host code runs. Its
//! entries may all point at the same guest bytes, so a few MiB of guest
//! memory would become any number of host strings (wasmtime's per-call copy
//! limit, `limits.call_bytes`, caps one call, not a batch of calls). These
//! two are the functions whose arguments are lists of strings of any length:
//! here they take `WasmList`/`WasmStr`, and every row, key and log field is
//! charged to its limit (`limits.output_rows` and `limits.output_bytes`,
//! `limits.log_bytes`) before it is copied or parsed. The list itself costs
//! the host nothing until it is read; its header is charged to the per-call
//! copy limit by wasmtime.
//!
//! A string that is not valid UTF-8 is the sink's fault: the batch ends with
//! [`GuestFault`], classified as the sink's error.

use super::bindings::sluice::sink::{log as wit_log, output as wit};
use super::state::BatchState;
use crate::output::{JsonRows, OutputCollector, StageResult, WriteMode};
use crate::sandbox::batch_log::{FIELD_CHARGE, Level, LogLine, LogSource};
use std::borrow::Cow;
use wasmtime::component::{ComponentType, Lift, Linker, WasmList, WasmStr};
use wasmtime::{AsContext, AsContextMut, StoreContextMut};

/// The interfaces as wasmtime registers them, every version the host runs.
const OUTPUT: &str = "sluice:sink/output@0.1.0";
const LOG: &str = "sluice:sink/log@0.1.0";
const OUTPUT_V2: &str = "sluice:sink/output@0.2.0";
const LOG_V2: &str = "sluice:sink/log@0.2.0";

/// The sink broke the canonical ABI contract of a host call: a string that
/// is not UTF-8, say. Ends the batch as the sink's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct GuestFault(pub(crate) String);

/// `write-mode`, with the keys left in guest memory.
#[derive(ComponentType, Lift)]
#[component(variant)]
enum WriteModeArg {
    #[component(name = "append")]
    Append,
    #[component(name = "upsert")]
    Upsert(WasmList<WasmStr>),
}

/// 0.2.0's `write-mode`, which adds `delete`.
#[derive(ComponentType, Lift)]
#[component(variant)]
enum WriteModeArgV2 {
    #[component(name = "append")]
    Append,
    #[component(name = "upsert")]
    Upsert(WasmList<WasmStr>),
    #[component(name = "delete")]
    Delete(WasmList<WasmStr>),
}

impl From<WriteModeArg> for WriteModeArgV2 {
    fn from(mode: WriteModeArg) -> Self {
        match mode {
            WriteModeArg::Append => WriteModeArgV2::Append,
            WriteModeArg::Upsert(keys) => WriteModeArgV2::Upsert(keys),
        }
    }
}

/// `rows`, with the rows left in guest memory. `file-format` is the same
/// enum in every version (wasmtime checks enums by their case names).
#[derive(ComponentType, Lift)]
#[component(variant)]
enum RowsArg {
    #[component(name = "json")]
    Json(WasmList<WasmStr>),
    #[component(name = "file")]
    File((WasmStr, wit::FileFormat)),
}

/// Link `output.stage` and `log.log` of every version into `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<BatchState>) -> wasmtime::Result<()> {
    linker.instance(OUTPUT)?.func_wrap("stage", |store: StoreContextMut<'_, BatchState>, (table, mode, rows): (WasmStr, WriteModeArg, RowsArg)| {
        stage_call(store, table, mode.into(), rows)
    })?;
    linker.instance(OUTPUT_V2)?.func_wrap("stage", |store: StoreContextMut<'_, BatchState>, (table, mode, rows): (WasmStr, WriteModeArgV2, RowsArg)| {
        stage_call(store, table, mode, rows)
    })?;
    for name in [LOG, LOG_V2] {
        linker.instance(name)?.func_wrap(
            "log",
            |mut store: StoreContextMut<'_, BatchState>, (level, message, fields): (wit_log::Level, WasmStr, WasmList<(WasmStr, WasmStr)>)| {
                log(&mut store, level, message, fields)
            },
        )?;
    }
    Ok(())
}

fn stage_call(
    mut store: StoreContextMut<'_, BatchState>,
    table: WasmStr,
    mode: WriteModeArgV2,
    rows: RowsArg,
) -> wasmtime::Result<(Result<(), wit::StageError>,)> {
    // The collector is taken out of the store while the call reads guest
    // memory, and put back whatever happens.
    let mut output = store.data_mut().output.take().ok_or_else(|| wasmtime::Error::msg("output.stage re-entered"))?;
    let result = stage(&mut output, &mut store, table, mode, rows);
    store.data_mut().output = Some(output);
    Ok((result?,))
}

/// `s` as text, or the sink's fault naming `what`.
fn text<'a>(s: &WasmStr, store: wasmtime::StoreContext<'a, BatchState>, what: &str) -> wasmtime::Result<Cow<'a, str>> {
    s.to_str(store).map_err(|e| wasmtime::Error::new(GuestFault(format!("{what} is not valid UTF-8 ({e:#})"))))
}

fn stage(
    output: &mut OutputCollector,
    store: &mut StoreContextMut<'_, BatchState>,
    table: WasmStr,
    mode: WriteModeArgV2,
    rows: RowsArg,
) -> StageResult {
    let table = text(&table, store.as_context(), "output.stage: the table name")?.into_owned();
    if let Err(e) = output.begin(&table)? {
        return Ok(Err(e));
    }
    output.charge_bytes(table.len() as u64)?;
    let read_keys = |list: WasmList<WasmStr>, store: &mut StoreContextMut<'_, BatchState>, output: &mut OutputCollector| -> wasmtime::Result<Vec<String>> {
        let mut keys = Vec::with_capacity(0);
        for i in 0..list.len() {
            let key = list.get(store.as_context_mut(), i).expect("in bounds")?;
            let key = text(&key, store.as_context(), "output.stage: a key column")?;
            // The key's bytes and its place in the list.
            output.charge_bytes(key.len() as u64 + FIELD_CHARGE)?;
            keys.push(key.into_owned());
        }
        Ok(keys)
    };
    let mode = match mode {
        WriteModeArgV2::Append => WriteMode::Append,
        WriteModeArgV2::Upsert(list) => WriteMode::Upsert { keys: read_keys(list, store, output)? },
        WriteModeArgV2::Delete(list) => WriteMode::Delete { keys: read_keys(list, store, output)? },
    };
    if let Err(e) = output.check_mode(&table, &mode)? {
        return Ok(Err(e));
    }
    match rows {
        RowsArg::Json(list) => {
            let keys = mode.keys();
            let mut staged = JsonRows::new(keys);
            for i in 0..list.len() {
                let row = list.get(store.as_context_mut(), i).expect("in bounds")?;
                let row = text(&row, store.as_context(), "output.stage: a JSON row")?;
                if let Err(e) = output.push_json_row(&mut staged, row.as_bytes())? {
                    return Ok(Err(e));
                }
            }
            output.finish_json(&table, mode, staged)?;
            Ok(Ok(()))
        }
        RowsArg::File((path, format)) => {
            let path = text(&path, store.as_context(), "output.stage: the file path")?;
            output.charge_bytes(path.len() as u64)?;
            let staging = &store.data().staging;
            output.stage_file(&table, mode, staging, &path, format)
        }
    }
}

fn log(
    store: &mut StoreContextMut<'_, BatchState>,
    level: wit_log::Level,
    message: WasmStr,
    fields: WasmList<(WasmStr, WasmStr)>,
) -> wasmtime::Result<()> {
    let level = match level {
        wit_log::Level::Trace => Level::Trace,
        wit_log::Level::Debug => Level::Debug,
        wit_log::Level::Info => Level::Info,
        wit_log::Level::Warn => Level::Warn,
        wit_log::Level::Error => Level::Error,
    };
    let batch_log = store.data().log.clone();
    let message = text(&message, store.as_context(), "log: the message")?;
    batch_log.charge(message.len() as u64).map_err(wasmtime::Error::new)?;
    let message = message.into_owned();
    let mut kept = Vec::with_capacity(0);
    for i in 0..fields.len() {
        let (k, v) = fields.get(store.as_context_mut(), i).expect("in bounds")?;
        let k = text(&k, store.as_context(), "log: a field name")?;
        let v = text(&v, store.as_context(), "log: a field value")?;
        // An empty field still takes a slot of the line.
        batch_log.charge(k.len() as u64 + v.len() as u64 + FIELD_CHARGE).map_err(wasmtime::Error::new)?;
        kept.push((k.into_owned(), v.into_owned()));
    }
    batch_log.push_charged(LogLine { level, source: LogSource::Sink, message, fields: kept }).map_err(wasmtime::Error::new)
}
