//! The wasmtime engine of a job and its on-disk cache of compiled components.
//!
//! One engine per job, configured for untrusted, deterministic guests: fuel
//! metering, epoch interruption (a ticker thread advances the epoch every
//! [`EPOCH_TICK`]), NaN canonicalisation, deterministic relaxed SIMD, and a
//! pooling allocator so a fresh instance per batch costs microseconds.
//! Compiled components are cached under their content digest plus the
//! engine's compatibility hash: a changed component or engine never reuses
//! stale code.

use crate::error::LoadError;
use crate::limits::Limits;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Granularity of the wall-clock deadline.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

pub(crate) struct SinkEngine {
    pub(crate) engine: Engine,
    cache_dir: Option<PathBuf>,
    _ticker: EpochTicker,
}

impl SinkEngine {
    pub(crate) fn new(limits: &Limits, max_instances: u32, cache_dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(max_instances)
            .total_core_instances(max_instances * 16)
            .total_memories(max_instances * 4)
            .total_tables(max_instances * 16)
            .max_memory_size(usize::try_from(limits.memory_bytes)?)
            // Component runtimes (CPython, SpiderMonkey) have large instances.
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .max_wasm_stack(usize::try_from(limits.stack_bytes)?)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self { engine, cache_dir, _ticker: ticker })
    }

    /// Validate and compile `bytes`, or load the cached compilation.
    pub(crate) fn compile(&self, what: &str, bytes: &[u8]) -> Result<(Component, String), LoadError> {
        check_header(what, bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let Some(dir) = &self.cache_dir else {
            return Ok((self.compile_uncached(what, bytes)?, digest));
        };
        let cache_err = |source| LoadError::Cache { dir: dir.clone(), source };
        let mut h = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let path = dir.join(format!("{digest}-{:016x}.cwasm", h.finish()));
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash, under a name that
            // carries the digest of its source. The cache directory must be
            // as private as the sluice binary itself: code in it runs natively.
            #[allow(unsafe_code, reason = "loading precompiled code from the host-private cache")]
            if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, &path) } {
                return Ok((component, digest));
            }
            // A truncated or foreign file: fall through and recompile.
        }
        let component = self.compile_uncached(what, bytes)?;
        let serialized = component.serialize().map_err(|e| LoadError::Compile { what: what.into(), detail: format!("{e:#}") })?;
        std::fs::create_dir_all(dir).map_err(cache_err)?;
        write_atomic(&path, &serialized).map_err(cache_err)?;
        Ok((component, digest))
    }

    fn compile_uncached(&self, what: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        Component::from_binary(&self.engine, bytes)
            .map_err(|e| LoadError::Compile { what: what.into(), detail: format!("{e:#}") })
    }
}

/// Tell a component from a core module from anything else by its preamble:
/// magic, then a version and a layer (0 = core module, 1 = component).
fn check_header(what: &str, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm { what: what.into() });
    }
    if bytes[6..8] == [0, 0] {
        return Err(LoadError::CoreModule { what: what.into() });
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per call, not only per process: two threads loading the same
    // component at once must not write (and rename away) the same temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}.{seq}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                // The receive timeout is the tick; a message or a dropped
                // sender ends the thread.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_compiles_of_one_component_share_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SinkEngine::new(&Limits::default(), 1, Some(dir.path().to_owned())).unwrap();
        let bytes = wat::parse_str("(component (core module (func (export \"f\"))))").unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| engine.compile("c", &bytes).map(|(_, d)| d))).collect();
            for h in handles {
                h.join().unwrap().expect("every concurrent load succeeds");
            }
        });
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files.len(), 1, "one cache entry, no temp files left: {files:?}");
    }

    #[test]
    fn header_classifies_inputs() {
        assert!(matches!(check_header("x", b"hello world"), Err(LoadError::NotWasm { .. })));
        assert!(matches!(check_header("x", b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule { .. })));
        assert!(check_header("x", b"\0asm\x0d\0\x01\0").is_ok());
    }
}
