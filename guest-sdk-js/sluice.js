// Helpers for writing a sluice sink in JavaScript (built with componentize-js).
//
// componentize-js binds the WIT imports as ES modules ('sluice:sink/output@0.2.0',
// ...) and calls the object the sink exports as `handler`. This module sits on
// top of them the way the Rust `sluice-sdk` sits on wit-bindgen: it walks the
// columnar record chunks into records, writes files under /staging through
// wasi:filesystem, wraps staging and logging, and builds the WIT sink-error a
// sink throws.
//
// 64-bit integers (offsets, timestamps) arrive as BigInt; emit them into JSON
// with `int64` so they keep every digit.

import { stage } from 'sluice:sink/output@0.2.0';
import { log as witLog } from 'sluice:sink/log@0.2.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

const utf8 = new TextDecoder('utf-8');
const encoder = new TextEncoder();

/** Every record of the batch, chunk after chunk, in delivery order. */
export function* records(batch, stream) {
  for (let chunk = stream.nextChunk(); chunk !== undefined; chunk = stream.nextChunk()) {
    yield* chunkRecords(batch, chunk);
  }
}

/**
 * The records of one chunk. Layout (wit/v0.2.0/types.wit, `record-chunk`): each
 * record's key, value, then header keys and values back to back in `data`;
 * a length of -1 is a null; `headerCounts` headers per record.
 * `key`, `value` and header values are Uint8Array views into `data` (or null).
 */
export function* chunkRecords(batch, chunk) {
  const data = chunk.data;
  let pos = 0;
  let header = 0;
  const take = (len) => {
    if (len < 0) return null;
    const piece = data.subarray(pos, pos + len);
    pos += len;
    return piece;
  };
  for (let i = 0; i < chunk.sources.length; i++) {
    const key = take(chunk.keyLens[i]);
    const value = take(chunk.valueLens[i]);
    const headers = [];
    for (let h = 0; h < chunk.headerCounts[i]; h++, header++) {
      const name = utf8.decode(take(chunk.headerKeyLens[header]));
      headers.push([name, take(chunk.headerValueLens[header])]);
    }
    const range = batch.ranges[chunk.sources[i]];
    yield {
      topic: range.topic,
      partition: range.partition,
      offset: chunk.offsets[i],
      timestampMs: chunk.timestampsMs[i],
      key,
      value,
      headers,
    };
  }
}

/** A 64-bit integer (BigInt or string of digits) as an exact JSON number. */
export function int64(n) {
  return JSON.rawJSON(String(n));
}

/** The error to throw when the records are bad: retrying cannot help. */
export function invalidInput(message) {
  return { tag: 'invalid-input', val: message };
}

/** The error to throw for any other failure (the host may retry). */
export function failed(message) {
  return { tag: 'failed', val: message };
}

function stageOrFail(table, mode, rows) {
  try {
    stage(table, mode, rows);
  } catch (e) {
    // Same wording as the Rust SDK: a staging error fails the batch.
    const why = e && e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e);
    throw failed(`staging output: ${why}`);
  }
}

export const appendJson = (table, rows) => stageOrFail(table, { tag: 'append' }, { tag: 'json', val: rows });
export const upsertJson = (table, keys, rows) => stageOrFail(table, { tag: 'upsert', val: keys }, { tag: 'json', val: rows });
/** Delete the rows of `table` whose `keys` columns equal those of `rows`
 * (JSON objects; other members are ignored). Upserts and deletes of one
 * table in one batch apply in staging order, the last for a key winning. */
export const deleteJson = (table, keys, rows) => stageOrFail(table, { tag: 'delete', val: keys }, { tag: 'json', val: rows });
export const deleteFile = (table, keys, path, format = 'json-lines') =>
  stageOrFail(table, { tag: 'delete', val: keys }, { tag: 'file', val: [path, format] });
export const appendFile = (table, path, format = 'json-lines') =>
  stageOrFail(table, { tag: 'append' }, { tag: 'file', val: [path, format] });
export const upsertFile = (table, keys, path, format = 'json-lines') =>
  stageOrFail(table, { tag: 'upsert', val: keys }, { tag: 'file', val: [path, format] });

// The canonical text of values JSON has no type for: the same as the Rust
// SDK's `sluice_sdk::values` and the Python SDK's, byte for byte, so the
// same rows give the same output digest in every language. Integers are
// BigInts (or numbers, made BigInts): microseconds overflow a double's
// exact range.

