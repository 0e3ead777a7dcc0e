"""Upsert JSON orders into the `orders` table through a staged file: the
Python twin of `examples/orders-upsert` (Rust), with the same output.

Record values are orders such as
`{"order_id": "o-1", "customer": "c-7", "amount_cents": 1234, "status": "paid"}`.
The sink writes one JSON line per order to `/staging/orders.jsonl`, keeping
only the last record of each `order_id` (in first-seen order), and stages an
upsert of that file on `order_id`. A malformed record rejects the whole batch
as invalid input, naming the record and what was wrong with it.

The checks follow serde's in the Rust sink, so both sinks accept and reject
the same values: strings must be strings, `amount_cents` an integer that fits
in 64 bits (not 12.0, not true), extra fields are ignored.
"""

import json

import sluice
from wit_world import exports

STAGED_FILE = "/staging/orders.jsonl"
STRING_FIELDS = ("order_id", "customer", "status")
I64 = range(-(1 << 63), 1 << 63)


def _no_constants(name):
    # Python's json accepts NaN and Infinity; JSON (and serde) do not.
    raise ValueError(f"{name} is not valid JSON")


def parse(record: sluice.Record) -> dict:
    def invalid(what):
        return sluice.invalid_input(
            f"topic {record.topic} partition {record.partition} offset {record.offset}: {what}")

    if record.value is None:
        raise invalid("null value (a tombstone) is not an order")
    try:
        # Strict UTF-8 first: json.loads(bytes) would also guess UTF-16/32.
        order = json.loads(record.value.decode("utf-8"), parse_constant=_no_constants)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
        raise invalid(f"not an order: {e}") from None
    if not isinstance(order, dict):
        raise invalid(f"not an order: expected a JSON object, got {type(order).__name__}")
    for field in STRING_FIELDS + ("amount_cents",):
        if field not in order:
            raise invalid(f"not an order: missing field `{field}`")
    for field in STRING_FIELDS:
        value = order[field]
        # Lone surrogates (\ud800) are valid to json.loads but not UTF-8.
        if not isinstance(value, str) or not _well_formed(value):
            raise invalid(f"not an order: `{field}` is not a string")
    amount = order["amount_cents"]
    if type(amount) is not int or amount not in I64:  # bool is an int subclass
        raise invalid("not an order: `amount_cents` is not a 64-bit integer")
    return {
        "order_id": order["order_id"],
        "customer": order["customer"],
        "amount_cents": amount,
        "status": order["status"],
        "updated_at_ms": record.timestamp_ms,
        "source_offset": record.offset,
    }


def _well_formed(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class Handler(exports.Handler):
    def for_each_batch(self, batch, stream):
        rows = {}  # order_id -> row; dicts keep first-insertion order
        records = 0
        for record in sluice.records(batch, stream):
            records += 1
            row = parse(record)
            rows[row["order_id"]] = row

        if rows:
            # Closed before staging: the host reads the file when staged.
            with open(STAGED_FILE, "w", encoding="utf-8") as f:
                for row in rows.values():
                    f.write(json.dumps(row, ensure_ascii=False))
                    f.write("\n")
            sluice.upsert_file("orders", ["order_id"], STAGED_FILE)

        sluice.log("staged orders upsert", batch_id=batch.batch_id, records=records, orders=len(rows))
