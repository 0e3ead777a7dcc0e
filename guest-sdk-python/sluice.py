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
    """The records of one chunk. See `record-chunk` in wit/v0.2.0/types.wit for the
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


def delete_json(table: str, keys: Sequence[str], rows: Sequence[str]) -> None:
    """Delete the rows of `table` whose `keys` columns equal those of `rows`
    (JSON objects; other members are ignored). Upserts and deletes of one
    table in one batch apply in staging order, the last for a key winning."""
    _stage(table, _output.WriteMode_Delete(list(keys)), _output.Rows_Json(list(rows)))


def append_file(table: str, path: str, fmt=JSON_LINES) -> None:
    """Append the rows of a file the sink wrote under /staging (closed first)."""
    _stage(table, _output.WriteMode_Append(), _output.Rows_File((path, fmt)))


def upsert_file(table: str, keys: Sequence[str], path: str, fmt=JSON_LINES) -> None:
    """MERGE the rows of a file under /staging into `table` on `keys`."""
    _stage(table, _output.WriteMode_Upsert(list(keys)), _output.Rows_File((path, fmt)))


def delete_file(table: str, keys: Sequence[str], path: str, fmt=JSON_LINES) -> None:
    """Delete the keys in a file under /staging from `table`."""
    _stage(table, _output.WriteMode_Delete(list(keys)), _output.Rows_File((path, fmt)))


# The canonical text of values JSON has no type for: the same as the Rust
# SDK's `sluice_sdk::values` and the JavaScript SDK's, byte for byte, so the
# same rows give the same output digest in every language.

def timestamp_micros(micros: int) -> str:
    """A `timestamp` value: `1969-12-31T23:59:59.999999Z`."""
    return timestamp_ntz_micros(micros) + "Z"


def timestamp_ntz_micros(micros: int) -> str:
    """A `timestamp_ntz` value: `1969-12-31T23:59:59.999999`."""
    days, of_day = divmod(micros, 86_400_000_000)
    secs, frac = divmod(of_day, 1_000_000)
    return f"{date_days(days)}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{frac:06d}"


def date_days(days: int) -> str:
    """A `date` value from days since 1970-01-01: `1969-12-31`."""
    z = days + 719_468
    era, doe = divmod(z, 146_097)
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return f"{year:04d}-{month:02d}-{day:02d}"


def timestamp(dt) -> str:
    """A `timestamp` value from an aware `datetime` (any zone)."""
    import datetime as _dt
    delta = dt - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return timestamp_micros(delta // _dt.timedelta(microseconds=1))


def decimal(unscaled: int, scale: int) -> str:
    """A `decimal(p, scale)` value from its unscaled integer: `decimal(-5, 2)`
    is `-0.05`. For a `decimal.Decimal` d: `decimal(int(d.scaleb(scale)), scale)`."""
    sign = "-" if unscaled < 0 else ""
    digits = str(abs(unscaled))
    if scale == 0:
        return sign + digits
    digits = digits.rjust(scale + 1, "0")
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def hex_bytes(data: bytes) -> str:
    """A `binary` value: lowercase hex."""
    return data.hex()


def log(message: str, level: str = "info", **fields) -> None:
    """One line in the batch log with structured fields (values made strings).
    Capped per batch: log per batch or per chunk, not per record."""
    _log.log(_log.Level[level.upper()], message, [(k, str(v)) for k, v in fields.items()])
