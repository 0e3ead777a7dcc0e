//! Poison records: finding the records a batch fails on, and setting them
//! aside so the rest of the stream goes on (`pipeline.on_poison =
//! "quarantine"`).
//!
//! Guarantees:
//! - Only a deterministic failure is searched: a trap, `invalid-input`, a
//!   refused or invalid host call, or a limit other than the deadline.
//!   Those repeat on every run of the same records, so re-running subsets
//!   of the batch, each in a fresh instance, tells which records cause
//!   them. External errors, the deadline and source errors are retried as
//!   before, never searched.
//! - The search is deterministic: it halves the failing set, in record
//!   order, until single records remain, and keeps those that fail alone,
//!   with the error each gave alone. The same batch and component always
//!   set aside the same records, in at most `2·k·⌈log₂ n⌉` runs for k poison
//!   records among n, and one more run of the batch without them proves
//!   that the rest succeeds. That run's output is what commits.
//! - It is bounded: past `quarantine.max_records_per_batch` poison records
//!   or `quarantine.max_extra_runs` runs, or when records fail only
//!   together (no half fails alone, or the rest still fails), the pipeline
//!   stops with a report of what was found, and nothing of the batch is
//!   committed.
//! - `sluice quarantine release` re-processes the records of batch N through
//!   a new batch M whose plan names their offsets (the stream's position is
//!   kept: `Release::resume_at`), with the sink given (fixed, usually), and
//!   marks them `released_in_batch = M` in the quarantine table in M's own
//!   transactions. A second release of N finds them marked and does nothing.
//! - The decision (which offsets, why, found by which component) is
//!   written to the checkpoint (`quarantine/N`) before the commit, and the
//!   set-aside records go to the quarantine table in the batch's own Delta
//!   transactions (`txn(app, N)`), so they are exactly-once like every row.
//!   A restart or a replay with the same component applies the recorded
//!   decision instead of searching again.

use crate::checkpoint::{PlannedBatch, Release};
use crate::commit::{ColumnConfig, TableConfig};
use crate::source::records::SourceRange;
use std::collections::BTreeMap;
use crate::error::BatchError;
use crate::output::{BatchOutput, StagedOp, StagedRows, WriteMode};
use crate::source::records::OwnedRecord;
use crate::storage::{Location, StorageOptions};
use crate::{BatchFailure, Limit};
use serde::{Deserialize, Serialize};

/// The `[quarantine]` table of a pipeline config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// The quarantine table's name (in `sluice status`, `reconcile`).
    #[serde(default = "default_table")]
    pub table: String,
    /// Where the quarantine table is: a local directory or an object-store URL.
    pub path: Location,
    /// Object-store options for it, over `pipeline.storage_options`.
    #[serde(default, skip_serializing)]
    pub storage_options: StorageOptions,
    /// At most this many records of one batch are set aside; more stops
    /// the pipeline with the report.
    #[serde(default = "default_max_records")]
    pub max_records_per_batch: u64,
    /// At most this many extra sink runs to search one batch; more stops
    /// the pipeline with the report.
    #[serde(default = "default_max_runs")]
    pub max_extra_runs: u64,
}

/// The quarantine table's key: a record's coordinates.
const KEYS: [&str; 3] = ["topic", "partition", "offset"];

fn default_table() -> String {
    "quarantine".into()
}

fn default_max_records() -> u64 {
    10
}

fn default_max_runs() -> u64 {
    200
}

impl QuarantineConfig {
    /// The quarantine table as the committer takes it: the host's schema,
    /// keyed on the record's coordinates.
    pub fn table_config(&self, options: StorageOptions) -> TableConfig {
        let col = |name: &str, t: &str, nullable: bool| ColumnConfig { name: name.into(), data_type: t.parse().expect("a valid type"), nullable };
        TableConfig {
            name: self.table.clone(),
            path: self.path.clone(),
            storage_options: options,
            columns: vec![
                col("topic", "string", false),
                col("partition", "integer", false),
                col("offset", "long", false),
                col("timestamp", "timestamp", true),
                col("key", "binary", true),
                col("value", "binary", true),
                col("headers", "array<struct<key:string,value:binary>>", true),
                col("error", "string", false),
                col("batch_id", "long", false),
                col("component_digest", "string", false),
                // Set by `sluice quarantine release`: the batch that
                // re-processed the record.
                col("released_in_batch", "long", true),
            ],
            keys: KEYS.map(String::from).to_vec(),
            partition_by: vec![],
            maintenance: Default::default(),
        }
    }
}

