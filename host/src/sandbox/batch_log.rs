//! The batch log: the sink's log calls and its stdout/stderr, capped.
//!
//! The caps (`limits.log_bytes`, `limits.log_lines`) are enforced as the
//! sink writes: the write that would pass them ends the batch with a
//! [`LimitExceeded`] trap, so a log flood costs at most the cap in memory.
//! A sink's log call is charged piece by piece as it is read from guest
//! memory (see `guest_args`), every structured field at least
//! [`FIELD_CHARGE`], so millions of empty fields cost what they hold.

use crate::limits::{Limit, LimitExceeded, Limits};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Bytes of `limits.log_bytes` a structured field costs beyond its text:
/// the host's record of it (two strings).
pub(crate) const FIELD_CHARGE: u64 = size_of::<(String, String)>() as u64;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected, handled.
    Warn,
    /// A failure.
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The sink's `log` calls.
    Sink,
    /// The sink's stdout.
    Stdout,
    /// The sink's stderr.
    Stderr,
}

/// One line of the batch log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Severity (stdout is `info`, stderr is `warn`).
    pub level: Level,
    /// Origin.
    pub source: LogSource,
    /// The text.
    pub message: String,
    /// Structured fields, in the order the sink gave them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

/// The capped log of one batch attempt, shared by the log interface and the
/// stdout/stderr streams.
#[derive(Debug, Clone)]
pub(crate) struct BatchLog(Arc<Mutex<LogState>>);

#[derive(Debug)]
struct LogState {
    lines: Vec<LogLine>,
    bytes: u64,
    max_bytes: u64,
    max_lines: u64,
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
}

impl BatchLog {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self(Arc::new(Mutex::new(LogState {
            lines: Vec::new(),
            bytes: 0,
            max_bytes: limits.log_bytes,
            max_lines: limits.log_lines,
            partial_stdout: Vec::new(),
            partial_stderr: Vec::new(),
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        // A panic while holding the lock cannot leave the log inconsistent in
        // a way that matters more than losing it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charge bytes of a log line about to be copied from the sink.
    pub(crate) fn charge(&self, bytes: u64) -> Result<(), LimitExceeded> {
        self.state().charge_bytes(bytes)
    }

    /// Add a line whose bytes were charged with [`charge`](Self::charge).
    pub(crate) fn push_charged(&self, line: LogLine) -> Result<(), LimitExceeded> {
        self.state().push_line(line)
    }

    /// Bytes written to stdout or stderr: complete lines become log lines.
    pub(crate) fn write_stdio(&self, source: LogSource, bytes: &[u8]) -> Result<(), LimitExceeded> {
        let mut s = self.state();
        s.charge_bytes(bytes.len() as u64)?;
        let mut pending = std::mem::take(s.partial(source));
        pending.extend_from_slice(bytes);
        let mut rest = pending.as_slice();
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            s.push_line(stdio_line(source, &rest[..nl]))?;
            rest = &rest[nl + 1..];
        }
        *s.partial(source) = rest.to_vec();
        Ok(())
    }

    /// The lines so far, with unterminated stdout/stderr output as a last line.
    pub(crate) fn lines(&self) -> Vec<LogLine> {
        let s = self.state();
        let mut lines = s.lines.clone();
        for (source, partial) in [(LogSource::Stdout, &s.partial_stdout), (LogSource::Stderr, &s.partial_stderr)] {
            if !partial.is_empty() {
                lines.push(stdio_line(source, partial));
            }
        }
        lines
    }

    /// The last `n` stderr lines: what a panicking sink said before it died.
    pub(crate) fn stderr_tail(&self, n: usize) -> Vec<String> {
        let all: Vec<String> = self
            .lines()
            .into_iter()
            .filter(|l| l.source == LogSource::Stderr && !l.message.trim().is_empty())
            .map(|l| l.message)
            .collect();
        all[all.len().saturating_sub(n)..].to_vec()
    }
}

fn stdio_line(source: LogSource, bytes: &[u8]) -> LogLine {
    let level = if source == LogSource::Stderr { Level::Warn } else { Level::Info };
    LogLine { level, source, message: String::from_utf8_lossy(bytes).into_owned(), fields: Vec::new() }
}

impl LogState {
    fn charge_bytes(&mut self, size: u64) -> Result<(), LimitExceeded> {
        if self.bytes.saturating_add(size) > self.max_bytes {
            return Err(LimitExceeded { limit: Limit::LogBytes, value: self.max_bytes });
        }
        self.bytes += size;
        Ok(())
    }

    fn push_line(&mut self, line: LogLine) -> Result<(), LimitExceeded> {
        if self.lines.len() as u64 >= self.max_lines {
            return Err(LimitExceeded { limit: Limit::LogLines, value: self.max_lines });
        }
        self.lines.push(line);
        Ok(())
    }

    fn partial(&mut self, source: LogSource) -> &mut Vec<u8> {
        if source == LogSource::Stderr { &mut self.partial_stderr } else { &mut self.partial_stdout }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(bytes: u64, lines: u64) -> BatchLog {
        BatchLog::new(&Limits { log_bytes: bytes, log_lines: lines, ..Limits::default() })
    }

    #[test]
    fn stdio_is_split_into_lines_across_writes() {
        let l = log(1000, 100);
        l.write_stdio(LogSource::Stdout, b"hel").unwrap();
        l.write_stdio(LogSource::Stdout, b"lo\nwor").unwrap();
        l.write_stdio(LogSource::Stderr, b"boom\n").unwrap();
        let msgs: Vec<_> = l.lines().into_iter().map(|l| (l.source, l.message)).collect();
        assert_eq!(
            msgs,
            [
                (LogSource::Stdout, "hello".to_string()),
                (LogSource::Stderr, "boom".to_string()),
                (LogSource::Stdout, "wor".to_string())
            ]
        );
        assert_eq!(l.stderr_tail(5), ["boom"]);
    }

    #[test]
    fn charged_lines_add_up_to_the_cap() {
        let l = log(100, 100);
        l.charge(60).unwrap();
        assert_eq!(l.charge(41).unwrap_err().limit, Limit::LogBytes);
        l.charge(40).unwrap();
        l.push_charged(LogLine { level: Level::Info, source: LogSource::Sink, message: "m".into(), fields: vec![] }).unwrap();
        assert_eq!(l.lines().len(), 1);
    }

    #[test]
    fn caps_are_enforced_with_the_limit_named() {
        let l = log(10, 100);
        assert_eq!(l.write_stdio(LogSource::Stdout, b"0123456789x").unwrap_err().limit, Limit::LogBytes);
        let l = log(1000, 2);
        l.write_stdio(LogSource::Stdout, b"a\nb\n").unwrap();
        assert_eq!(l.write_stdio(LogSource::Stdout, b"c\n").unwrap_err().limit, Limit::LogLines);
    }
}
