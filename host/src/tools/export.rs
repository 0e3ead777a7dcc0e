//! `sluice batch export`: write one committed (or planned) batch to a
//! bundle, while its records are still in Kafka.

use crate::tools::bundle::{Bundle, Manifest};
use crate::checkpoint::Checkpoint;
use crate::config::PipelineConfig;
use crate::source::records::BatchSpec;
use crate::tools::replay::{ReplayError, fetch_records};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Export batch `n` of the pipeline to `out`. With `with_component`, the
/// component whose output was committed (the planned one for a batch not
/// committed yet) goes in too, so the bundle replays with nothing else.
pub fn export(
    config: &PipelineConfig,
    n: u64,
    out: &Path,
    with_component: bool,
) -> Result<Manifest, ReplayError> {
    let checkpoint = Checkpoint::open_read_only_at(&config.checkpoint_place())?;
    let planned = checkpoint
        .planned(n)?
        .ok_or_else(|| ReplayError::missing(&checkpoint, n))?;
    let committed = checkpoint.committed(n)?;
    // The component whose output was committed (see `commits/N`).
    let ran = committed.as_ref().and_then(|c| c.component_digest.clone()).unwrap_or_else(|| planned.component_digest.clone());
    let component = if with_component { Some(planned_component(config, &checkpoint, &ran)?) } else { None };
    let spec = BatchSpec {
        pipeline_id: config.pipeline.id.clone(),
        batch_id: n,
        planned_timestamp_ms: planned.planned_timestamp_ms,
        ranges: planned.ranges,
    };
    // A bundle does not carry a quarantine decision: replayed from it, the
    // batch would get its poison records back and differ. Refused, not
    // exported wrong.
    if let Some(d) = checkpoint.quarantine(n)? {
        return Err(ReplayError::Usage(format!(
            "batch {n} had {} poison record(s) set aside (quarantine/{n}), which bundles do not carry yet; replay it \
             from the checkpoint instead (`sluice replay CONFIG --batch {n}`)",
            d.excluded.len()
        )));
    }
    let records = fetch_records(config, &spec, committed.as_ref(), 0)?;
    let bundle = Bundle::new(
        spec,
        ran,
        planned.config_digest,
        committed,
        config.tables.clone(),
        config.limits.clone(),
        records,
        component,
    );
    bundle.write(out)?;
    Ok(bundle.manifest)
}

/// The bytes of the component with `digest`: kept in the checkpoint, or
/// the configured one if it is still that component.
fn planned_component(
    config: &PipelineConfig,
    checkpoint: &Checkpoint,
    digest: &str,
) -> Result<Vec<u8>, ReplayError> {
    let kept = checkpoint.component(digest)?;
    for path in kept.into_iter().chain([config.pipeline.component.clone()]) {
        if let Ok(bytes) = std::fs::read(&path)
            && hex::encode(Sha256::digest(&bytes)) == digest
        {
            return Ok(bytes);
        }
    }
    Err(ReplayError::Usage(format!(
        "the component the batch was planned with ({}) is neither kept in the checkpoint nor the configured one; \
         export without it (--without-component) and pass --component when replaying",
        &digest[..digest.len().min(16)]
    )))
}