/// One record set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The error the sink gave on this record alone.
    pub error: String,
}

/// What the search decided for a batch: `quarantine/N` in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The batch.
    pub batch_id: u64,
    /// The component the records failed in (a replay or restart with
    /// another component runs every record).
    pub component_digest: String,
    /// The records set aside, in record order.
    pub excluded: Vec<Excluded>,
    /// Extra sink runs the search took.
    pub runs: u64,
}

impl Decision {
    /// Whether `r` is set aside.
    pub fn excludes(&self, r: &OwnedRecord) -> bool {
        self.excluded.iter().any(|e| e.topic == r.topic && e.partition == r.partition && e.offset == r.offset)
    }

    /// The records of the batch that run: all but the set-aside ones.
    pub fn kept(&self, records: &[OwnedRecord]) -> Vec<OwnedRecord> {
        records.iter().filter(|r| !self.excludes(r)).cloned().collect()
    }

    /// The quarantine table's rows for this decision, as one append (or,
    /// `released_in` a batch, as an upsert marking them released).
    pub fn staged(&self, table: &str, records: &[OwnedRecord], released_in: Option<u64>) -> StagedOp {
        let hex = |b: &Option<Vec<u8>>| b.as_ref().map(hex::encode);
        let mut rows = Vec::new();
        for e in &self.excluded {
            let r = records.iter().find(|r| r.topic == e.topic && r.partition == e.partition && r.offset == e.offset);
            let row = serde_json::json!({
                "topic": e.topic,
                "partition": e.partition,
                "offset": e.offset,
                "timestamp": r.map(|r| r.timestamp_ms.saturating_mul(1000)),
                "key": r.and_then(|r| hex(&r.key)),
                "value": r.and_then(|r| hex(&r.value)),
                "headers": r.map(|r| r.headers.iter().map(|(k, v)| serde_json::json!({"key": k, "value": hex(v)})).collect::<Vec<_>>()),
                "error": e.error,
                "batch_id": self.batch_id,
                "component_digest": self.component_digest,
                "released_in_batch": released_in,
            });
            rows.extend_from_slice(row.to_string().as_bytes());
            rows.push(b'\n');
        }
        StagedOp {
            table: table.to_owned(),
            mode: if released_in.is_some() { WriteMode::Upsert { keys: KEYS.map(String::from).to_vec() } } else { WriteMode::Append },
            row_count: self.excluded.len() as u64,
            rows: StagedRows::JsonLines(rows.into()),
        }
    }

    /// Add the quarantine table's rows to the output of the batch's run
    /// without them. The output digest stays the sink's.
    pub fn apply(&self, table: &str, records: &[OwnedRecord], output: &mut BatchOutput) {
        output.ops.push(self.staged(table, records, None));
        output.quarantined = self.excluded.len() as u64;
    }

    /// The plan of the batch `batch_id` that re-processes these records:
    /// their offsets as its ranges, the stream's ends kept as they are.
    pub fn release_plan(&self, batch_id: u64, ends: &BTreeMap<(String, i32), i64>, component_digest: &str, config_digest: &str) -> PlannedBatch {
        PlannedBatch {
            batch_id,
            planned_timestamp_ms: crate::now_ms(),
            ranges: self
                .excluded
                .iter()
                .map(|e| SourceRange { topic: e.topic.clone(), partition: e.partition, start: e.offset, end: e.offset + 1 })
                .collect(),
            component_digest: component_digest.to_owned(),
            config_digest: config_digest.to_owned(),
            release: Some(Release {
                of_batch: self.batch_id,
                resume_at: ends.iter().map(|((t, p), e)| (t.clone(), *p, *e)).collect(),
            }),
        }
    }
}

