//! MERGE throughput, sluice against delta-rs, on the same changes in one run.
//!
//! A table holds 100k keys. 1M changes over those keys (90 % upserts, 10 %
//! deletes, in a random order, each key changed about ten times) are
//! applied to it once:
//! - by sluice's commit, as a sink stages them: JSON rows in staging order,
//!   runs of upserts and of deletes as separate operations; the commit
//!   decodes them, keeps the last change per key and runs one MERGE
//!   (update, insert and delete in one Delta commit);
//! - by delta-rs's own MERGE, given the same changes already as one Arrow
//!   batch with a sequence number, deduplicated the way its users do
//!   (`ROW_NUMBER() OVER (PARTITION BY id ORDER BY seq DESC) = 1`), then
//!   merged with the same three clauses.
//!
//! Both tables must end the same (row count and sums over every column are
//! compared); the run stops if not. It prints each side's time, changes per
//! second and the ratio. The baseline skips JSON decoding, which sluice
//! pays for: the ratio includes that.
//!
//! `cargo bench --bench merge` (`SLUICE_BENCH_CHANGES`, default 1 000 000;
//! keys are a tenth of it).

use arrow_array::{BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
use sluice::commit::{ColumnConfig, DeltaCommitter, TableConfig};
use sluice::{BatchOutput, BatchSpec, StagedOp, StagedRows, Timings, WriteMode};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Change {
    id: i64,
    delete: bool,
    name: String,
    cents: i64,
}

/// xorshift64*, fixed seed: the same changes every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn amount(cents: i64) -> String {
    format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100)
}

fn row(c: &Change) -> String {
    if c.delete {
        format!(r#"{{"id":{}}}"#, c.id)
    } else {
        format!(r#"{{"amount":"{}","id":{},"name":"{}"}}"#, amount(c.cents), c.id, c.name)
    }
}

fn table_config(dir: &Path, name: &str) -> TableConfig {
    let col = |name: &str, t: &str| ColumnConfig { name: name.into(), data_type: t.parse().unwrap(), nullable: true };
    TableConfig {
        name: name.into(),
        path: dir.join(name).into(),
        storage_options: Default::default(),
        columns: vec![col("id", "long"), col("name", "string"), col("amount", "decimal(12,2)")],
        keys: vec!["id".into()],
        partition_by: vec![],
        maintenance: Default::default(),
    }
}

fn output(batch_id: u64, ops: Vec<StagedOp>) -> BatchOutput {
    BatchOutput {
        batch: BatchSpec { pipeline_id: "bench".into(), batch_id, planned_timestamp_ms: 0, ranges: vec![] },
        ops,
        digest: format!("bench-{batch_id}"),
        log: vec![],
        records_in: 0,
        record_bytes_in: 0,
        fuel_used: 0,
        quarantined: 0,
        timings: Timings::default(),
    }
}

/// Staged JSON operations of `table`: runs of the same mode, in order, as
/// the `cdc-debezium` sink stages them.
fn staged(table: &str, changes: &[Change]) -> Vec<StagedOp> {
    let keys = vec!["id".to_owned()];
    let mut runs: Vec<(WriteMode, Vec<u8>, u64)> = Vec::new();
    for c in changes {
        let mode = if c.delete { WriteMode::Delete { keys: keys.clone() } } else { WriteMode::Upsert { keys: keys.clone() } };
        if runs.last().is_none_or(|r| r.0 != mode) {
            runs.push((mode, Vec::new(), 0));
        }
        let run = runs.last_mut().expect("pushed");
        run.1.extend_from_slice(row(c).as_bytes());
        run.1.push(b'\n');
        run.2 += 1;
    }
    runs.into_iter()
        .map(|(mode, bytes, row_count)| StagedOp { table: table.into(), mode, rows: StagedRows::JsonLines(Bytes::from(bytes)), row_count })
        .collect()
}

fn changes_batch(changes: &[Change]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("deleted", DataType::Boolean, false),
        Field::new("seq", DataType::Int64, false),
    ]));
    let amounts = Decimal128Array::from(changes.iter().map(|c| (!c.delete).then_some(i128::from(c.cents))).collect::<Vec<_>>())
        .with_precision_and_scale(12, 2)
        .unwrap();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.id))),
            Arc::new(StringArray::from(changes.iter().map(|c| (!c.delete).then_some(c.name.as_str())).collect::<Vec<_>>())),
            Arc::new(amounts),
            Arc::new(BooleanArray::from(changes.iter().map(|c| c.delete).collect::<Vec<_>>())),
            Arc::new(Int64Array::from_iter_values(0..changes.len() as i64)),
        ],
    )
    .unwrap()
}

