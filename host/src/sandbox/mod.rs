//! The sandbox: one engine per job, a fresh component instance per batch.
//!
//! Guarantee: a batch attempt runs in an instance nobody else used, with an
//! empty `/staging` nobody else sees, a clock and random stream derived from
//! the batch identity, and every limit armed. Whatever the sink does — trap,
//! loop, allocate, flood — the attempt ends with a typed [`BatchError`] and
//! the host, the engine and the next batch are unaffected. Success yields a
//! [`BatchOutput`]; no table is touched here.
//!
//! ```text
//!  load ─► validate header ─► compile (or cache hit) ─► link & typecheck (InstancePre)
//!  run  ─► fresh /staging ─► WASI ctx (virtual clock, seeded random, no env/net)
//!       ─► instantiate from pool ─► for-each-batch ─┬─ ok ──► output, remove /staging
//!                                                   └─ err ─► typed error, keep /staging
//! ```
//!
//! No host call the sink can make waits in real time (`waiting`), and what
//! it can hold and create in `/staging` is bounded and deterministic
//! (`staging_fs`, `staging_quota`).

pub(crate) mod batch_log;
pub(crate) mod bindings;
pub(crate) mod determinism;
mod engine;
pub(crate) mod guest_args;
pub(crate) mod scratch;
pub(crate) mod state;
mod staging_fs;
mod staging_quota;
mod stdio;
mod waiting;

use crate::sandbox::batch_log::{BatchLog, LogSource};
use crate::sandbox::determinism::{SeededRng, VirtualClock, batch_seed, insecure_seed};
use crate::error::{BatchError, BatchFailure, LoadError};
use crate::limits::{Budget, Limit, LimitExceeded, Limits};
use crate::output::{BatchOutput, Declared, DeclaredTables, OutputCollector, StageViolation, Timings};
use crate::source::records::{BatchSpec, ChunkBuilder, RecordSource, SourceError};
use crate::sandbox::scratch::ScratchRoot;
use bindings::sluice::sink::types;
use engine::{EPOCH_TICK, SinkEngine};
use state::{BatchState, MemoryLimiter, RecordCursor, RecordStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{PoolConcurrencyLimitError, Store, Trap};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// Configures a [`Runtime`].
#[derive(Debug)]
pub struct RuntimeBuilder {
    scratch_root: PathBuf,
    limits: Limits,
    cache_dir: Option<PathBuf>,
    tables: Option<DeclaredTables>,
    keep_failed: usize,
    max_concurrent_batches: u32,
}

impl RuntimeBuilder {
    /// Scratch directories go under `scratch_root`.
    pub fn new(scratch_root: impl Into<PathBuf>) -> Self {
        Self {
            scratch_root: scratch_root.into(),
            limits: Limits::default(),
            cache_dir: None,
            tables: None,
            keep_failed: 10,
            max_concurrent_batches: 64,
        }
    }

    /// The limits of every batch.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Cache compiled components in `dir` (keyed by content digest).
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Only these tables may be staged to, upserts on any keys. Without it
    /// (or [`with_keyed_tables`](Self::with_keyed_tables)), any name is
    /// accepted.
    pub fn with_tables(mut self, tables: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let declared = self.tables.get_or_insert_default();
        declared.extend(tables.into_iter().map(|t| (t.into(), Declared::AnyKeys)));
        self
    }

    /// Only these tables may be staged to, each upserted on exactly its
    /// declared keys (`[[tables]] keys`; none: appends only). An upsert on
    /// other keys ends the batch: the merge key is the pipeline's choice.
    pub fn with_keyed_tables(mut self, tables: impl IntoIterator<Item = (String, Vec<String>)>) -> Self {
        let declared = self.tables.get_or_insert_default();
        declared.extend(tables.into_iter().map(|(t, keys)| (t, Declared::Keys(keys))));
        self
    }

    /// How many `/staging` directories of failed attempts to keep.
    pub fn with_keep_failed(mut self, n: usize) -> Self {
        self.keep_failed = n;
        self
    }

    /// How many batches may run at once (sizes the instance pool).
    pub fn with_max_concurrent_batches(mut self, n: u32) -> Self {
        self.max_concurrent_batches = n.max(1);
        self
    }

    /// Create the engine and the scratch root.
    pub fn build(self) -> Result<Runtime, LoadError> {
        let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let engine = SinkEngine::new(&self.limits, self.max_concurrent_batches, self.cache_dir).map_err(engine_err)?;
        let mut linker = Linker::new(&engine.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
        bindings::sluice::sink::records::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
        bindings::v0_2::sluice::sink::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
        bindings::v0_2::sluice::sink::records::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
        guest_args::add_to_linker(&mut linker).map_err(engine_err)?;
        staging_quota::add_to_linker(&mut linker).map_err(engine_err)?;
        staging_fs::add_to_linker(&mut linker).map_err(engine_err)?;
        waiting::add_to_linker(&mut linker).map_err(engine_err)?;
        let scratch = ScratchRoot::new(&self.scratch_root, self.keep_failed)
            .map_err(|source| LoadError::Scratch { path: self.scratch_root.clone(), source })?;
        Ok(Runtime {
            inner: Arc::new(Inner { engine, linker, limits: self.limits, scratch, tables: self.tables.map(Arc::new) }),
        })
    }
}

/// The sandbox of one job: engine, linker, limits, scratch space.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: SinkEngine,
    linker: Linker<BatchState>,
    limits: Limits,
    scratch: ScratchRoot,
    tables: Option<Arc<DeclaredTables>>,
}

impl Runtime {
    /// The limits of every batch.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Where scratch directories live.
    pub fn scratch(&self) -> &ScratchRoot {
        &self.inner.scratch
    }

    /// Load a sink component from a file.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Sink, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        self.load_bytes(&path.display().to_string(), &bytes)
    }

    /// Load a sink component from bytes; `what` names it in errors.
    ///
    /// Everything that can be checked without running is checked here:
    /// the format, the compilation, every import, and the export.
    pub fn load_bytes(&self, what: &str, bytes: &[u8]) -> Result<Sink, LoadError> {
        let (component, digest) = self.inner.engine.compile(what, bytes)?;
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld { what: what.into(), detail: format!("{e:#}") };
        let pre = self.inner.linker.instantiate_pre(&component).map_err(wrong_world)?;
        // The newest version the component exports; an error names it.
        let pre = match bindings::v0_2::SinkPre::new(pre.clone()) {
            Ok(pre) => Pre::V0_2(pre),
            Err(newest) => match bindings::SinkPre::new(pre) {
                Ok(pre) => Pre::V0_1(pre),
                Err(_) => return Err(wrong_world(newest)),
            },
        };
        Ok(Sink { runtime: self.clone(), pre, digest })
    }
}

