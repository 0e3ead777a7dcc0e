//! Structured logging into the batch log (`log.log`).
//!
//! The batch log is kept with the batch for debugging, next to what the sink
//! printed to stdout and stderr. It is capped (`limits.log_bytes`,
//! `limits.log_lines`) and exceeding the cap ends the batch, so log per batch
//! or per chunk rather than per record.
//!
//! ```no_run
//! use sluice_sdk::log::{self, Level};
//!
//! log::info("starting");
//! log::log(Level::Info, "staged orders", &[("orders", "42"), ("table", "orders")]);
//! ```

use crate::__private::bindings::sluice::sink::log as wit;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the sink handled.
    Warn,
    /// A failure.
    Error,
}

/// Writes one log line with structured `(key, value)` fields.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    wit::log(level, message, fields);
}

/// Writes a [`Level::Trace`] line.
pub fn trace(message: &str) {
    log(Level::Trace, message, &[]);
}

/// Writes a [`Level::Debug`] line.
pub fn debug(message: &str) {
    log(Level::Debug, message, &[]);
}

/// Writes a [`Level::Info`] line.
pub fn info(message: &str) {
    log(Level::Info, message, &[]);
}

/// Writes a [`Level::Warn`] line.
pub fn warn(message: &str) {
    log(Level::Warn, message, &[]);
}

/// Writes a [`Level::Error`] line.
pub fn error(message: &str) {
    log(Level::Error, message, &[]);
}