/// Whether a failure repeats on every run of the same records, so that
/// searching the records for its cause is sound.
pub fn deterministic(e: &BatchError) -> bool {
    match e {
        BatchError::InvalidInput(_) | BatchError::Trap { .. } | BatchError::Refused(_) | BatchError::InvalidCall(_) => true,
        BatchError::Limit(l) => l.limit != Limit::DeadlineMs,
        BatchError::SinkFailed(_)
        | BatchError::Source(_)
        | BatchError::Scratch { .. }
        | BatchError::Capacity(_)
        | BatchError::Internal(_) => false,
    }
}

/// Why the search stopped without a decision.
#[derive(Debug)]
pub enum Stop {
    /// More poison records than allowed.
    TooMany {
        /// Found so far (the first ones, in record order).
        found: Vec<(usize, String)>,
        /// `quarantine.max_records_per_batch`.
        max: u64,
    },
    /// The search needed more runs than allowed.
    TooManyRuns {
        /// Found so far.
        found: Vec<(usize, String)>,
        /// `quarantine.max_extra_runs`.
        max: u64,
    },
    /// Records fail only together: a set failed but neither half did, or
    /// the batch without the poison records still failed.
    Together {
        /// How many records the failing set had.
        records: usize,
        /// Its error.
        error: String,
        /// Found so far.
        found: Vec<(usize, String)>,
    },
    /// A run failed in a way that does not repeat (the deadline, a source
    /// error): the batch is retried as any failure of its kind.
    NotDeterministic(Box<BatchFailure>),
    /// The pipeline is stopping.
    Stopped,
}

/// What a search found.
pub struct Found {
    /// The poison records' indices in the batch, in order, with the error
    /// each gave alone.
    pub poison: Vec<(usize, String)>,
    /// The output of the batch without them.
    pub output: BatchOutput,
    /// Extra runs, the last (the batch without them) included.
    pub runs: u64,
}

/// Search the `n` records of a batch whose run failed with `error`.
/// `run(indices)` runs the sink on those records in a fresh instance.
pub fn search(
    n: usize,
    error: String,
    max_records: u64,
    max_runs: u64,
    run: &mut dyn FnMut(&[usize]) -> Result<BatchOutput, BatchFailure>,
) -> Result<Found, Stop> {
    let mut s = Search { run, runs: 0, max_runs, max_records, poison: Vec::new() };
    let all: Vec<usize> = (0..n).collect();
    s.isolate(&all, error)?;
    let poison: Vec<usize> = s.poison.iter().map(|p| p.0).collect();
    let rest: Vec<usize> = all.into_iter().filter(|i| !poison.contains(i)).collect();
    match s.try_run(&rest)? {
        Ok(output) => Ok(Found { poison: s.poison, output, runs: s.runs }),
        Err(error) => Err(Stop::Together { records: rest.len(), error, found: s.poison }),
    }
}

struct Search<'a> {
    run: &'a mut dyn FnMut(&[usize]) -> Result<BatchOutput, BatchFailure>,
    runs: u64,
    max_runs: u64,
    max_records: u64,
    poison: Vec<(usize, String)>,
}

impl Search<'_> {
    /// One run: its output, or its deterministic error; anything else stops.
    fn try_run(&mut self, set: &[usize]) -> Result<Result<BatchOutput, String>, Stop> {
        if self.runs >= self.max_runs {
            return Err(Stop::TooManyRuns { found: std::mem::take(&mut self.poison), max: self.max_runs });
        }
        self.runs += 1;
        crate::failpoint::hit("in-bisection");
        match (self.run)(set) {
            Ok(output) => Ok(Ok(output)),
            Err(f) if deterministic(&f.error) => Ok(Err(f.error.to_string())),
            Err(f) if matches!(f.error, BatchError::Internal(ref m) if m == STOPPED) => Err(Stop::Stopped),
            Err(f) => Err(Stop::NotDeterministic(Box::new(f))),
        }
    }

    /// `set` failed with `error`: find its poison records.
    fn isolate(&mut self, set: &[usize], error: String) -> Result<(), Stop> {
        // A batch with no records that fails: no record is to blame.
        if set.is_empty() {
            return Err(Stop::Together { records: 0, error, found: std::mem::take(&mut self.poison) });
        }
        if let [one] = set {
            if self.poison.len() as u64 >= self.max_records {
                let mut found = std::mem::take(&mut self.poison);
                found.push((*one, error));
                return Err(Stop::TooMany { found, max: self.max_records });
            }
            self.poison.push((*one, error));
            return Ok(());
        }
        let (a, b) = set.split_at(set.len() / 2);
        let (ra, rb) = (self.try_run(a)?, self.try_run(b)?);
        if let (Ok(_), Ok(_)) = (&ra, &rb) {
            return Err(Stop::Together { records: set.len(), error, found: std::mem::take(&mut self.poison) });
        }
        if let Err(e) = ra {
            self.isolate(a, e)?;
        }
        if let Err(e) = rb {
            self.isolate(b, e)?;
        }
        Ok(())
    }
}

