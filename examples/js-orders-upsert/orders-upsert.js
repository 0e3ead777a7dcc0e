// Upsert JSON orders into the `orders` table through a staged file: the
// JavaScript twin of `examples/orders-upsert` (Rust), with the same output.
//
// Record values are orders such as
// {"order_id": "o-1", "customer": "c-7", "amount_cents": 1234, "status": "paid"}.
// The sink writes one JSON line per order to /staging/orders.jsonl, keeping
// only the last record of each order_id (in first-seen order), and stages an
// upsert of that file on order_id. A malformed record rejects the whole batch
// as invalid input, naming the record and what was wrong with it.
//
// The checks follow serde's in the Rust sink, so both sinks accept and reject
// the same values. JavaScript numbers are doubles, so amount_cents is read
// from its source text (JSON.parse source access) and written back as those
// digits: every 64-bit integer keeps them, and 12.0 is rejected as in Rust.

import * as sluice from '../../guest-sdk-js/sluice.js';

const STAGED_FILE = '/staging/orders.jsonl';
const STRING_FIELDS = ['order_id', 'customer', 'status'];
const INTEGER = /^-?(0|[1-9][0-9]*)$/;
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
// Fatal: invalid UTF-8 is a malformed record, as in Rust, not U+FFFD.
const utf8 = new TextDecoder('utf-8', { fatal: true });

function parse(record) {
  const invalid = (what) =>
    sluice.invalidInput(`topic ${record.topic} partition ${record.partition} offset ${record.offset}: ${what}`);
  if (record.value === null) throw invalid('null value (a tombstone) is not an order');

  // The source text of each number, by the object holding it.
  const numberSource = new Map();
  let order;
  try {
    order = JSON.parse(utf8.decode(record.value), function (key, value, context) {
      if (key === 'amount_cents' && typeof value === 'number') numberSource.set(this, context.source);
      return value;
    });
  } catch (e) {
    throw invalid(`not an order: ${e.message ?? e}`);
  }
  if (order === null || typeof order !== 'object' || Array.isArray(order)) {
    throw invalid(`not an order: expected a JSON object, got ${order === null ? 'null' : Array.isArray(order) ? 'array' : typeof order}`);
  }
  for (const field of [...STRING_FIELDS, 'amount_cents']) {
    if (!Object.hasOwn(order, field)) throw invalid(`not an order: missing field \`${field}\``);
  }
  for (const field of STRING_FIELDS) {
    // Lone surrogates (\ud800) are valid to JSON.parse but not UTF-8.
    if (typeof order[field] !== 'string' || !order[field].isWellFormed()) {
      throw invalid(`not an order: \`${field}\` is not a string`);
    }
  }
  const amount = numberSource.get(order);
  if (amount === undefined || !INTEGER.test(amount) || !fitsI64(amount)) {
    throw invalid('not an order: `amount_cents` is not a 64-bit integer');
  }
  // The row as a JSON line, built by hand: the 64-bit integers go in as
  // their exact digits (BigInt and source text), with no double in between.
  // join() makes one flat string; `+` would keep a rope of pieces per row.
  const line = [
    '{"order_id":', JSON.stringify(order.order_id),
    ',"customer":', JSON.stringify(order.customer),
    ',"amount_cents":', amount === '-0' ? '0' : amount,
    ',"status":', JSON.stringify(order.status),
    ',"updated_at_ms":', String(record.timestampMs),
    ',"source_offset":', String(record.offset), '}',
  ].join('');
  return { orderId: order.order_id, line };
}

/** Whether an integer literal fits in i64 (BigInt only near the edges). */
function fitsI64(digits) {
  const len = digits.length - (digits[0] === '-' ? 1 : 0);
  if (len < 19) return true;
  const n = BigInt(digits);
  return n >= I64_MIN && n <= I64_MAX;
}

export const handler = {
  forEachBatch(batch, stream) {
    const rows = new Map(); // order_id -> JSON line; a Map keeps first-insertion order
    let records = 0;
    for (const record of sluice.records(batch, stream)) {
      records++;
      const { orderId, line } = parse(record);
      rows.set(orderId, line);
    }

    if (rows.size > 0) {
      const text = [...rows.values(), ''].join('\n');
      sluice.writeFile(STAGED_FILE, text);
      sluice.upsertFile('orders', ['order_id'], STAGED_FILE);
    }

    sluice.log('staged orders upsert', { batch_id: batch.batchId, records, orders: rows.size });
  },
};
