//! Pipeline metrics in the Prometheus text format, written to a file after
//! every batch (for node_exporter's textfile collector, or to read by eye).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Counters and gauges of one `sluice run`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Pipeline id (a label on every series).
    pub pipeline: String,
    /// Batches committed by this process.
    pub batches_committed: u64,
    /// Batches found already committed after a restart (sink not run).
    pub batches_skipped: u64,
    /// Failed sink attempts, retried or not.
    pub sink_failures: u64,
    /// Records delivered to the sink in committed batches.
    pub records: u64,
    /// Record bytes delivered to the sink in committed batches.
    pub record_bytes: u64,
    /// Time in the sink (all attempts of committed batches).
    pub sink_seconds: f64,
    /// Time in Delta commits.
    pub commit_seconds: f64,
    /// The last committed batch id.
    pub last_batch_id: Option<u64>,
    /// Duration of the last batch, plan to commit log.
    pub last_batch_seconds: f64,
    /// Table → Delta version after the last batch.
    pub table_versions: BTreeMap<String, u64>,
    /// (topic, partition) → records between the last batch and the high
    /// watermark seen when it was planned.
    pub lag: BTreeMap<(String, i32), i64>,
}

impl Metrics {
    /// Account for a committed batch.
    pub fn batch_committed(&mut self, id: u64, records: u64, bytes: u64, sink: Duration, commit: Duration, total: Duration) {
        self.batches_committed += 1;
        self.records += records;
        self.record_bytes += bytes;
        self.sink_seconds += sink.as_secs_f64();
        self.commit_seconds += commit.as_secs_f64();
        self.last_batch_id = Some(id);
        self.last_batch_seconds = total.as_secs_f64();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let p = escape(&self.pipeline);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP sluice_{name} {help}\n# TYPE sluice_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "sluice_{name}{{pipeline=\"{p}\"{labels}}} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        metric("batches_committed_total", "counter", "Batches committed.", one(self.batches_committed.to_string()));
        metric(
            "batches_skipped_total",
            "counter",
            "Batches found already committed on restart; the sink was not run.",
            one(self.batches_skipped.to_string()),
        );
        metric("sink_failures_total", "counter", "Failed sink attempts.", one(self.sink_failures.to_string()));
        metric("records_total", "counter", "Records delivered to the sink in committed batches.", one(self.records.to_string()));
        metric("record_bytes_total", "counter", "Record bytes delivered in committed batches.", one(self.record_bytes.to_string()));
        metric("sink_seconds_total", "counter", "Time spent running the sink.", one(self.sink_seconds.to_string()));
        metric("commit_seconds_total", "counter", "Time spent committing to Delta.", one(self.commit_seconds.to_string()));
        if let Some(id) = self.last_batch_id {
            metric("last_batch_id", "gauge", "The last committed batch id.", one(id.to_string()));
            metric("last_batch_seconds", "gauge", "Duration of the last batch.", one(self.last_batch_seconds.to_string()));
        }
        metric(
            "table_version",
            "gauge",
            "Delta table version after the last batch.",
            self.table_versions.iter().map(|(t, v)| (format!(",table=\"{}\"", escape(t)), v.to_string())).collect(),
        );
        metric(
            "lag_records",
            "gauge",
            "Records between the last planned batch and the high watermark.",
            self.lag
                .iter()
                .map(|((t, part), lag)| (format!(",topic=\"{}\",partition=\"{part}\"", escape(t)), lag.to_string()))
                .collect(),
        );
        out
    }

    /// Replace `path` with the current metrics (atomically: a scraper never
    /// sees half a file).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("prom.tmp");
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, path)
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let mut m = Metrics { pipeline: "orders".into(), ..Default::default() };
        m.batch_committed(4, 100, 2000, Duration::from_millis(10), Duration::from_millis(20), Duration::from_millis(40));
        m.table_versions.insert("orders".into(), 5);
        m.lag.insert(("in\"put".into(), 2), 17);
        let text = m.render();
        assert!(text.contains("# TYPE sluice_records_total counter\nsluice_records_total{pipeline=\"orders\"} 100\n"), "{text}");
        assert!(text.contains("sluice_table_version{pipeline=\"orders\",table=\"orders\"} 5\n"), "{text}");
        assert!(text.contains("sluice_lag_records{pipeline=\"orders\",topic=\"in\\\"put\",partition=\"2\"} 17\n"), "{text}");
        assert!(text.contains("sluice_last_batch_id{pipeline=\"orders\"} 4\n"), "{text}");
    }
}
