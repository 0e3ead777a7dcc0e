//! `sluice reconcile`: check, independently of the pipeline's own
//! bookkeeping, that every source record reached Delta once (the seed
//! paper's §6.4).
//!
//! Three witnesses are compared: the checkpoint (which offsets each batch
//! covered), Kafka (how many records those offsets hold now), and each
//! table's Delta log (which batches it holds, and the row counts Delta
//! itself reports). The checks:
//!
//! - **gaps and overlaps** in the planned ranges: offsets no batch read, or
//!   two batches read;
//! - **records**: Kafka's count for a batch's ranges against the count the
//!   sink was given (recorded in the commit);
//! - **rows**: what sluice asked Delta to write for a batch against what
//!   Delta reports writing, and each table's row count against the sum of
//!   its commits (rows deleted or added by others show up here);
//! - **txn versions**: each table holds every committed batch exactly once,
//!   in order, none skipped;
//! - **duplicate keys** in tables with key columns.

use crate::checkpoint::{Checkpoint, CheckpointError, PlannedBatch};
use crate::commit::{CommitError, DeltaCommitter, TableLog};
use crate::config::PipelineConfig;
use crate::source::records::count_all;
use crate::source::KafkaSource;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Why reconciliation could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The checkpoint cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The Delta client could not start.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// What kind of discrepancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Records or rows missing.
    Gap,
    /// Records or rows present twice.
    Duplicate,
    /// A table lacks a batch's transaction.
    SkippedTxn,
    /// Two witnesses disagree in another way.
    Mismatch,
}

/// One discrepancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The batch, when it is about one.
    pub batch_id: Option<u64>,
    /// The table, when it is about one.
    pub table: Option<String>,
    /// What was found, with the numbers.
    pub message: String,
}

/// Per table: its state and the table-wide checks.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Its Delta version.
    pub version: Option<u64>,
    /// Rows in it now.
    pub rows: Option<u64>,
    /// Rows this pipeline's commits account for.
    pub expected_rows: Option<i64>,
    /// Batches of this pipeline it holds.
    pub batches: u64,
    /// Keys held by more than one row.
    pub duplicate_keys: u64,
    /// Some of them, with their row counts.
    pub duplicate_examples: Vec<serde_json::Value>,
    /// Versions written by something other than this pipeline.
    pub foreign_versions: Vec<u64>,
}

/// Per batch: the counts each witness gives.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// The batch.
    pub batch_id: u64,
    /// Records Kafka holds in its ranges now (`None`: not counted).
    pub source_records: Option<u64>,
    /// Records the sink was given.
    pub delivered_records: Option<u64>,
    /// Records set aside as poison (in the quarantine table, not given).
    pub quarantined_records: u64,
    /// Table → rows, by each witness.
    pub rows: BTreeMap<String, RowCounts>,
}

/// One batch's rows in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RowCounts {
    /// Rows sluice asked Delta to write (upserts: one per key).
    pub staged: Option<u64>,
    /// Rows Delta reports writing.
    pub delta: Option<u64>,
}

/// The whole check.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    /// The pipeline.
    pub pipeline_id: String,
    /// The last committed batch.
    pub last_committed: Option<u64>,
    /// Per batch counts, for the batches checked.
    pub batches: Vec<BatchReport>,
    /// Per table state.
    pub tables: Vec<TableReport>,
    /// Discrepancies: any makes the check fail.
    pub findings: Vec<Finding>,
    /// Checks that could not be made (Kafka down, records past retention).
    pub unchecked: Vec<String>,
}

impl ReconcileReport {
    /// No discrepancy, and everything was checked.
    pub fn clean(&self) -> bool {
        self.findings.is_empty() && self.unchecked.is_empty()
    }
}

/// Options of a check.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOptions {
    /// Count source records only for the last this many batches (all if `None`).
    pub last: Option<u64>,
    /// Do not read Kafka at all.
    pub skip_source: bool,
}

