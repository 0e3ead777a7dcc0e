// The JavaScript twin of the Rust `sandbox-probe` and `hostile` guests, for
// the conformance suite (tests/it/conformance.rs): one protocol, every language.
//
// Each record's value is one command line; the sink runs it and stages one
// row {"cmd", "ok", "result"} per command to the `probe` table, one stage
// call per chunk. Errors are reported in the row (a WASI error code such as
// `not-permitted`), not thrown, so one batch can try many escapes. Every path
// is resolved against the /staging preopen, the only directory a sink has;
// `/staging/x` means `x`.
//
//   write PATH CONTENT...   ""; writes the rest of the line
//   read PATH               the file's contents
//   open PATH               the first 64 bytes
//   list PATH               sorted entry names, joined by ","
//   fill PATH BYTES         bytes written, in 64 KiB writes
//   clock                   "{wall_ns} {mono_ns} {mono_ns} {random hex}"
//                           (Date.now() has millisecond resolution)
//   prng                    Math.random() (the language's own PRNG)
//
// `typed ID MICROS DAYS UNSCALED SCALE HEX OP` upserts or deletes a row of
// table `typed` built with the SDK's value texts (HEX `-`: no bytes).
// Misbehaviours, which end the batch: loop, alloc, flood-log, flood-output
// (stages to table `hostile`), panic (an uncaught exception).

import * as sluice from '../../../guest-sdk-js/sluice.js';

const utf8 = new TextDecoder('utf-8');

function relative(path) {
  if (path === '/staging') return '.';
  return path.startsWith('/staging/') ? path.slice('/staging/'.length) : path;
}

function describe(e) {
  if (e && e.payload !== undefined) return String(e.payload.tag ?? e.payload);
  return String(e && e.message ? e.message : e);
}

function list(path) {
  const dir = sluice.staging().openAt({}, relative(path), { directory: true }, { read: true });
  const entries = dir.readDirectory();
  const names = [];
  for (let e = entries.readDirectoryEntry(); e !== undefined; e = entries.readDirectoryEntry()) names.push(e.name);
  return names.sort().join(',');
}

function fill(path, size) {
  const file = sluice.staging().openAt({}, relative(path), { create: true, truncate: true }, { write: true });
  const out = file.writeViaStream(0n);
  const block = new Uint8Array(4096);
  let written = 0;
  // 64 KiB per round, in the 4 KiB pieces a blocking write accepts.
  while (written < size) {
    const round = Math.min(size - written, 65536);
    for (let done = 0; done < round; done += 4096) out.blockingWriteAndFlush(block.subarray(0, Math.min(4096, round - done)));
    written += round;
  }
  return String(written);
}

function run(line, started) {
  const space = line.indexOf(' ');
  const cmd = space < 0 ? line : line.slice(0, space);
  const rest = space < 0 ? '' : line.slice(space + 1);
  const args = rest.split(/\s+/).filter((a) => a.length > 0);
  switch (cmd) {
    case 'write': {
      const trimmed = rest.trimStart();
      const at = trimmed.indexOf(' ');
      sluice.writeFile(relative(args[0]), at < 0 ? '' : trimmed.slice(at + 1));
      return '';
    }
    case 'read':
      return utf8.decode(sluice.readFile(relative(args[0])));
    case 'open':
      return utf8.decode(sluice.readFile(relative(args[0])).subarray(0, 64));
    case 'list':
      return list(args[0]);
    case 'fill':
      return fill(args[0], Number(args[1]));
    case 'clock': {
      const wall = BigInt(Date.now()) * 1000000n;
      const mono = [0, 1].map(() => Math.round((performance.now() - started) * 1e6));
      const random = crypto.getRandomValues(new Uint8Array(16));
      const hex = Array.from(random, (b) => b.toString(16).padStart(2, '0')).join('');
      return `${wall} ${mono[0]} ${mono[1]} ${hex}`;
    }
    case 'prng':
      return String(Math.random());
    case 'loop': {
      let n = 0;
      for (;;) n++;
    }
    case 'alloc': {
      const blocks = [];
      for (;;) blocks.push(new Uint8Array(1 << 20).fill(1));
    }
    case 'flood-log':
      for (;;) sluice.log('flooding the batch log');
    case 'typed': {
      if (args.length !== 7) throw new Error('typed takes 7 arguments');
      const [id, micros, days, unscaled, scale, raw, op] = args;
      const bytes = Uint8Array.from(raw === '-' ? [] : raw.match(/../g) ?? [], (h) => parseInt(h, 16));
      const row = JSON.stringify({
        id: sluice.int64(id),
        at: sluice.timestampMicros(BigInt(micros)),
        local: sluice.timestampNtzMicros(BigInt(micros)),
        day: sluice.dateDays(BigInt(days)),
        amount: sluice.decimal(BigInt(unscaled), Number(scale)),
        raw: sluice.hexBytes(bytes),
      });
      if (op === 'upsert') sluice.upsertJson('typed', ['id'], [row]);
      else if (op === 'delete') sluice.deleteJson('typed', ['id'], [row]);
      else throw new Error(`unknown op ${op}`);
      return '';
    }
    case 'flood-output':
      for (;;) sluice.appendJson('hostile', ['{"flood":1}']);
    case 'panic':
      throw new Error('sink panicked on purpose');
    default:
      throw new Error('unknown command');
  }
}

export const handler = {
  forEachBatch(batch, stream) {
    const started = performance.now();
    for (let chunk = stream.nextChunk(); chunk !== undefined; chunk = stream.nextChunk()) {
      const rows = [];
      for (const record of sluice.chunkRecords(batch, chunk)) {
        const line = record.value === null ? '' : utf8.decode(record.value);
        let ok = true;
        let result;
        try {
          result = run(line, started);
        } catch (e) {
          if (line === 'panic') throw e;
          ok = false;
          result = describe(e);
        }
        rows.push(JSON.stringify({ cmd: line, ok, result }));
      }
      if (rows.length > 0) sluice.appendJson('probe', rows);
    }
  },
};
