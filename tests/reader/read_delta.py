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
"""

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
    table = DeltaTable(path, storage_options=options)
    rows = table.to_pyarrow_table().to_pylist()
    txn = table.transaction_version(app_id) if app_id else None
    json.dump({"version": table.version(), "txn": txn, "rows": rows, "files": len(table.file_uris())}, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: deltalake's native runtime threads
    # can abort the process while being torn down ("terminate called without
    # an active exception"), after the answer was already written.
    os._exit(0)