/// Reconcile the pipeline's checkpoint, Kafka and tables.
pub fn reconcile(
    config: &PipelineConfig,
    options: &ReconcileOptions,
) -> Result<ReconcileReport, ReconcileError> {
    let checkpoint = Checkpoint::open_read_only_at(&config.checkpoint_place())?;
    let committer = DeltaCommitter::new(&config.pipeline.id, config.resolved_tables())
        .map_err(CommitError::Io)?;
    let mut r = ReconcileReport {
        pipeline_id: config.pipeline.id.clone(),
        last_committed: checkpoint.last_committed()?,
        batches: Vec::new(),
        tables: Vec::new(),
        findings: Vec::new(),
        unchecked: Vec::new(),
    };
    let plans = read_plans(&checkpoint, options, &mut r)?;
    check_ranges(&plans, &mut r);

    let mut logs = BTreeMap::new();
    for t in &config.tables {
        match committer.log(&t.name) {
            Ok(Some(log)) => {
                logs.insert(t.name.clone(), log);
            }
            Ok(None) if r.last_committed.is_some() => r.findings.push(Finding {
                kind: FindingKind::Gap,
                batch_id: None,
                table: Some(t.name.clone()),
                message: format!("table `{}` does not exist, but batches are committed", t.name),
            }),
            Ok(None) => {}
            Err(e) => r.unchecked.push(format!("table `{}`: {e}", t.name)),
        }
    }
    for (name, log) in &logs {
        check_txns(name, log, r.last_committed, &mut r);
    }
    for t in &config.tables {
        if let Some(log) = logs.get(&t.name) {
            let report = check_table(&committer, t, log, &mut r);
            r.tables.push(report);
        }
    }
    check_batches(config, &checkpoint, &plans, &logs, options, &mut r)?;
    Ok(r)
}

/// Every plan the checkpoint keeps, in order; a missing one is a gap.
/// Plans before the first kept one were pruned by `retention.batches`:
/// their batches are reported as not checked.
fn read_plans(
    checkpoint: &Checkpoint,
    options: &ReconcileOptions,
    r: &mut ReconcileReport,
) -> Result<Vec<PlannedBatch>, CheckpointError> {
    let Some(last) = checkpoint.last_planned()? else {
        return Ok(Vec::new());
    };
    let first = checkpoint
        .first_retained_plan()
        .map_err(|source| CheckpointError::Io {
            path: checkpoint.location().join("offsets").to_string().into(),
            source,
        })?
        .unwrap_or(0);
    // Only a problem when the check asked for them (`--last K` beyond the kept ones).
    let asked = options.last.map_or(0, |k| r.last_committed.map_or(0, |c| (c + 1).saturating_sub(k)));
    if first > asked {
        r.unchecked.push(format!(
            "batches {asked}..{} are not checked: their plans were pruned from the checkpoint (retention.batches); \
             use --last K with K at most the batches kept",
            first - 1
        ));
    }
    let mut plans = Vec::new();
    for n in first..=last {
        match checkpoint.planned(n)? {
            Some(p) => plans.push(p),
            None => r.findings.push(Finding {
                kind: FindingKind::Gap,
                batch_id: Some(n),
                table: None,
                message: format!("batch {n} has no plan (offsets/{n} is missing): its offsets are in no batch"),
            }),
        }
    }
    Ok(plans)
}

/// Consecutive batches must continue each partition where the last left it.
fn check_ranges(plans: &[PlannedBatch], r: &mut ReconcileReport) {
    let mut ends: BTreeMap<(String, i32), (i64, u64)> = BTreeMap::new();
    // A release batch reads old offsets again, by design: not a duplicate.
    for p in plans.iter().filter(|p| p.release.is_none()) {
        for range in p.ranges.iter().filter(|x| x.end > x.start) {
            let key = (range.topic.clone(), range.partition);
            if let Some(&(end, prev)) = ends.get(&key) {
                let at = format!("{}/{}", range.topic, range.partition);
                if range.start > end {
                    r.findings.push(Finding {
                        kind: FindingKind::Gap,
                        batch_id: Some(p.batch_id),
                        table: None,
                        message: format!(
                            "offsets [{end}, {}) of {at} are in no batch: batch {prev} ended at {end}, batch {} starts at {}",
                            range.start, p.batch_id, range.start
                        ),
                    });
                } else if range.start < end {
                    r.findings.push(Finding {
                        kind: FindingKind::Duplicate,
                        batch_id: Some(p.batch_id),
                        table: None,
                        message: format!(
                            "offsets [{}, {end}) of {at} are in two batches: {prev} and {}",
                            range.start, p.batch_id
                        ),
                    });
                }
            }
            ends.insert(key, (range.end, p.batch_id));
        }
    }
}

