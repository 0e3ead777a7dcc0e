"""Helpers for writing a sluice sink in Python (built with componentize-py).

componentize-py generates the `wit_world` package from `wit/` when it builds
the component; this module sits on top of it the way the Rust `sluice-sdk`
sits on `wit-bindgen`: it walks the columnar record chunks into `Record`s,
wraps staging and logging, and turns a sink's errors into the WIT
`sink-error`. A sink module defines `class Handler(exports.Handler)` (`from wit_world import exports`)
whose `for_each_batch(self, batch, stream)` returns None or raises
`invalid_input(...)` / `failed(...)`.
"""

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from componentize_py_types import Err
from wit_world.imports import log as _log
from wit_world.imports import output as _output
from wit_world.imports import types as _types

JSON_LINES = _output.FileFormat.JSON_LINES
ARROW_IPC = _output.FileFormat.ARROW_IPC


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the batch (a copy: Python has no zero-copy views here)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: List[Tuple[str, Optional[bytes]]]


def records(batch: _types.BatchInfo, stream) -> Iterator[Record]:
    """Every record of the batch, chunk after chunk, in delivery order."""
    while (chunk := stream.next_chunk()) is not None:
        yield from chunk_records(batch, chunk)


def chunk_records(batch: _types.BatchInfo, chunk: _types.RecordChunk) -> Iterator[Record]:
    """The records of one chunk. See `record-chunk` in wit/types.wit for the
    layout: key, value and headers of each record back to back in `data`,
    -1 lengths for nulls, `header_counts` headers per record."""
    data = chunk.data
    pos = 0
    header = 0
    ranges = batch.ranges

    def take(length: int) -> Optional[bytes]:
        nonlocal pos
        if length < 0:
            return None
        piece = data[pos:pos + length]
        pos += length
        return piece

    for i, source in enumerate(chunk.sources):
        key = take(chunk.key_lens[i])
        value = take(chunk.value_lens[i])
        headers = []
        for _ in range(chunk.header_counts[i]):
            name = take(chunk.header_key_lens[header]).decode("utf-8", "replace")
            headers.append((name, take(chunk.header_value_lens[header])))
            header += 1
        r = ranges[source]
        yield Record(r.topic, r.partition, chunk.offsets[i], chunk.timestamps_ms[i], key, value, headers)


def invalid_input(message: str) -> Err:
    """The records are bad: retrying cannot help. `raise invalid_input(..)`."""
    return Err(_types.SinkError_InvalidInput(message))


def failed(message: str) -> Err:
    """Any other failure (the host may retry). `raise failed(..)`."""
    return Err(_types.SinkError_Failed(message))


def _stage(table: str, mode, rows) -> None:
    try:
        _output.stage(table, mode, rows)
    except Err as e:
        # Same wording as the Rust SDK: a staging error fails the batch.
        raise failed(f"staging output: {e.value}") from None


def append_json(table: str, rows: Sequence[str]) -> None:
    """Append JSON-object rows (one string per row) to `table`."""
    _stage(table, _output.WriteMode_Append(), _output.Rows_Json(list(rows)))


def upsert_json(table: str, keys: Sequence[str], rows: Sequence[str]) -> None:
    """MERGE JSON-object rows into `table` on `keys`."""
    _stage(table, _output.WriteMode_Upsert(list(keys)), _output.Rows_Json(list(rows)))


def append_file(table: str, path: str, fmt=JSON_LINES) -> None:
    """Append the rows of a file the sink wrote under /staging (closed first)."""
    _stage(table, _output.WriteMode_Append(), _output.Rows_File((path, fmt)))


def upsert_file(table: str, keys: Sequence[str], path: str, fmt=JSON_LINES) -> None:
    """MERGE the rows of a file under /staging into `table` on `keys`."""
    _stage(table, _output.WriteMode_Upsert(list(keys)), _output.Rows_File((path, fmt)))


def log(message: str, level: str = "info", **fields) -> None:
    """One line in the batch log with structured fields (values made strings).
    Capped per batch: log per batch or per chunk, not per record."""
    _log.log(_log.Level[level.upper()], message, [(k, str(v)) for k, v in fields.items()])
