//! What each attempt of a batch did, for `sluice batch show`: when it ran,
//! which component and config digest ran it, how it ended, and the sink's
//! log.
//!
//! Kept in the checkpoint directory as JSON lines, one file per 100
//! batches (`attempts/<batch / 100>.jsonl`). An attempt is recorded as
//! `running` before the sink starts and again with its outcome after (the
//! later line wins), so an attempt cut short by a crash still shows. These
//! files are diagnostics, not part of the write-ahead protocol: they are
//! appended to without fsync, and a missing or unreadable line never stops
//! the pipeline.
//!
//! Bounds: the last [`MAX_LOG_LINES`] log lines of an attempt, each cut to
//! [`MAX_LINE_BYTES`], and the attempts of at least the last
//! `retention.attempt_batches` batches (see `retention`).

use crate::sandbox::batch_log::LogLine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Log lines kept per attempt (the last ones: they lead to the outcome).
pub const MAX_LOG_LINES: usize = 200;
/// Bytes kept of one log line's message.
pub const MAX_LINE_BYTES: usize = 2048;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Started and not (yet) finished; after a restart: cut short.
    Running,
    /// The sink returned an output.
    Succeeded,
    /// The attempt failed.
    Failed,
}

/// One attempt of one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The batch.
    pub batch_id: u64,
    /// The attempt (1-based, per process run: a restart counts from 1 again).
    pub attempt: u32,
    /// The process that ran it.
    pub pid: u32,
    /// Start, ms since the Unix epoch.
    pub started_ms: i64,
    /// How long it took, once finished.
    pub duration_ms: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Records delivered, when it succeeded.
    pub records: Option<u64>,
    /// The attempt's `/staging`, when kept for inspection.
    pub kept_scratch: Option<PathBuf>,
    /// The last log lines.
    pub log: Vec<LogLine>,
    /// Log lines left out by the bound.
    pub log_lines_dropped: u64,
    /// SHA-256 of the component that ran (`None` in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_digest: Option<String>,
    /// The config digest it ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
}

impl AttemptRecord {
    /// An attempt starting now.
    pub fn started(batch_id: u64, attempt: u32, started_ms: i64) -> Self {
        Self {
            batch_id,
            attempt,
            pid: std::process::id(),
            started_ms,
            duration_ms: None,
            outcome: Outcome::Running,
            error: None,
            records: None,
            kept_scratch: None,
            log: Vec::new(),
            log_lines_dropped: 0,
            component_digest: None,
            config_digest: None,
        }
    }

    /// Record which component and config digest ran this attempt.
    pub fn running(mut self, component_digest: &str, config_digest: &str) -> Self {
        self.component_digest = Some(component_digest.to_owned());
        self.config_digest = Some(config_digest.to_owned());
        self
    }

    /// Keep the last lines of `log`, within the bounds.
    pub fn with_log(mut self, log: &[LogLine]) -> Self {
        let skip = log.len().saturating_sub(MAX_LOG_LINES);
        self.log_lines_dropped = skip as u64;
        self.log = log[skip..]
            .iter()
            .map(|line| {
                let mut line = line.clone();
                if line.message.len() > MAX_LINE_BYTES {
                    let cut = (0..=MAX_LINE_BYTES).rev().find(|&i| line.message.is_char_boundary(i)).unwrap_or(0);
                    line.message.truncate(cut);
                    line.message.push('…');
                }
                line
            })
            .collect();
        self
    }
}

/// Batches per log file.
const BATCHES_PER_FILE: u64 = 100;

/// The file holding the attempts of `batch_id` (and of its neighbours).
fn file_of(checkpoint: &Path, batch_id: u64) -> PathBuf {
    checkpoint.join("attempts").join(format!("{}.jsonl", batch_id / BATCHES_PER_FILE))
}

/// Record `attempt` by appending a line (a later line for the same attempt
/// supersedes an earlier one). One append per record keeps this off the
/// batch's critical path; old files are removed by `retention`.
pub fn write(checkpoint: &Path, attempt: &AttemptRecord) -> io::Result<()> {
    let path = file_of(checkpoint, attempt.batch_id);
    let mut line = serde_json::to_vec(attempt).expect("attempt records serialise");
    line.push(b'\n');
    let append = || std::fs::OpenOptions::new().create(true).append(true).open(&path);
    let mut file = match append() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path.parent().expect("a directory"))?;
            append()?
        }
        other => other?,
    };
    file.write_all(&line)?;
    Ok(())
}

/// The recorded attempts of a batch, oldest first (by start time). A line
/// that cannot be read (cut short by a crash) is returned as an error
/// naming the file and line.
pub fn read(checkpoint: &Path, batch_id: u64) -> Vec<Result<AttemptRecord, String>> {
    let path = file_of(checkpoint, batch_id);
    let Ok(text) = std::fs::read(&path) else { return Vec::new() };
    let mut latest: BTreeMap<(i64, u32, u32), AttemptRecord> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
        match serde_json::from_slice::<AttemptRecord>(line) {
            Ok(a) if a.batch_id == batch_id => {
                latest.insert((a.started_ms, a.pid, a.attempt), a);
            }
            Ok(_) => {}
            Err(e) => unreadable.push(Err(format!("{} line {}: {e}", path.display(), i + 1))),
        }
    }
    latest.into_values().map(Ok).chain(unreadable).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::batch_log::{Level, LogSource};

    fn line(message: String) -> LogLine {
        LogLine { level: Level::Info, source: LogSource::Sink, message, fields: Vec::new() }
    }

    #[test]
    fn attempts_are_kept_with_their_last_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log: Vec<LogLine> = (0..250).map(|i| line(format!("line {i}"))).collect();
        let mut first = AttemptRecord::started(3, 1, 1000);
        write(dir.path(), &first).unwrap();
        assert_eq!(read(dir.path(), 3), vec![Ok(first.clone())], "a running attempt shows");
        first.outcome = Outcome::Failed;
        first.error = Some("trap".into());
        let first = first.with_log(&log);
        write(dir.path(), &first).unwrap();
        let second = AttemptRecord { outcome: Outcome::Succeeded, ..AttemptRecord::started(3, 2, 2000) }.with_log(&[line("é".repeat(3000))]);
        write(dir.path(), &second).unwrap();
        let read = read(dir.path(), 3);
        assert_eq!(read.len(), 2);
        let (a, b) = (read[0].as_ref().unwrap(), read[1].as_ref().unwrap());
        assert_eq!((a.outcome, a.log.len(), a.log_lines_dropped), (Outcome::Failed, MAX_LOG_LINES, 50));
        assert_eq!(a.log[0].message, "line 50");
        assert_eq!(b.log[0].message.len(), MAX_LINE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &AttemptRecord::started(7, 1, 10)).unwrap();
        let path = dir.path().join("attempts/0.jsonl");
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"batch_id\":7,\"att");
        std::fs::write(&path, text).unwrap();
        let read = read(dir.path(), 7);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].as_ref().unwrap().outcome, Outcome::Running);
        assert!(read[1].as_ref().unwrap_err().contains("0.jsonl line 2: EOF while parsing"), "{read:?}");
    }
}