/// A table's txn versions for the pipeline must run 0, 1, 2, … up to the
/// last committed batch (or one past it, for a batch committed to the
/// tables whose commit record is not yet written).
fn check_txns(table: &str, log: &TableLog, last_committed: Option<u64>, r: &mut ReconcileReport) {
    let mut seen: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for e in &log.entries {
        if let Some(txn) = e.txn {
            seen.entry(txn).or_default().push(e.version);
        }
    }
    let finding = |kind, batch: i64, message: String| Finding { kind, batch_id: Some(batch as u64), table: Some(table.to_owned()), message };
    for (batch, versions) in &seen {
        if versions.len() > 1 {
            let message = format!("batch {batch} was committed {} times to `{table}` (versions {versions:?})", versions.len());
            r.findings.push(finding(FindingKind::Duplicate, *batch, message));
        }
    }
    // Batches before the log's first readable version cannot be checked.
    let first_known = seen.keys().next().copied().filter(|_| log.first_version > 0).unwrap_or(0);
    let Some(last) = last_committed else { return };
    for batch in first_known..=last as i64 {
        if !seen.contains_key(&batch) {
            let message = format!("`{table}` has no transaction for committed batch {batch}: txn version {batch} was skipped");
            r.findings.push(finding(FindingKind::SkippedTxn, batch, message));
        }
    }
}

