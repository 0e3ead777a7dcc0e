"""Read a Delta table with the Python `deltalake` package, independently of
sluice's own Rust reader, and print what the tests assert on as JSON:

    python read_delta.py TABLE_DIR [APP_ID]
    -> {"version": 7, "txn": 5, "rows": [{...}, ...]}

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
    table = DeltaTable(path)
    rows = table.to_pyarrow_table().to_pylist()
    txn = table.transaction_version(app_id) if app_id else None
    json.dump({"version": table.version(), "txn": txn, "rows": rows}, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: deltalake's native runtime threads
    # can abort the process while being torn down ("terminate called without
    # an active exception"), after the answer was already written.
    os._exit(0)
