//! `sluice batch show`: everything recorded about one batch: its plan, its
//! commit, and each attempt with its error and the sink's log.

use crate::checkpoint::attempt_log::{self, AttemptRecord, Outcome};
use crate::checkpoint::{Checkpoint, CheckpointError, CommittedBatch, PlannedBatch};
use crate::config::PipelineConfig;
use serde::Serialize;
use std::fmt;

/// One batch, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct BatchInfo {
    /// The batch.
    pub batch_id: u64,
    /// Its plan (`offsets/N`).
    pub planned: PlannedBatch,
    /// Its commit record (`commits/N`), once committed.
    pub committed: Option<CommittedBatch>,
    /// Whether the planned component is kept in the checkpoint.
    pub component_kept: bool,
    /// The recorded attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// Attempt records that could not be read.
    pub unreadable_attempts: Vec<String>,
    /// The poison records set aside from it (`quarantine/N`), if any.
    pub quarantine: Option<crate::pipeline::quarantine::Decision>,
}

/// Gather what the checkpoint holds about batch `n`; `None` if never planned.
pub fn show(config: &PipelineConfig, n: u64) -> Result<Option<BatchInfo>, CheckpointError> {
    let checkpoint = Checkpoint::open_read_only_at(&config.checkpoint_place())?;
    let Some(planned) = checkpoint.planned(n)? else {
        return Ok(None);
    };
    let (attempts, unreadable_attempts) = attempt_log::read(checkpoint.attempts_dir(), n)
        .into_iter()
        .partition::<Vec<_>, _>(Result::is_ok);
    Ok(Some(BatchInfo {
        batch_id: n,
        component_kept: checkpoint.component(&planned.component_digest)?.is_some(),
        committed: checkpoint.committed(n)?,
        planned,
        attempts: attempts.into_iter().flatten().collect(),
        unreadable_attempts: unreadable_attempts.into_iter().filter_map(Result::err).collect(),
        quarantine: checkpoint.quarantine(n)?,
    }))
}

impl fmt::Display for BatchInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.planned;
        let state = match &self.committed {
            Some(_) => "committed",
            None if self.attempts.iter().any(|a| a.outcome == Outcome::Failed) => "NOT committed: failed (re-run by the next `sluice run`)",
            None => "NOT committed: planned (re-run by the next `sluice run`)",
        };
        writeln!(f, "batch {}: {state}", self.batch_id)?;
        writeln!(f, "  planned at   {} (the sink's clock)", utc(p.planned_timestamp_ms))?;
        let kept = if self.component_kept { "kept in the checkpoint" } else { "not kept" };
        writeln!(f, "  component    {} ({kept})", p.component_digest)?;
        writeln!(f, "  config       {}", p.config_digest)?;
        writeln!(f, "  ranges")?;
        for r in &p.ranges {
            writeln!(f, "    {}/{}  [{}, {})  {} offsets", r.topic, r.partition, r.start, r.end, r.end - r.start)?;
        }
        if let Some(c) = &self.committed {
            writeln!(f, "  output       {}", c.output_digest)?;
            writeln!(f, "  records      {}", c.records)?;
            for (table, version) in &c.table_versions {
                let rows = c.staged_rows.get(table).map_or(String::new(), |r| format!(", {r} rows staged"));
                writeln!(f, "  table        {table} at Delta version {version}{rows}")?;
            }
        }
        if let Some(d) = &self.quarantine {
            writeln!(
                f,
                "  quarantined  {} poison record(s), found in {} extra sink runs by component {}:",
                d.excluded.len(),
                d.runs,
                &d.component_digest[..d.component_digest.len().min(16)]
            )?;
            for e in &d.excluded {
                writeln!(f, "    {}/{}@{}: {}", e.topic, e.partition, e.offset, e.error)?;
            }
        }
        if self.attempts.is_empty() {
            writeln!(f, "  attempts     none recorded")?;
        }
        for a in &self.attempts {
            let took = a.duration_ms.map_or(String::new(), |d| format!(" in {d} ms"));
            let outcome = match a.outcome {
                Outcome::Running => "did not finish (the process stopped during it, or is still running it)".to_owned(),
                Outcome::Succeeded => format!("succeeded{took}, {} records", a.records.unwrap_or(0)),
                Outcome::Failed => format!("FAILED{took}: {}", a.error.as_deref().unwrap_or("?")),
            };
            writeln!(f, "  attempt {} (pid {}, started {}): {outcome}", a.attempt, a.pid, utc(a.started_ms))?;
            if let Some(dir) = &a.kept_scratch {
                writeln!(f, "    /staging kept at {}", dir.display())?;
            }
            if a.log_lines_dropped > 0 {
                writeln!(f, "    ({} earlier log lines not kept)", a.log_lines_dropped)?;
            }
            for line in &a.log {
                let mut text = String::new();
                crate::tools::exec::write_log_line(&mut text, line)?;
                write!(f, "  {text}")?;
            }
        }
        for e in &self.unreadable_attempts {
            writeln!(f, "  unreadable attempt record: {e}")?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch as `2026-11-24 01:34:39.123 UTC`.
fn utc(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar,
    // eras of 400 years starting on March 1st).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{milli:03} UTC")
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_read_as_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(super::utc(1_795_484_661_292), "2026-11-24 01:44:21.292 UTC");
        assert_eq!(super::utc(-1), "1969-12-31 23:59:59.999 UTC");
    }
}
