"""Change a Delta table behind sluice's back, as another writer would, so
the tests can check that `sluice reconcile` notices:

    python tamper_delta.py TABLE_DIR duplicate COLUMN=VALUE [TIMES]
        append TIMES more copies of the rows where COLUMN equals VALUE
    python tamper_delta.py TABLE_DIR delete PREDICATE
        delete the rows matching the SQL predicate
"""

import os
import sys

import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake


def main() -> None:
    path, action, arg = sys.argv[1:4]
    table = DeltaTable(path)
    if action == "duplicate":
        column, value = arg.split("=", 1)
        rows = table.to_pyarrow_table()
        rows = rows.filter(pc.equal(rows[column], value))
        if rows.num_rows == 0:
            sys.exit(f"no row has {column} = {value}")
        for _ in range(int(sys.argv[4]) if len(sys.argv) > 4 else 1):
            write_deltalake(path, rows, mode="append")
    elif action == "delete":
        table.delete(arg)
    else:
        sys.exit(f"unknown action {action}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # see read_delta.py: skip the native runtime's teardown