/// Row count against the commits, and duplicate keys.
fn check_table(committer: &DeltaCommitter, t: &crate::commit::TableConfig, log: &TableLog, r: &mut ReconcileReport) -> TableReport {
    let name = &t.name;
    let mut report = TableReport {
        table: name.clone(),
        version: Some(log.version),
        rows: None,
        expected_rows: None,
        batches: log.entries.iter().filter(|e| e.batch_id.is_some()).count() as u64,
        duplicate_keys: 0,
        duplicate_examples: Vec::new(),
        foreign_versions: log.entries.iter().filter(|e| !e.by_sluice && e.operation != "CREATE TABLE").map(|e| e.version).collect(),
    };
    let count = |sql: &str| committer.query(name, sql).map(|rows| rows.first().and_then(|row| row["n"].as_u64()).unwrap_or(0));
    match count("SELECT COUNT(*) AS n FROM t") {
        Ok(n) => report.rows = Some(n),
        Err(e) => r.unchecked.push(format!("table `{name}`: counting rows: {e}")),
    }
    if log.first_version == 0 {
        // Only this pipeline's commits: rows others add or delete are what this finds.
        let ours: Vec<_> = log.entries.iter().filter(|e| e.batch_id.is_some()).collect();
        let unknown: Vec<u64> = ours.iter().filter(|e| e.rows_added.is_none()).map(|e| e.version).collect();
        if unknown.is_empty() {
            report.expected_rows = Some(ours.iter().filter_map(|e| e.rows_added).sum());
        } else {
            r.unchecked.push(format!("table `{name}`: versions {unknown:?} do not report their row changes; the row total is not checked"));
        }
    }
    if let (Some(rows), Some(expected)) = (report.rows, report.expected_rows)
        && rows as i64 != expected
    {
        let (kind, what) = if (rows as i64) < expected { (FindingKind::Gap, "missing") } else { (FindingKind::Duplicate, "extra") };
        let by = match &report.foreign_versions[..] {
            [] => String::new(),
            v => format!("; versions {v:?} were written by something other than this pipeline"),
        };
        r.findings.push(Finding {
            kind,
            batch_id: None,
            table: Some(name.clone()),
            message: format!(
                "`{name}` has {rows} rows but this pipeline's commits account for {expected}: {} row(s) {what}{by}",
                (rows as i64 - expected).abs()
            ),
        });
    }
    if !t.keys.is_empty() {
        let keys = t.keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let dups = format!("SELECT {keys}, COUNT(*) AS n FROM t GROUP BY {keys} HAVING COUNT(*) > 1");
        match (committer.query(name, &format!("{dups} ORDER BY {keys} LIMIT 5")), count(&format!("SELECT COUNT(*) AS n FROM ({dups})"))) {
            (Ok(examples), Ok(n)) => {
                report.duplicate_keys = n;
                report.duplicate_examples = examples;
            }
            (Err(e), _) | (_, Err(e)) => r.unchecked.push(format!("table `{name}`: looking for duplicate keys: {e}")),
        }
        if report.duplicate_keys > 0 {
            r.findings.push(Finding {
                kind: FindingKind::Duplicate,
                batch_id: None,
                table: Some(name.clone()),
                message: format!(
                    "`{name}` has {} key(s) held by more than one row, e.g. {}",
                    report.duplicate_keys,
                    report.duplicate_examples.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    report
}

/// Per batch: Kafka's records against delivered records, and sluice's rows
/// against Delta's.
fn check_batches(
    config: &PipelineConfig,
    checkpoint: &Checkpoint,
    plans: &[PlannedBatch],
    logs: &BTreeMap<String, TableLog>,
    options: &ReconcileOptions,
    r: &mut ReconcileReport,
) -> Result<(), CheckpointError> {
    let Some(last) = r.last_committed else { return Ok(()) };
    let first = options.last.map_or(0, |k| (last + 1).saturating_sub(k));
    let mut source = if options.skip_source {
        None
    } else {
        match KafkaSource::connect(config.source_for(Some("reconcile"))) {
            Ok(s) => Some(s),
            Err(e) => {
                r.unchecked.push(format!("source records not counted: {e}"));
                None
            }
        }
    };
    for plan in plans.iter().filter(|p| (first..=last).contains(&p.batch_id)) {
        let n = plan.batch_id;
        let entries: BTreeMap<&String, &crate::commit::LogEntry> = logs
            .iter()
            .filter_map(|(t, log)| log.entries.iter().rev().find(|e| e.batch_id == Some(n)).map(|e| (t, e)))
            .collect();
        let delivered = entries.values().find_map(|e| e.records);
        let quarantined = entries.values().find_map(|e| e.quarantined).unwrap_or(0);
        let recorded_digest = checkpoint.committed(n)?.map(|c| c.output_digest);
        let decided = checkpoint.quarantine(n)?.map_or(0, |d| d.excluded.len() as u64);
        if decided != quarantined && delivered.is_some() {
            r.findings.push(Finding {
                kind: FindingKind::Mismatch,
                batch_id: Some(n),
                table: None,
                message: format!("batch {n}: the checkpoint set {decided} poison record(s) aside, the tables record {quarantined}"),
            });
        }
        let mut batch = BatchReport { batch_id: n, source_records: None, delivered_records: delivered, quarantined_records: quarantined, rows: BTreeMap::new() };
        for (table, e) in &entries {
            batch.rows.insert((*table).clone(), RowCounts { staged: e.rows, delta: e.rows_written });
            if let (Some(asked), Some(written)) = (e.rows, e.rows_written)
                && asked != written
            {
                let kind = if written < asked { FindingKind::Gap } else { FindingKind::Duplicate };
                r.findings.push(Finding {
                    kind,
                    batch_id: Some(n),
                    table: Some((*table).clone()),
                    message: format!("batch {n}: sluice staged {asked} rows for `{table}` but Delta reports writing {written} (version {})", e.version),
                });
            }
            if let (Some(d), Some(recorded)) = (&e.output_digest, &recorded_digest)
                && d != recorded
            {
                r.findings.push(Finding {
                    kind: FindingKind::Mismatch,
                    batch_id: Some(n),
                    table: Some((*table).clone()),
                    message: format!("batch {n}: `{table}` holds output {d}, the checkpoint recorded {recorded}"),
                });
            }
        }
        if let Some(s) = &mut source {
            match count_records(s, plan) {
                Ok(count) => {
                    batch.source_records = Some(count);
                    // The books balance: source = delivered + quarantined.
                    if let Some(d) = delivered.filter(|&d| d + quarantined != count) {
                        let kind = if d + quarantined < count { FindingKind::Gap } else { FindingKind::Duplicate };
                        let aside = if quarantined > 0 { format!(" and {quarantined} set aside as poison") } else { String::new() };
                        r.findings.push(Finding {
                            kind,
                            batch_id: Some(n),
                            table: None,
                            message: format!("batch {n}: Kafka holds {count} records in its ranges, the sink was given {d}{aside}"),
                        });
                    }
                }
                Err(e) => r.unchecked.push(format!("batch {n}: source records not counted: {e}")),
            }
        }
        r.batches.push(batch);
    }
    Ok(())
}

fn count_records(source: &KafkaSource, plan: &PlannedBatch) -> Result<u64, String> {
    // A release batch names single offsets, several in one partition.
    if plan.release.is_some() {
        return source.read_ranges(&plan.ranges).map(|r| r.len() as u64);
    }
    let fetch = source.fetch(&plan.ranges).map_err(|e| e.to_string())?;
    count_all(fetch, &plan.ranges).map_err(|e| e.to_string())
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match (self.findings.len(), self.unchecked.len()) {
            (0, 0) => "OK".to_owned(),
            (0, _) => "INCOMPLETE: no discrepancy found, but not everything could be checked".to_owned(),
            (n, _) => format!("{n} DISCREPANC{}", if n == 1 { "Y" } else { "IES" }),
        };
        let last = self.last_committed.map_or("none".to_owned(), |n| n.to_string());
        writeln!(f, "pipeline {}: {verdict} (last committed batch {last})", self.pipeline_id)?;
        let counted = self.batches.iter().filter(|b| b.source_records.is_some()).count();
        writeln!(f, "  batches checked: {} ({counted} counted in Kafka)", self.batches.len())?;
        for t in &self.tables {
            let show = |v: Option<String>| v.unwrap_or_else(|| "?".into());
            writeln!(
                f,
                "  table {}: version {}, {} rows ({} from this pipeline's commits), {} batches, {} duplicate keys",
                t.table,
                show(t.version.map(|v| v.to_string())),
                show(t.rows.map(|v| v.to_string())),
                show(t.expected_rows.map(|v| v.to_string())),
                t.batches,
                t.duplicate_keys
            )?;
        }
        for x in &self.findings {
            let kind = serde_json::to_value(x.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            writeln!(f, "  {kind}: {}", x.message)?;
        }
        for u in &self.unchecked {
            writeln!(f, "  not checked: {u}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::LogEntry;

    fn entry(version: u64, txn: Option<i64>) -> LogEntry {
        LogEntry {
            version,
            operation: "WRITE".into(),
            txn,
            batch_id: txn.map(|t| t as u64),
            output_digest: None,
            records: None,
            rows: None,
            rows_written: None,
            deletes: None,
            by_sluice: txn.is_some(),
            quarantined: None,
            rows_added: None,
        }
    }

    fn report() -> ReconcileReport {
        ReconcileReport {
            pipeline_id: "p".into(),
            last_committed: None,
            batches: Vec::new(),
            tables: Vec::new(),
            findings: Vec::new(),
            unchecked: Vec::new(),
        }
    }

    #[test]
    fn txn_versions_must_run_without_holes_or_repeats() {
        let log = TableLog {
            version: 5,
            entries: vec![entry(0, None), entry(1, Some(0)), entry(2, Some(1)), entry(3, Some(3)), entry(4, None), entry(5, Some(3))],
            first_version: 0,
        };
        let mut r = report();
        check_txns("t", &log, Some(3), &mut r);
        let found: Vec<(FindingKind, Option<u64>, &str)> = r.findings.iter().map(|f| (f.kind, f.batch_id, f.message.as_str())).collect();
        assert_eq!(
            found,
            [
                (FindingKind::Duplicate, Some(3), "batch 3 was committed 2 times to `t` (versions [3, 5])"),
                (FindingKind::SkippedTxn, Some(2), "`t` has no transaction for committed batch 2: txn version 2 was skipped"),
            ]
        );
        let mut r = report();
        check_txns("t", &log, Some(1), &mut r);
        assert_eq!(r.findings.len(), 1, "only the repeat: batch 3 is past the last committed one");
    }

    #[test]
    fn ranges_must_continue_where_the_last_batch_ended() {
        let plan = |n: u64, start: i64, end: i64| PlannedBatch {
            batch_id: n,
            planned_timestamp_ms: 0,
            ranges: vec![crate::source::records::SourceRange { topic: "o".into(), partition: 0, start, end }],
            component_digest: String::new(),
            config_digest: String::new(),
            release: None,
        };
        let mut r = report();
        check_ranges(&[plan(0, 0, 10), plan(1, 10, 20), plan(2, 25, 30), plan(3, 28, 40)], &mut r);
        let messages: Vec<&str> = r.findings.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "offsets [20, 25) of o/0 are in no batch: batch 1 ended at 20, batch 2 starts at 25",
                "offsets [28, 30) of o/0 are in two batches: 2 and 3",
            ]
        );
    }
}