/// A component linked for the WIT version it was built against.
#[derive(Clone)]
enum Pre {
    V0_1(bindings::SinkPre<BatchState>),
    V0_2(bindings::v0_2::SinkPre<BatchState>),
}

/// A loaded, validated sink, ready to run batches. Cheap to clone and safe
/// to run from many threads at once.
#[derive(Clone)]
pub struct Sink {
    runtime: Runtime,
    pre: Pre,
    digest: String,
}

impl Sink {
    /// SHA-256 of the component bytes (hex).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Run one batch attempt in a fresh instance with a fresh `/staging`.
    pub fn run(&self, spec: &BatchSpec, attempt: u32, source: Box<dyn RecordSource>) -> Result<BatchOutput, BatchFailure> {
        let inner = &self.runtime.inner;
        let limits = &inner.limits;
        let started = Instant::now();
        let mut timings = Timings::default();
        let log = BatchLog::new(limits);
        let fail = |error, kept_scratch| BatchFailure {
            batch_id: spec.batch_id,
            attempt,
            error,
            log: log.lines(),
            kept_scratch,
        };
        let scratch = inner.scratch.create(&spec.pipeline_id, spec.batch_id, attempt).map_err(|source| {
            fail(BatchError::Scratch { path: inner.scratch.path().to_owned(), source }, None)
        })?;
        let scratch_path = scratch.path().to_owned();
        let scratch_err = |source| BatchError::Scratch { path: scratch_path.clone(), source };

        let outcome = match self.sandbox(spec, source, &log, scratch.path(), scratch.dir(), started) {
            Err(source) => Err(scratch_err(source)),
            Ok(mut store) => {
                timings.setup = started.elapsed();
                let outcome = self.call(&mut store, spec, &log, &mut timings);
                let fuel_used = limits.fuel - store.get_fuel().unwrap_or(0);
                outcome.map(|()| {
                    let state = store.into_data();
                    let (records_in, record_bytes_in) = state.records.builder.delivered();
                    let (ops, digest) = state.output.expect("put back after every stage call").finish();
                    BatchOutput {
                        batch: spec.clone(),
                        digest,
                        ops,
                        log: log.lines(),
                        records_in,
                        record_bytes_in,
                        fuel_used,
                        quarantined: 0,
                        timings,
                    }
                })
            }
        };
        // Clean-up is bounded (the sink's entries are) and never changes the
        // outcome: the output is complete, or the error is the batch's own.
        match outcome {
            Ok(mut output) => {
                let teardown = Instant::now();
                scratch.remove();
                output.timings.teardown = teardown.elapsed();
                Ok(output)
            }
            Err(error) => {
                let kept = scratch.keep();
                Err(fail(error, kept))
            }
        }
    }