/// delta-rs alone: create, load the initial rows, then MERGE the changes.
fn baseline(dir: &Path, initial: &[Change], changes: &[Change]) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let url = url::Url::from_directory_path(std::path::absolute(dir.join("delta-rs")).unwrap()).unwrap();
        std::fs::create_dir_all(dir.join("delta-rs")).unwrap();
        let table = DeltaTable::try_from_url(url).await.unwrap();
        let columns = vec![
            StructField::new("id", DeltaType::Primitive(PrimitiveType::Long), false),
            StructField::new("name", DeltaType::Primitive(PrimitiveType::String), true),
            StructField::new("amount", DeltaType::decimal(12, 2).unwrap(), true),
        ];
        let table = table.create().with_columns(columns).await.unwrap();
        let load = changes_batch(initial);
        let load = load.project(&[0, 1, 2]).unwrap();
        let table = table.write(vec![load]).await.unwrap();

        let started = Instant::now();
        let ctx = SessionContext::new();
        ctx.register_batch("changes", changes_batch(changes)).unwrap();
        let source = ctx
            .sql("SELECT id, name, amount, deleted FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id ORDER BY seq DESC) AS rn FROM changes) WHERE rn = 1")
            .await
            .unwrap();
        let (_table, _metrics) = table
            .merge(source, "target.id = source.id")
            .with_source_alias("source")
            .with_target_alias("target")
            .when_matched_delete(|d| d.predicate("source.deleted"))
            .unwrap()
            .when_matched_update(|u| u.predicate("NOT source.deleted").update("name", "source.name").update("amount", "source.amount"))
            .unwrap()
            .when_not_matched_insert(|i| i.predicate("NOT source.deleted").set("id", "source.id").set("name", "source.name").set("amount", "source.amount"))
            .unwrap()
            .await
            .unwrap();
        started.elapsed()
    })
}

fn summary(committer: &DeltaCommitter, table: &str) -> serde_json::Value {
    let rows = committer
        .query(table, "SELECT COUNT(*) AS n, SUM(id) AS ids, SUM(amount) AS amounts, SUM(LENGTH(name)) AS names FROM t")
        .unwrap();
    rows.into_iter().next().unwrap()
}

fn main() {
    let n: usize = std::env::var("SLUICE_BENCH_CHANGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let keys = (n / 10).max(10) as u64;
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let initial: Vec<Change> =
        (0..keys as i64).map(|id| Change { id, delete: false, name: format!("c-{id}"), cents: id * 7 }).collect();
    let changes: Vec<Change> = (0..n)
        .map(|i| {
            let id = (rng.next() % keys) as i64;
            let delete = rng.next() % 10 == 0;
            Change { id, delete, name: format!("c-{id}-v{i}"), cents: (rng.next() % 10_000_000_000) as i64 - 5_000_000_000 }
        })
        .collect();
    let deletes = changes.iter().filter(|c| c.delete).count();
    let dir = tempfile::tempdir().unwrap();
    eprintln!("merge bench: {n} changes ({deletes} deletes) over {keys} keys, into a table of {keys} rows");

    let t = table_config(dir.path(), "sluice");
    let committer = DeltaCommitter::new("bench", vec![t]).unwrap();
    committer.commit(&output(0, staged("sluice", &initial).into_iter().map(|op| StagedOp { mode: WriteMode::Append, ..op }).collect())).unwrap();
    let ops = staged("sluice", &changes);
    let started = Instant::now();
    committer.commit(&output(1, ops)).unwrap();
    let ours = started.elapsed();

    let theirs = baseline(dir.path(), &initial, &changes);
    let check = DeltaCommitter::new("bench", vec![table_config(dir.path(), "delta-rs")]).unwrap();
    let (a, b) = (summary(&committer, "sluice"), summary(&check, "delta-rs"));
    assert_eq!(a, b, "sluice and delta-rs must leave the same table");

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("merge of {n} changes over {keys} keys (10% deletes), one commit each, same result ({a}):");
    println!("  sluice commit (JSON rows, last per key, one MERGE): {:>8.0} ms  {:>9.0} changes/s", ours.as_secs_f64() * 1e3, rate(ours));
    println!("  delta-rs MERGE (Arrow, window dedupe, one MERGE):   {:>8.0} ms  {:>9.0} changes/s", theirs.as_secs_f64() * 1e3, rate(theirs));
    println!("  ratio sluice/delta-rs throughput: {:.2}x", rate(ours) / rate(theirs));
}