const floorDiv = (a, b) => (a < 0n ? -((-a + b - 1n) / b) : a / b);
const pad = (n, width) => String(n).padStart(width, '0');

/** A `date` value from days since 1970-01-01: `1969-12-31`. */
export function dateDays(days) {
  const z = BigInt(days) + 719468n;
  const era = floorDiv(z, 146097n);
  const doe = z - era * 146097n;
  const yoe = (doe - doe / 1460n + doe / 36524n - doe / 146096n) / 365n;
  const doy = doe - (365n * yoe + yoe / 4n - yoe / 100n);
  const mp = (5n * doy + 2n) / 153n;
  const day = doy - (153n * mp + 2n) / 5n + 1n;
  const month = mp < 10n ? mp + 3n : mp - 9n;
  const year = yoe + era * 400n + (month <= 2n ? 1n : 0n);
  return `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)}`;
}

/** A `timestamp_ntz` value: `1969-12-31T23:59:59.999999`. */
export function timestampNtzMicros(micros) {
  const us = BigInt(micros);
  const days = floorDiv(us, 86400000000n);
  const ofDay = us - days * 86400000000n;
  const secs = ofDay / 1000000n;
  const frac = ofDay % 1000000n;
  return `${dateDays(days)}T${pad(secs / 3600n, 2)}:${pad((secs / 60n) % 60n, 2)}:${pad(secs % 60n, 2)}.${pad(frac, 6)}`;
}

/** A `timestamp` value: `1969-12-31T23:59:59.999999Z`. */
export const timestampMicros = (micros) => `${timestampNtzMicros(micros)}Z`;

/** A `timestamp` value from a `Date` (milliseconds). */
export const timestamp = (date) => timestampMicros(BigInt(date.getTime()) * 1000n);

/** A `decimal(p, scale)` value from its unscaled integer: `decimal(-5n, 2)` is `-0.05`. */
export function decimal(unscaled, scale) {
  const u = BigInt(unscaled);
  const sign = u < 0n ? '-' : '';
  const digits = String(u < 0n ? -u : u);
  if (scale === 0) return sign + digits;
  const padded = digits.padStart(scale + 1, '0');
  return `${sign}${padded.slice(0, -scale)}.${padded.slice(-scale)}`;
}

/** A `binary` value (a Uint8Array): lowercase hex. */
export const hexBytes = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/** One line in the batch log; field values are made strings. */
export function log(message, fields = {}, level = 'info') {
  witLog(level, message, Object.entries(fields).map(([k, v]) => [k, String(v)]));
}

/** The `/staging` directory: the only preopen a sink gets. */
export function staging() {
  const found = getDirectories().find(([, path]) => path === '/staging');
  if (!found) throw failed('no /staging preopen');
  return found[0];
}

/** `path` relative to /staging: absolute paths must start with /staging/. */
function relative(path) {
  if (path.startsWith('/staging/')) return path.slice('/staging/'.length);
  return path;
}

/**
 * Write `text` (a string or Uint8Array) to a file under /staging, replacing
 * it. Throws the WASI error code (a string such as 'not-permitted') as
 * `{ payload }`, like every wasi:filesystem call.
 */
export function writeFile(path, text) {
  const bytes = typeof text === 'string' ? encoder.encode(text) : text;
  const file = staging().openAt({}, relative(path), { create: true, truncate: true }, { write: true });
  const out = file.writeViaStream(0n);
  try {
    // A single blocking write takes at most 4096 bytes (wasi:io streams).
    for (let at = 0; at < bytes.length; at += 4096) {
      out.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
    }
  } finally {
    out[Symbol.dispose]?.();
    file[Symbol.dispose]?.();
  }
}

/** Read a whole file under /staging (or the path as given) as bytes. */
export function readFile(path) {
  const file = staging().openAt({}, relative(path), {}, { read: true });
  const input = file.readViaStream(0n);
  const parts = [];
  try {
    for (;;) {
      let piece;
      try {
        piece = input.blockingRead(65536n);
      } catch (e) {
        if (e && e.payload && e.payload.tag === 'closed') break;
        throw e;
      }
      parts.push(piece);
    }
  } finally {
    input[Symbol.dispose]?.();
    file[Symbol.dispose]?.();
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return all;
}