/// The error a run function gives when the pipeline is stopping.
pub const STOPPED: &str = "the pipeline is stopping";

#[cfg(test)]
mod tests {
    use super::*;

    fn output() -> BatchOutput {
        BatchOutput {
            batch: crate::source::records::BatchSpec { pipeline_id: "p".into(), batch_id: 0, planned_timestamp_ms: 0, ranges: vec![] },
            ops: vec![],
            digest: String::new(),
            log: vec![],
            records_in: 0,
            record_bytes_in: 0,
            fuel_used: 0,
            quarantined: 0,
            timings: Default::default(),
        }
    }

    /// A sink that traps on any set holding a poison index.
    fn sink<'a>(poison: &'static [usize], runs: &'a mut u64) -> impl FnMut(&[usize]) -> Result<BatchOutput, BatchFailure> + 'a {
        move |set| {
            *runs += 1;
            match set.iter().find(|i| poison.contains(i)) {
                Some(i) => Err(BatchFailure {
                    batch_id: 0,
                    attempt: 1,
                    error: BatchError::InvalidInput(format!("record {i}")),
                    log: vec![],
                    kept_scratch: None,
                }),
                None => Ok(output()),
            }
        }
    }

    #[test]
    fn the_search_finds_exactly_the_poison_within_its_bound_every_time() {
        for (n, poison) in [(1usize, &[0usize][..]), (100, &[0, 57, 99]), (64, &(0..64).collect::<Vec<_>>().leak()[..]), (1000, &[500])] {
            let mut runs = 0;
            let found = search(n, "whole".into(), 1000, 10_000, &mut sink(poison, &mut runs)).map_err(|e| format!("{e:?}")).unwrap();
            assert_eq!(found.poison.iter().map(|p| p.0).collect::<Vec<_>>(), poison.to_vec());
            // A batch of one record: the batch's error is that record's.
            assert!(found.poison.iter().all(|(i, e)| e.ends_with(&format!("record {i}")) || (n == 1 && e == "whole")), "{:?}", found.poison);
            let k = poison.len() as u64;
            let bound = 2 * k * (n as f64).log2().ceil().max(1.0) as u64 + 1;
            assert!(found.runs <= bound && found.runs == runs, "{n} records, {k} poison: {} runs, bound {bound}", found.runs);
        }
    }

    #[test]
    fn past_its_bounds_or_when_records_fail_only_together_the_search_stops_with_what_it_found() {
        let mut runs = 0;
        let stop = search(100, "e".into(), 2, 10_000, &mut sink(&[1, 2, 3], &mut runs)).err().unwrap();
        assert!(matches!(&stop, Stop::TooMany { found, max: 2 } if found.len() == 3), "{stop:?}");
        let stop = search(100, "e".into(), 10, 5, &mut sink(&[1, 50, 99], &mut runs)).err().unwrap();
        assert!(matches!(stop, Stop::TooManyRuns { max: 5, .. }), "{stop:?}");
        // Fails only with both 10 and 90 in it.
        let mut together = |set: &[usize]| match set.contains(&10) && set.contains(&90) {
            true => Err(BatchFailure { batch_id: 0, attempt: 1, error: BatchError::InvalidInput("both".into()), log: vec![], kept_scratch: None }),
            false => Ok(output()),
        };
        let stop = search(100, "e".into(), 10, 100, &mut together).err().unwrap();
        assert!(matches!(stop, Stop::Together { records: 100, .. }), "{stop:?}");
        // An empty batch that fails: nothing to set aside, and no endless halving.
        let stop = search(0, "e".into(), 10, 100, &mut sink(&[], &mut runs)).err().unwrap();
        assert!(matches!(stop, Stop::Together { records: 0, .. }), "{stop:?}");
    }
}