    /// The store of one attempt: WASI context, limits, record cursor.
    fn sandbox(
        &self,
        spec: &BatchSpec,
        source: Box<dyn RecordSource>,
        log: &BatchLog,
        staging_path: &Path,
        staging: &cap_std::fs::Dir,
        started: Instant,
    ) -> std::io::Result<Store<BatchState>> {
        let inner = &self.runtime.inner;
        let limits = &inner.limits;
        let seed = batch_seed(&spec.pipeline_id, spec.batch_id);
        let clock = VirtualClock::new(spec.planned_timestamp_ms);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdio::CapturedStdio { log: log.clone(), source: LogSource::Stdout })
            .stderr(stdio::CapturedStdio { log: log.clone(), source: LogSource::Stderr })
            .wall_clock(clock.clone())
            .monotonic_clock(clock.clone())
            .secure_random(SeededRng::new(seed, 0))
            .insecure_random(SeededRng::new(seed, 1))
            .insecure_random_seed(insecure_seed(seed))
            // Random bytes are made for a call before it returns: capped
            // like any other copy between host and guest.
            .max_random_size(limits.call_bytes)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // Filesystem calls are short and local: run them on this thread
            // instead of hopping to a blocking pool.
            .allow_blocking_current_thread(true)
            .initial_cwd("/staging");
        wasi.preopened_dir(staging_path, "/staging", FsPerms::ReadWrite).map_err(std::io::Error::other)?;
        let state = BatchState {
            wasi: wasi.build(),
            table: Default::default(),
            memory: MemoryLimiter { max_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX) },
            records: RecordCursor {
                source,
                builder: ChunkBuilder::new(spec.ranges.clone(), limits.chunk_records, limits.chunk_bytes),
                done: false,
            },
            output: Some(OutputCollector::new(inner.tables.clone(), limits)),
            log: log.clone(),
            staging_quota: Arc::new(Budget::new(Limit::StagingBytes, limits)),
            staging: staging.try_clone()?,
            waits: waiting::Waits::new(clock.clone(), limits, started),
            fs: staging_fs::StagingFs::new(limits, clock.start()),
        };
        let mut store = Store::new(&inner.engine.engine, state);
        store.limiter(|s| &mut s.memory);
        store.set_fuel(limits.fuel).map_err(std::io::Error::other)?;
        store.set_hostcall_fuel(usize::try_from(limits.call_bytes).unwrap_or(usize::MAX));
        let ticks = limits.deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1);
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok(store)
    }

    fn call(
        &self,
        store: &mut Store<BatchState>,
        spec: &BatchSpec,
        log: &BatchLog,
        timings: &mut Timings,
    ) -> Result<(), BatchError> {
        let info = types::BatchInfo {
            pipeline_id: spec.pipeline_id.clone(),
            batch_id: spec.batch_id,
            planned_timestamp_ms: spec.planned_timestamp_ms,
            ranges: spec
                .ranges
                .iter()
                .map(|r| types::SourceRange { topic: r.topic.clone(), partition: r.partition, start: r.start, end: r.end })
                .collect(),
        };
        let start = Instant::now();
        let instantiate_err = |e: wasmtime::Error| match e.downcast_ref::<PoolConcurrencyLimitError>() {
            Some(full) => BatchError::Capacity(full.to_string()),
            None => BatchError::Internal(format!("instantiating the sink: {e:#}")),
        };
        let stream = |store: &mut Store<BatchState>| store.data_mut().table.push(RecordStream).map_err(|e| BatchError::Internal(e.to_string()));
        let result = match &self.pre {
            Pre::V0_1(pre) => {
                let instance = pre.instantiate(&mut *store).map_err(instantiate_err)?;
                let stream = stream(store)?;
                timings.instantiate = start.elapsed();
                let start = Instant::now();
                let result = instance.sluice_sink_handler().call_for_each_batch(&mut *store, &info, stream);
                timings.call = start.elapsed();
                result
            }
            Pre::V0_2(pre) => {
                use bindings::v0_2::sluice::sink::types as types2;
                let info = types2::BatchInfo {
                    pipeline_id: info.pipeline_id,
                    batch_id: info.batch_id,
                    planned_timestamp_ms: info.planned_timestamp_ms,
                    ranges: info
                        .ranges
                        .into_iter()
                        .map(|r| types2::SourceRange { topic: r.topic, partition: r.partition, start: r.start, end: r.end })
                        .collect(),
                };
                let instance = pre.instantiate(&mut *store).map_err(instantiate_err)?;
                let stream = stream(store)?;
                timings.instantiate = start.elapsed();
                let start = Instant::now();
                let result = instance.sluice_sink_handler().call_for_each_batch(&mut *store, &info, stream);
                timings.call = start.elapsed();
                result.map(|r| {
                    r.map_err(|e| match e {
                        types2::SinkError::InvalidInput(m) => types::SinkError::InvalidInput(m),
                        types2::SinkError::Failed(m) => types::SinkError::Failed(m),
                    })
                })
            }
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(types::SinkError::InvalidInput(m))) => Err(BatchError::InvalidInput(m)),
            Ok(Err(types::SinkError::Failed(m))) => Err(BatchError::SinkFailed(m)),
            Err(e) => Err(classify(e, &self.runtime.inner.limits, log)),
        }
    }
}

