//! Staged Arrow IPC streams: checked, charged, then decoded once.
//!
//! arrow's reader trusts what a stream declares: it allocates what a length
//! prefix claims, inflates compressed buffers to the size they state, and
//! panics (asserts, `unwrap`, `unimplemented!`) on metadata it does not
//! expect. So a stream is walked first ([`check_ipc_framing`]): anything
//! the reader would trust wrongly is refused with an `invalid-rows` error
//! naming the message, the declared rows and arrays are charged to
//! `limits.output_rows` and `limits.output_bytes`, and only then is it
//! decoded, with its columns pointing into the stream's bytes. A panic left
//! in the decoder fails only the stage call.

use super::{ARRAY_CHARGE, ArrowRows, StagedRows, limit};
use crate::limits::Budget;
use crate::sandbox::bindings::sluice::sink::output as wit;
use arrow_array::RecordBatch;
use arrow_buffer::Buffer;

/// What the framing walk found: rows and arrays the stream declares.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Framing {
    rows: u64,
    arrays: u64,
}

/// Walk the IPC stream's message frames and check every declared length
/// against the bytes actually there, before the decoder sees any of it:
/// arrow's reader allocates what a length prefix claims, slices buffers
/// with an assertion (a panic) rather than an error, and inflates
/// compressed buffers to the length they declare. So: every message and
/// body fits the stream, every buffer fits its body, no buffer is
/// compressed (a few KiB of ZSTD can declare terabytes; refusing them costs
/// a sink nothing, as `/staging` is local), no length is negative, every
/// column is of a table type ([`check_field_type`]) and every batch's
/// buffers are as large as its row count needs ([`check_batch_layout`]).
/// Returns the rows and arrays declared, to charge before decoding.
pub(super) fn check_ipc_framing(bytes: &[u8]) -> Result<Framing, String> {
    let word = |at: usize| bytes.get(at..at + 4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")));
    let mut pos = 0usize;
    let mut found = Framing::default();
    let mut columns: Option<Vec<Layout>> = None;
    while pos < bytes.len() {
        let start = pos;
        let mut len = word(pos).ok_or("truncated message header")?;
        pos += 4;
        if len == -1 {
            // Continuation marker (IPC format ≥ 0.15), then the length.
            len = word(pos).ok_or("truncated message header")?;
            pos += 4;
        }
        if len == 0 {
            return Ok(found); // end-of-stream marker
        }
        let remaining = bytes.len() - pos;
        let len = usize::try_from(len).ok().filter(|&l| l <= remaining).ok_or_else(|| {
            format!("message at byte {start} declares {len} bytes of metadata but {remaining} remain")
        })?;
        let message = arrow_ipc::root_as_message(&bytes[pos..pos + len])
            .map_err(|e| format!("message at byte {start} has invalid metadata: {e}"))?;
        pos += len;
        let remaining = bytes.len() - pos;
        let body = message.bodyLength();
        let body = usize::try_from(body).ok().filter(|&b| b <= remaining).ok_or_else(|| {
            format!("message at byte {start} declares a {body}-byte body but {remaining} bytes remain")
        })?;
        pos += body;
        let at = |what: String| format!("message at byte {start}: {what}");
        if let Some(schema) = message.header_as_schema() {
            if columns.is_some() {
                return Err(at("a second schema message".into()));
            }
            let mut flat = Vec::new();
            // arrow unwraps the field list: it must be there.
            let fields = schema.fields().ok_or_else(|| at("a schema without fields".into()))?;
            for field in fields {
                found.arrays += 1;
                flat.push(check_field_type(&field).map_err(at)?);
            }
            columns = Some(flat);
        }
        if message.header_as_dictionary_batch().is_some() {
            return Err(at("a dictionary batch (dictionary-encoded columns are not accepted)".into()));
        }
        let Some(batch) = message.header_as_record_batch() else { continue };
        let rows = u64::try_from(batch.length()).map_err(|_| at(format!("negative row count {}", batch.length())))?;
        found.rows = found.rows.saturating_add(rows);
        if batch.compression().is_some() {
            return Err(at("its buffers are compressed (LZ4 or ZSTD); stage uncompressed Arrow IPC".into()));
        }
        for node in batch.nodes().into_iter().flatten() {
            if node.length() < 0 || node.null_count() < 0 {
                return Err(at("a field node has a negative length".into()));
            }
            found.arrays += 1;
        }
        // The IPC format aligns every buffer to 8 bytes; arrow asserts it
        // (a panic) when it views a nested column's offsets, so a buffer
        // that is not is refused here. The stream itself is 64-aligned.
        if (pos - body) % 8 != 0 {
            return Err(at(format!("its body starts at byte {}, not on an 8-byte boundary", pos - body)));
        }
        for (i, b) in batch.buffers().into_iter().flatten().enumerate() {
            let fits = u64::try_from(b.offset()).ok().zip(u64::try_from(b.length()).ok()).and_then(|(o, l)| o.checked_add(l));
            if fits.is_none_or(|end| end > body as u64) {
                return Err(at(format!("buffer {i} ({} bytes at {}) is outside its {body}-byte body", b.length(), b.offset())));
            }
            if b.offset() % 8 != 0 {
                return Err(at(format!("buffer {i} starts at {}, not on an 8-byte boundary", b.offset())));
            }
        }
        if batch.variadicBufferCounts().is_some_and(|c| !c.is_empty()) {
            return Err(at("variadic buffers (view columns are not accepted)".into()));
        }
        let columns = columns.as_deref().ok_or_else(|| at("a record batch before the schema".into()))?;
        check_batch_layout(columns, &batch).map_err(at)?;
    }
    Ok(found)
}

/// Only the column types a table can take, not dictionary encoded: arrow's
/// schema conversion panics (`unimplemented!`, `unwrap`) on type metadata
/// it does not expect, so none other reaches it. Nested types (struct,
/// list, map) are walked field by field, at most [`MAX_NESTING`] deep.
fn check_field_type(field: &arrow_ipc::Field<'_>) -> Result<Layout, String> {
    check_field(field, 0)
}

/// Nested deeper than this is refused (a table type nests far less).
const MAX_NESTING: usize = 32;

fn check_field(field: &arrow_ipc::Field<'_>, depth: usize) -> Result<Layout, String> {
    use arrow_ipc::{DateUnit, Precision, TimeUnit, Type};
    let name = field.name().unwrap_or("");
    let refuse = |what: &str| {
        Err(format!(
            "column `{name}` {what}; staged Arrow streams may hold only the types a table column can have: boolean, \
             integer, floating-point, string, binary, date, timestamp, decimal128, and struct, list and map of them"
        ))
    };
    if field.dictionary().is_some() {
        return refuse("is dictionary-encoded");
    }
    if depth > MAX_NESTING {
        return refuse(&format!("is nested deeper than {MAX_NESTING} levels"));
    }
    let children: Vec<arrow_ipc::Field<'_>> = field.children().map(|c| c.iter().collect()).unwrap_or_default();
    let nested = |f: &arrow_ipc::Field<'_>| check_field(f, depth + 1);
    let flat = |layout: Option<Layout>| if children.is_empty() { layout } else { None };
    let layout = match field.type_type() {
        Type::Null => flat(Some(Layout::Null)),
        Type::Bool => flat(Some(Layout::Bits)),
        Type::Utf8 | Type::Binary => flat(Some(Layout::Var(4))),
        Type::LargeUtf8 | Type::LargeBinary => flat(Some(Layout::Var(8))),
        Type::Int => flat(field.type_as_int().and_then(|i| match i.bitWidth() {
            w @ (8 | 16 | 32 | 64) => Some(Layout::Fixed(w as u64 / 8)),
            _ => None,
        })),
        Type::FloatingPoint => flat(field.type_as_floating_point().and_then(|f| match f.precision() {
            Precision::HALF => Some(Layout::Fixed(2)),
            Precision::SINGLE => Some(Layout::Fixed(4)),
            Precision::DOUBLE => Some(Layout::Fixed(8)),
            _ => None,
        })),
        // Enum values and widths arrow's schema conversion `panic!`s or
        // `unwrap`s on are refused here (found by the nested-stream fuzz).
        Type::Date => flat(field.type_as_date().and_then(|d| match d.unit() {
            DateUnit::DAY => Some(Layout::Fixed(4)),
            DateUnit::MILLISECOND => Some(Layout::Fixed(8)),
            _ => None,
        })),
        Type::Timestamp => flat(
            field
                .type_as_timestamp()
                .filter(|t| matches!(t.unit(), TimeUnit::SECOND | TimeUnit::MILLISECOND | TimeUnit::MICROSECOND | TimeUnit::NANOSECOND))
                .map(|_| Layout::Fixed(8)),
        ),
        Type::Decimal => flat(
            field
                .type_as_decimal()
                .filter(|d| d.bitWidth() == 128 && (1..=38).contains(&d.precision()) && (0..=d.precision()).contains(&d.scale()))
                .map(|_| Layout::Fixed(16)),
        ),
        Type::Struct_ if field.children().is_some() && field.type_as_struct_().is_some() => {
            Some(Layout::Struct(children.iter().map(nested).collect::<Result<_, _>>()?))
        }
        Type::List if children.len() == 1 && field.type_as_list().is_some() => Some(Layout::List(Box::new(nested(&children[0])?))),
        Type::Map if children.len() == 1 && field.type_as_map().is_some() => match nested(&children[0])? {
            Layout::Struct(kv) if kv.len() == 2 => Some(Layout::List(Box::new(Layout::Struct(kv)))),
            _ => return refuse("is a map whose entries are not a struct of a key and a value"),
        },
        _ => None,
    };
    layout.map_or_else(|| refuse(&format!("has type {:?}{}", field.type_type(), if children.is_empty() { "" } else { " with these children" })), Ok)
}

/// A column's layout in an IPC record batch: its buffers after the
/// validity bitmap (a null column has no buffers at all), and its children.
#[derive(Debug, Clone)]
enum Layout {
    Null,
    /// Booleans: one bit a value.
    Bits,
    /// This many bytes a value.
    Fixed(u64),
    /// Offsets of this width, then the values' bytes.
    Var(u64),
    /// No buffer but validity; children of the same length.
    Struct(Vec<Layout>),
    /// 32-bit offsets, then one child of the length its node declares
    /// (a map is a list of key-value structs).
    List(Box<Layout>),
}

/// Check one record batch's nodes and buffers against the columns: the
/// sizes arrow assumes (and asserts, panicking) before it validates.
fn check_batch_layout(columns: &[Layout], batch: &arrow_ipc::RecordBatch<'_>) -> Result<(), String> {
    let nodes: Vec<_> = batch.nodes().into_iter().flatten().map(|n| (n.length() as u64, n.null_count() as u64)).collect();
    let buffers: Vec<_> = batch.buffers().into_iter().flatten().map(|b| b.length() as u64).collect();
    let mut walk = Walk { nodes: nodes.iter().copied(), buffers: buffers.iter().copied() };
    let rows = batch.length() as u64;
    for (column, layout) in columns.iter().enumerate() {
        walk.column(&format!("column {column}"), layout, Some(rows))?;
    }
    if walk.nodes.next().is_some() {
        return Err(format!("{} field nodes for its columns, more than they have", nodes.len()));
    }
    if walk.buffers.next().is_some() {
        return Err("more buffers than its columns have".into());
    }
    Ok(())
}

/// The nodes and buffers of a batch, taken column by column, depth first.
struct Walk<N, B> {
    nodes: N,
    buffers: B,
}

impl<N: Iterator<Item = (u64, u64)>, B: Iterator<Item = u64>> Walk<N, B> {
    /// One column (or child) of `layout`, whose length must be `rows` when given.
    fn column(&mut self, column: &str, layout: &Layout, rows: Option<u64>) -> Result<(), String> {
        let (len, nulls) = self.nodes.next().ok_or_else(|| format!("{column} has no field node"))?;
        if rows.is_some_and(|r| len != r) || nulls > len {
            return Err(format!("{column} has {len} values ({nulls} null) where {} are needed", rows.map_or("other".into(), |r| r.to_string())));
        }
        let bits = len.div_ceil(8);
        let short = |what: &str, have: u64, need: u64| {
            if have < need { Err(format!("{column}'s {what} buffer has {have} bytes, {need} needed")) } else { Ok(()) }
        };
        // arrow views a typed buffer whole (`typed_data`), asserting (a
        // panic) that its length is a multiple of the element's width.
        let whole = |what: &str, have: u64, width: u64| {
            if have % width != 0 { Err(format!("{column}'s {what} buffer has {have} bytes, not a multiple of {width}")) } else { Ok(()) }
        };
        if let Layout::Null = layout {
            return Ok(());
        }
        let validity = self.take(column, "validity")?;
        if nulls > 0 {
            short("validity", validity, bits)?;
        }
        match layout {
            Layout::Null => {}
            Layout::Bits => short("values", self.take(column, "values")?, bits)?,
            Layout::Fixed(w) => {
                let have = self.take(column, "values")?;
                short("values", have, len.saturating_mul(*w))?;
                whole("values", have, *w)?;
            }
            Layout::Var(w) => {
                let have = self.take(column, "offsets")?;
                short("offsets", have, (len + 1).saturating_mul(*w))?;
                whole("offsets", have, *w)?;
                self.take(column, "values")?;
            }
            Layout::Struct(children) => {
                for (i, child) in children.iter().enumerate() {
                    self.column(&format!("{column}.{i}"), child, Some(len))?;
                }
            }
            Layout::List(child) => {
                let have = self.take(column, "offsets")?;
                short("offsets", have, (len + 1).saturating_mul(4))?;
                whole("offsets", have, 4)?;
                self.column(&format!("{column}.items"), child, None)?;
            }
        }
        Ok(())
    }

    fn take(&mut self, column: &str, what: &str) -> Result<u64, String> {
        self.buffers.next().ok_or_else(|| format!("{column}: a buffer is missing ({what})"))
    }
}

/// Decode a staged Arrow IPC stream. Its rows (`output_rows`) and arrays
/// (`output_bytes`) are charged from the framing before it is decoded.
pub(super) fn arrow_rows(bytes: Buffer, keys: &[String], path: &str, rows: &Budget, cost: &Budget) -> wasmtime::Result<Result<(StagedRows, u64), wit::StageError>> {
    let invalid = |what: String| wit::StageError::InvalidRows(format!("{path}: {what}"));
    let framing = match check_ipc_framing(bytes.as_slice()) {
        Ok(f) => f,
        Err(e) => return Ok(Err(invalid(format!("not an Arrow IPC stream: {e}")))),
    };
    rows.charge(framing.rows).map_err(limit)?;
    cost.charge(framing.arrays.saturating_mul(ARRAY_CHARGE)).map_err(limit)?;
    // The framing check rules out what arrow is known to panic on; a panic
    // left in its decoder still only fails this stage call.
    let decoded = std::panic::catch_unwind(|| decode_ipc(&bytes))
        .unwrap_or_else(|_| Err("corrupt Arrow IPC stream: the decoder gave up on it".into()));
    let (schema, batches) = match decoded {
        Ok(d) => d,
        Err(e) => return Ok(Err(invalid(e))),
    };
    if let Some(key) = keys.iter().find(|k| schema.field_with_name(k).is_err()) {
        return Ok(Err(invalid(format!("key column `{key}` is not in the Arrow schema"))));
    }
    for batch in &batches {
        for key in keys {
            let column = batch.column_by_name(key).expect("checked against the schema");
            if arrow_array::Array::null_count(column.as_ref()) > 0 {
                return Ok(Err(invalid(format!("key column `{key}` has nulls"))));
            }
        }
    }
    let count = batches.iter().map(|b| b.num_rows() as u64).sum();
    Ok(Ok((StagedRows::ArrowIpc(ArrowRows { bytes, batches }), count)))
}

/// The stream's schema and record batches, columns sharing `bytes`.
fn decode_ipc(bytes: &Buffer) -> Result<(arrow_schema::SchemaRef, Vec<RecordBatch>), String> {
    let mut rest = bytes.clone();
    // Aligned or refused: a misaligned buffer would be copied, at a cost
    // the framing did not charge.
    let mut decoder = arrow_ipc::reader::StreamDecoder::new().with_require_alignment(true);
    let mut batches = Vec::new();
    let corrupt = |decoder: &arrow_ipc::reader::StreamDecoder, e| {
        let what = if decoder.schema().is_some() { "corrupt Arrow IPC stream" } else { "not an Arrow IPC stream" };
        format!("{what}: {e}")
    };
    loop {
        match decoder.decode(&mut rest) {
            Ok(Some(batch)) => batches.push(batch),
            Ok(None) => break,
            Err(e) => return Err(corrupt(&decoder, e)),
        }
    }
    decoder.finish().map_err(|e| corrupt(&decoder, e))?;
    let schema = decoder.schema().ok_or_else(|| "not an Arrow IPC stream: no schema message".to_owned())?;
    Ok((schema, batches))
}

