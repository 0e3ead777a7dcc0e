//! Stages one row to table `env` with every source of nondeterminism a sink
//! can reach: wall clock, monotonic clock, WASI random bytes and the random
//! keys of `std`'s `HashMap`. The host must make all of them a function of
//! the pipeline and batch id, so the host's tests assert that a retry and a
//! replay stage exactly the same row.

use std::collections::hash_map::RandomState;
use std::fmt::Write;
use std::hash::BuildHasher;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sluice_sdk::{Batch, SinkError, Table};

fn observe(batch: Batch) -> Result<(), SinkError> {
    let base = Instant::now();
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| SinkError::failed(format!("wall clock before the epoch: {e}")))?
        .as_nanos();
    let mono_ns: Vec<u128> = (0..3).map(|_| base.elapsed().as_nanos()).collect();
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| SinkError::failed(format!("getrandom: {e}")))?;
    let rand_u64 = RandomState::new().hash_one(0x5151_u64);

    let row = format!(
        r#"{{"batch_id":{},"wall_ns":{wall_ns},"mono_ns":[{},{},{}],"random":"{}","rand_u64":{rand_u64}}}"#,
        batch.batch_id(),
        mono_ns[0],
        mono_ns[1],
        mono_ns[2],
        hex(&random),
    );
    Table::new("env").append_json([row])?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

sluice_sdk::export_sink!(observe);