/// Turn a failed call into the typed reason. Whatever the sink caused is
/// the sink's error, named first: a limit, a refused operation, a bad host
/// call, a trap. Only what is left is `internal`.
fn classify(e: wasmtime::Error, limits: &Limits, log: &BatchLog) -> BatchError {
    if let Some(limit) = e.downcast_ref::<LimitExceeded>() {
        return BatchError::Limit(limit.clone());
    }
    if let Some(v) = e.downcast_ref::<StageViolation>() {
        return BatchError::Refused(v.clone());
    }
    if let Some(source) = e.downcast_ref::<SourceError>() {
        return BatchError::Source(source.clone());
    }
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return BatchError::Trap { trap: format!("sink called exit({})", exit.0), stderr: log.stderr_tail(5) };
    }
    if let Some(fault) = guest_fault(&e) {
        return fault.unwrap_or_else(|| LimitExceeded::new(Limit::CallBytes, limits).into());
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => LimitExceeded::new(Limit::Fuel, limits).into(),
        Some(Trap::Interrupt) => LimitExceeded::new(Limit::DeadlineMs, limits).into(),
        Some(Trap::StackOverflow) => LimitExceeded::new(Limit::StackBytes, limits).into(),
        Some(trap) => BatchError::Trap { trap: trap.to_string(), stderr: log.stderr_tail(5) },
        None => BatchError::Internal(format!("{e:#}")),
    }
}

/// What wasmtime reports, as plain errors, when lifting a host call's
/// arguments fails: each is the guest's doing (wasmtime 48's texts; the
/// `guest_faults_are_the_sinks_errors` test pins them).
const LIFT_ERRORS: &[&str] = &[
    "pointer/length out of bounds of memory",
    "pointer is not aligned",
    "pointer not aligned",
    "fixed length list out of bounds of memory",
    "invalid option discriminant",
    "invalid expected discriminant",
    "unexpected discriminant",
    "unknown handle index",
    "borrow handles still remain",
];

/// wasmtime's per-call copy limit (hostcall fuel), as it words it.
const HOSTCALL_FUEL: &str = "fuel allocated for hostcalls has been exhausted";

/// `Some(Some(error))`: the sink passed a host call something invalid;
/// `Some(None)`: it passed more than `limits.call_bytes`; `None`: neither.
fn guest_fault(e: &wasmtime::Error) -> Option<Option<BatchError>> {
    if let Some(f) = e.downcast_ref::<guest_args::GuestFault>() {
        return Some(Some(BatchError::InvalidCall(f.0.clone())));
    }
    if let Some(u) = e.downcast_ref::<std::str::Utf8Error>() {
        return Some(Some(BatchError::InvalidCall(format!("a string argument is not valid UTF-8 ({u})"))));
    }
    if let Some(u) = e.downcast_ref::<std::char::DecodeUtf16Error>() {
        return Some(Some(BatchError::InvalidCall(format!("a string argument is not valid UTF-16 ({u})"))));
    }
    if let Some(c) = e.downcast_ref::<std::char::CharTryFromError>() {
        return Some(Some(BatchError::InvalidCall(format!("a char argument is not a Unicode scalar value ({c})"))));
    }
    if let Some(r) = e.downcast_ref::<wasmtime::component::ResourceTableError>() {
        return Some(Some(BatchError::InvalidCall(format!("a resource handle argument is not valid ({r})"))));
    }
    let text = format!("{e:#}");
    // wasmtime-wasi refuses more random bytes than `max_random_size` (set to
    // `limits.call_bytes`) with "requested len N exceeds limit M".
    if text.contains(HOSTCALL_FUEL) || (text.contains("requested len") && text.contains("exceeds limit")) {
        return Some(None);
    }
    let root = e.root_cause().to_string();
    LIFT_ERRORS.iter().any(|t| root.contains(t)).then(|| Some(BatchError::InvalidCall(root)))
}
