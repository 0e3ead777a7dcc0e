//! Staged JSON rows in canonical form (sorted keys, no whitespace), built
//! one row at a time.
//!
//! Every row is charged to `limits.output_bytes` before it is kept: its
//! bytes and [`ROW_CHARGE`], and, for a row that must be parsed (not already
//! canonical), [`PARSE_FACTOR`] times its length must be free while it is.
//! A row the sink could fix (not JSON, not an object, a key column missing)
//! is the inner error, returned to the sink; the budget's is the outer one,
//! ending the batch.

use super::json_text::{self, Node};
use super::{PARSE_FACTOR, ROW_CHARGE, canonical};
use crate::limits::{Budget, LimitExceeded};
use crate::sandbox::bindings::sluice::sink::output as wit;

/// Staged JSON rows in canonical form, built one row at a time with every
/// byte charged to a budget first.
pub(crate) struct JsonRows {
    pub(super) out: Vec<u8>,
    count: u64,
    keys: Vec<String>,
}

impl JsonRows {
    pub(crate) fn new(keys: &[String]) -> Self {
        Self { out: Vec::new(), count: 0, keys: keys.to_vec() }
    }

    /// Add one row. The outer error is the budget's; the inner one the
    /// sink's (the row is not a JSON object with its keys).
    pub(crate) fn push(&mut self, row: &[u8], budget: &Budget) -> Result<Result<(), wit::StageError>, LimitExceeded> {
        // The row as it arrived, plus its newline and bookkeeping.
        budget.charge(row.len() as u64 + ROW_CHARGE)?;
        let start = self.out.len();
        self.out.extend_from_slice(row);
        self.finish_row(start, budget)
    }

    /// The row just placed at `out[start..]` (no newline), charged: keep it
    /// as it is if canonical, else re-encode it in its place.
    pub(super) fn finish_row(&mut self, start: usize, budget: &Budget) -> Result<Result<(), wit::StageError>, LimitExceeded> {
        let i = self.count;
        if canonical::is_canonical_row(&self.out[start..], &self.keys) {
            self.out.push(b'\n');
            self.count += 1;
            return Ok(Ok(()));
        }
        let len = (self.out.len() - start) as u64;
        let invalid = |what: String| wit::StageError::InvalidRows(format!("row {i}: {what}"));
        // The tree, and the row moved aside while it is parsed.
        budget.check(len.saturating_mul(PARSE_FACTOR + 1))?;
        let row = self.out.split_off(start);
        // Read keeping its numbers exact (`json_text`); serde_json says
        // what is wrong with a row that is not JSON.
        let Some(node) = json_text::parse(&row) else {
            let why = serde_json::from_slice::<serde::de::IgnoredAny>(&row).err().map_or("not valid JSON".into(), |e| e.to_string());
            return Ok(Err(invalid(format!("not valid JSON: {why}"))));
        };
        let Node::Object(_) = &node else {
            return Ok(Err(invalid("not a JSON object".into())));
        };
        if let Some(key) = self.keys.iter().find(|k| node.get(k).is_none_or(|v| *v == Node::Null)) {
            return Ok(Err(invalid(format!("key column `{key}` is missing or null"))));
        }
        json_text::write_canonical(&node, &mut self.out);
        self.out.push(b'\n');
        // Re-encoding can be longer than the row (`1e15` is written out in
        // full): charge what it added beyond the row and its newline.
        let grown = (self.out.len() - start) as u64;
        if grown > len + 1 {
            budget.charge(grown - len - 1)?;
        }
        self.count += 1;
        Ok(Ok(()))
    }

    /// The rows, one canonical JSON object per line, and their count.
    pub(crate) fn into_parts(self) -> (Vec<u8>, u64) {
        (self.out, self.count)
    }
}
