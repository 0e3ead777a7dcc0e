//! Pipeline metrics in the Prometheus text format: written to a file after
//! every batch (`pipeline.metrics_file`, for node_exporter's textfile
//! collector, or to read by eye), and served over HTTP with health checks
//! ([`endpoint`], `pipeline.metrics_addr`).

pub mod endpoint;

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
    /// Records set aside as poison (`pipeline.on_poison = "quarantine"`).
    pub quarantined_records: u64,
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
    /// Batch durations (plan to commit log), sink and commit times.
    pub batch_hist: Histogram,
    /// Time in the sink per batch (all attempts).
    pub sink_hist: Histogram,
    /// Time in Delta commits per batch.
    pub commit_hist: Histogram,
    /// The lease epoch held, when the checkpoint is remote.
    pub lease_epoch: Option<u64>,
    /// Maintenance steps run, by step (`compaction`, `vacuum`, …).
    pub maintenance: BTreeMap<&'static str, u64>,
}

/// Upper bounds of the histogram buckets, in seconds.
const BUCKETS: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A Prometheus histogram of durations with fixed buckets.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] (not cumulative).
    counts: [u64; BUCKETS.len()],
    /// Observations above the last bound.
    over: u64,
    sum: f64,
}

impl Histogram {
    /// Count one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        self.sum += s;
        match BUCKETS.iter().position(|&b| s <= b) {
            Some(i) => self.counts[i] += 1,
            None => self.over += 1,
        }
    }

    /// The `_bucket`, `_sum` and `_count` samples, cumulative as Prometheus wants.
    fn samples(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let mut seen = 0;
        for (bound, count) in BUCKETS.iter().zip(self.counts) {
            seen += count;
            out.push(("_bucket".into(), format!(",le=\"{bound}\""), seen.to_string()));
        }
        seen += self.over;
        out.push(("_bucket".into(), ",le=\"+Inf\"".into(), seen.to_string()));
        out.push(("_sum".into(), String::new(), self.sum.to_string()));
        out.push(("_count".into(), String::new(), seen.to_string()));
        out
    }
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
        self.batch_hist.observe(total);
        self.sink_hist.observe(sink);
        self.commit_hist.observe(commit);
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
        metric("quarantined_records_total", "counter", "Records set aside as poison into the quarantine table.", one(self.quarantined_records.to_string()));
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
        metric(
            "maintenance_total",
            "counter",
            "Table maintenance steps run (log checkpoints, log cleanup, compaction, vacuum).",
            self.maintenance.iter().map(|(step, n)| (format!(",step=\"{step}\""), n.to_string())).collect(),
        );
        if let Some(epoch) = self.lease_epoch {
            metric("lease_epoch", "gauge", "The lease epoch this process holds on the remote checkpoint.", one(epoch.to_string()));
        }
        for (name, help, h) in [
            ("batch_duration_seconds", "Batch duration, plan to commit log.", &self.batch_hist),
            ("sink_duration_seconds", "Time in the sink per batch, all attempts.", &self.sink_hist),
            ("commit_duration_seconds", "Time in Delta commits per batch.", &self.commit_hist),
        ] {
            let _ = writeln!(out, "# HELP sluice_{name} {help}\n# TYPE sluice_{name} histogram");
            for (suffix, labels, value) in h.samples() {
                let _ = writeln!(out, "sluice_{name}{suffix}{{pipeline=\"{p}\"{labels}}} {value}");
            }
        }
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
        assert!(text.contains("# TYPE sluice_batch_duration_seconds histogram\n"), "{text}");
        assert!(text.contains("sluice_batch_duration_seconds_bucket{pipeline=\"orders\",le=\"0.025\"} 0\n"), "{text}");
        assert!(text.contains("sluice_batch_duration_seconds_bucket{pipeline=\"orders\",le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("sluice_batch_duration_seconds_bucket{pipeline=\"orders\",le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("sluice_commit_duration_seconds_count{pipeline=\"orders\"} 1\n"), "{text}");
    }
}
