"""The Python twin of the Rust `sandbox-probe` and `hostile` guests, for the
conformance suite (tests/it/conformance.rs): one protocol, every language.

Each record's value is one command line; the sink runs it and stages one row
`{"cmd", "ok", "result"}` per command to the `probe` table, one stage call
per chunk. Errors are reported in the row as `{ExceptionType}: {message}`, not
raised, so one batch can try many escapes. Relative paths are joined onto
`/staging/`.

| command                 | result                                          |
|-------------------------|-------------------------------------------------|
| `write PATH CONTENT...` | `""`; writes the rest of the line               |
| `read PATH`             | the file's contents                             |
| `open PATH`             | the first 64 bytes                              |
| `list PATH`             | sorted entry names, joined by `,`               |
| `fill PATH BYTES`       | bytes written, in 64 KiB writes                 |
| `env`                   | `vars={count} {vars} args={args}`                |
| `clock`                 | `{wall_ns} {mono_ns} {mono_ns} {random hex}`     |
| `prng`                  | `random.random()` (the language's own PRNG)      |
| `typed ID MICROS DAYS UNSCALED SCALE HEX OP` | `""`; upserts or deletes a row of `typed` built with the SDK's value texts (HEX `-`: no bytes) |

Misbehaviours, which end the batch: `loop`, `alloc`, `flood-log`,
`flood-output` (stages to table `hostile`), `panic` (an uncaught exception).
"""

import json
import os
import random
import sys
import time

import sluice
from wit_world import exports


def resolve(path: str) -> str:
    return path if path.startswith("/") else "/staging/" + path


def run(line: str, started: int) -> str:
    cmd, _, rest = line.partition(" ")
    args = rest.split()
    if cmd == "write" and args:
        content = rest.lstrip().partition(" ")[2]
        with open(resolve(args[0]), "w") as f:
            f.write(content)
        return ""
    if cmd == "read" and len(args) == 1:
        with open(resolve(args[0]), "rb") as f:
            return f.read().decode("utf-8", "replace")
    if cmd == "open" and len(args) == 1:
        with open(resolve(args[0]), "rb") as f:
            return f.read(64).decode("utf-8", "replace")
    if cmd == "list" and len(args) == 1:
        return ",".join(sorted(os.listdir(resolve(args[0]))))
    if cmd == "fill" and len(args) == 2:
        return str(fill(resolve(args[0]), int(args[1])))
    if cmd == "env" and not args:
        env = sorted(os.environ.items())
        return f"vars={len(env)} {env} args={sys.argv}"
    if cmd == "clock" and not args:
        wall = time.time_ns()
        mono = [time.monotonic_ns() - started for _ in range(2)]
        return f"{wall} {mono[0]} {mono[1]} {os.urandom(16).hex()}"
    if cmd == "prng" and not args:
        return repr(random.random())
    if cmd == "typed" and len(args) == 7:
        ident, micros, days, unscaled, scale, raw, op = args
        row = json.dumps({
            "id": int(ident),
            "at": sluice.timestamp_micros(int(micros)),
            "local": sluice.timestamp_ntz_micros(int(micros)),
            "day": sluice.date_days(int(days)),
            "amount": sluice.decimal(int(unscaled), int(scale)),
            "raw": sluice.hex_bytes(bytes.fromhex("" if raw == "-" else raw)),
        })
        if op not in ("upsert", "delete"):
            raise ValueError(f"unknown op {op!r}")
        (sluice.upsert_json if op == "upsert" else sluice.delete_json)("typed", ["id"], [row])
        return ""
    if cmd == "loop":
        n = 0
        while True:
            n += 1
    if cmd == "alloc":
        blocks = []
        while True:
            blocks.append(bytearray(b"\x01" * (1 << 20)))
    if cmd == "flood-log":
        while True:
            sluice.log("flooding the batch log")
    if cmd == "flood-output":
        while True:
            sluice.append_json("hostile", ['{"flood":1}'])
    if cmd == "panic":
        raise RuntimeError("sink panicked on purpose")
    raise ValueError("unknown command")


def fill(path: str, size: int) -> int:
    block = bytes(64 * 1024)
    written = 0
    with open(path, "wb") as f:
        while written < size:
            n = min(size - written, len(block))
            f.write(block[:n])
            f.flush()  # each write reaches /staging (and its quota) now
            written += n
    return written


class Handler(exports.Handler):
    def for_each_batch(self, batch, stream):
        started = time.monotonic_ns()
        while (chunk := stream.next_chunk()) is not None:
            rows = []
            for record in sluice.chunk_records(batch, chunk):
                line = (record.value or b"").decode("utf-8", "replace")
                try:
                    ok, result = True, run(line, started)
                except (OSError, ValueError) as e:
                    ok, result = False, f"{type(e).__name__}: {e}"
                rows.append(json.dumps({"cmd": line, "ok": ok, "result": result}))
            if rows:
                sluice.append_json("probe", rows)
