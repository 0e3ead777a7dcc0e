//! Arrow output (feature `arrow`): stage record batches as Arrow IPC streams.
//!
//! The bulk form. A JSON row costs the sink an encode per record, and the
//! host a parse per record at stage time and again at commit; an Arrow
//! record batch is columnar and typed, so the host only checks its framing,
//! UTF-8 and key columns, and hands the columns to the Delta writer as they
//! are.
//!
//! The WIT stages Arrow only as a file under `/staging` (large outputs never
//! cross the boundary as one argument, and the staging quota covers them).
//! [`Table::append_arrow`](crate::Table::append_arrow) hides that: it writes
//! the stream to a file of its own, stages it, and removes it.
//!
//! The crates the API takes and returns are re-exported as [`array`] and
//! [`schema`], so a sink builds its batches with the same Arrow version.

use crate::output::StageError;
use crate::__private::bindings::sluice::sink::output::{self as wit, Rows, WriteMode};
use arrow_array::builder::StringBuilder;
use arrow_array::{RecordBatch, StringArray};
use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};

pub use arrow_array as array;
pub use arrow_schema as schema;

/// A string column from byte strings: invalid UTF-8 is replaced with U+FFFD,
/// `None` becomes null. Made for a chunk's keys or values, e.g.
/// `utf8_lossy(chunk.iter().map(|r| r.value()))`.
pub fn utf8_lossy<'a, I>(values: I) -> StringArray
where
    I: IntoIterator<Item = Option<&'a [u8]>>,
{
    let values = values.into_iter();
    let mut column = StringBuilder::with_capacity(values.size_hint().0, 0);
    for value in values {
        match value.map(|bytes| (bytes, std::str::from_utf8(bytes))) {
            None => column.append_null(),
            Some((_, Ok(text))) => column.append_value(text),
            Some((bytes, Err(_))) => column.append_value(String::from_utf8_lossy(bytes)),
        }
    }
    column.finish()
}

thread_local! {
    /// Numbers the files this module writes. A component instance runs one
    /// batch attempt, so the count starts afresh with every `/staging`.
    static NEXT_FILE: Cell<u64> = const { Cell::new(0) };
}

/// Writes `batch` as an IPC stream to a new file under `/staging`, stages
/// it for `table`, and removes it.
pub(crate) fn stage(table: &str, mode: WriteMode<'_>, batch: &RecordBatch) -> Result<(), StageError> {
    // Encoded in memory first: one write call into the host instead of one
    // per IPC message.
    let bytes = encode(batch)?;
    let (path, mut file) = create_file()?;
    let written = file.write_all(&bytes).and_then(|()| file.flush());
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(StageError::Io(format!("writing {path}: {e}")));
    }
    let staged = wit::stage(table, mode, Rows::File((&path, wit::FileFormat::ArrowIpc)));
    // The host snapshotted the file in `stage`, so it is no longer needed.
    // A failed removal is not reported: the rows are staged (an error would
    // invite staging them twice), the quota counts bytes written rather than
    // files kept, and the host removes `/staging` after the attempt.
    let _ = std::fs::remove_file(&path);
    staged.map_err(StageError::from_wit)
}

fn encode(batch: &RecordBatch) -> Result<Vec<u8>, StageError> {
    let invalid = |e: arrow_schema::ArrowError| StageError::InvalidRows(format!("encoding the record batch as Arrow IPC: {e}"));
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(invalid)?;
    writer.write(batch).map_err(invalid)?;
    writer.finish().map_err(invalid)?;
    writer.into_inner().map_err(invalid)
}

/// A file under `/staging` that did not exist before: never one the sink
/// wrote itself.
fn create_file() -> Result<(String, File), StageError> {
    loop {
        let n = NEXT_FILE.with(|next| next.replace(next.get() + 1));
        let path = format!("/staging/.sluice-sdk-{n}.arrows");
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StageError::Io(format!("creating {path}: {e}"))),
        }
    }
}
