"""Read a Delta table with the Python `deltalake` package, independently of
sluice's own Rust reader, and print what the tests assert on as JSON:

    python read_delta.py TABLE [APP_ID]
    -> {"version": 7, "txn": 5, "rows": [{...}, ...]}

TABLE is a local directory or a table URL (s3://bucket/path,
az://container/path). For a URL, the object store's options (endpoint,
credentials: the object_store keys delta-rs takes, e.g. `aws_endpoint_url`)
come from the environment variable SLUICE_READER_STORAGE_OPTIONS as a JSON
object of strings, so that secrets stay out of the command line.

`txn` is the table's transaction version for APP_ID (the last batch id the
pipeline committed), or null.

Values JSON has no type for are written exactly, as text: a decimal in
positional notation with all its scale digits (`12.30`), a timestamp or
date in ISO 8601 (`1969-12-31T23:59:59.999999+00:00`), bytes in hex; a map
as a list of `[key, value]` pairs. SLUICE_READER_PARTITIONS, if set, is a
JSON list of `[column, op, value]` partition filters: only the matching
rows are read, and `files` counts only the matching files.
"""

import datetime
import decimal
import json
import os
import sys

from deltalake import DeltaTable


def main() -> None:
    path = sys.argv[1]
    app_id = sys.argv[2] if len(sys.argv) > 2 else None
    # Unset or empty: no options, as for a local directory (deltalake takes
    # None as "none given", the same as before this variable existed).
    options = json.loads(os.environ.get("SLUICE_READER_STORAGE_OPTIONS") or "null")
    partitions = [tuple(f) for f in json.loads(os.environ.get("SLUICE_READER_PARTITIONS") or "null") or []] or None
    table = DeltaTable(path, storage_options=options)
    rows = table.to_pyarrow_table(partitions=partitions).to_pylist()
    txn = table.transaction_version(app_id) if app_id else None
    files = len(table.file_uris(partition_filters=partitions))
    json.dump({"version": table.version(), "txn": txn, "rows": rows, "files": files}, sys.stdout, default=exact)
    sys.stdout.flush()


def exact(value):
    """The JSON text of a value json cannot write itself."""
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot write {type(value).__name__} {value!r}")


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: deltalake's native runtime threads
    # can abort the process while being torn down ("terminate called without
    # an active exception"), after the answer was already written.
    os._exit(0)
