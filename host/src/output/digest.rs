//! The output digest: SHA-256 over the staged operations in order, each
//! field length-prefixed so no two different outputs encode the same.
//!
//! Hashing a batch's output (tens of megabytes) took ~15 ms on the thread
//! running the sink. So the digest is computed as operations are staged, and
//! from the first large one on, on a thread of its own: the sink goes on
//! while its earlier output is hashed. The bytes hashed are the same either
//! way, so is the digest. What waits for the thread is bounded: large
//! operations are shared with it, small ones gathered into parts of a MiB,
//! at most a few parts in flight.

use super::{FileFormat, WriteMode};
use arrow_buffer::Buffer;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Operations at least this big move the hashing to its own thread.
const BACKGROUND_FROM_BYTES: usize = 1 << 20;
/// Small operations staged once hashing moved are gathered, already
/// encoded, into one part of about this size: one message per MiB rather
/// than one per call.
const PART_BYTES: usize = 1 << 20;
/// Parts in flight to the hashing thread. Bounded, so a sink staging faster
/// than it is hashed waits instead of piling up copies.
const PARTS_IN_FLIGHT: usize = 4;

/// An operation's rows, as given to the digest: borrowed (copied if they
/// must wait for the hashing thread) or shared.
pub(crate) enum Rows<'a> {
    Copied(&'a [u8]),
    Json(Bytes),
    Arrow(Buffer),
}

impl Rows<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Rows::Copied(b) => b,
            Rows::Json(b) => b,
            Rows::Arrow(b) => b.as_slice(),
        }
    }
}

/// What the hashing thread hashes: bytes already laid out as the format
/// wants them, or one operation's head followed by its shared rows.
enum Part {
    Encoded(Vec<u8>),
    Shared { head: Vec<u8>, rows: Shared },
}

enum Shared {
    Json(Bytes),
    Arrow(Buffer),
}

enum State {
    Inline(Sha256),
    Background { parts: SyncSender<Part>, pending: Vec<u8>, hashed: JoinHandle<Sha256> },
}

/// The digest of a batch's output, fed one operation at a time.
pub(crate) struct OutputDigest(State);

impl OutputDigest {
    pub(crate) fn new() -> Self {
        let mut h = Sha256::new();
        h.update(b"sluice-output-v1\0");
        Self(State::Inline(h))
    }

    /// Add the next operation.
    pub(crate) fn add(&mut self, table: &str, mode: &WriteMode, format: FileFormat, rows: Rows<'_>) {
        let head = head(table, mode, format);
        let bytes = rows.bytes();
        if let State::Inline(h) = &mut self.0
            && bytes.len() < BACKGROUND_FROM_BYTES
        {
            update(h, &head, bytes);
            return;
        }
        if let State::Inline(h) = &mut self.0 {
            // The state so far goes to the thread once it runs; without a
            // thread, hashing goes on here.
            let (state, received_state) = sync_channel::<Sha256>(1);
            let (parts, received) = sync_channel::<Part>(PARTS_IN_FLIGHT);
            let spawned = std::thread::Builder::new().name("sluice-digest".into()).spawn(move || {
                let mut h = received_state.recv().unwrap_or_default();
                for part in received {
                    match part {
                        Part::Encoded(b) => h.update(&b),
                        Part::Shared { head, rows: Shared::Json(b) } => update(&mut h, &head, &b),
                        Part::Shared { head, rows: Shared::Arrow(b) } => update(&mut h, &head, b.as_slice()),
                    }
                }
                h
            });
            let Ok(hashed) = spawned else {
                update(h, &head, bytes);
                return;
            };
            let _ = state.send(std::mem::take(h));
            self.0 = State::Background { parts, pending: Vec::new(), hashed };
        }
        let State::Background { parts, pending, .. } = &mut self.0 else { unreachable!("moved to the background above") };
        let send = |parts: &SyncSender<Part>, part: Part| parts.send(part).expect("the hashing thread runs until the sender is dropped");
        let shared = match rows {
            Rows::Copied(b) if b.len() < PART_BYTES => {
                pending.extend_from_slice(&head);
                pending.extend_from_slice(&(b.len() as u64).to_be_bytes());
                pending.extend_from_slice(b);
                if pending.len() >= PART_BYTES {
                    send(parts, Part::Encoded(std::mem::take(pending)));
                }
                return;
            }
            Rows::Copied(b) => Shared::Json(Bytes::copy_from_slice(b)),
            Rows::Json(b) => Shared::Json(b),
            Rows::Arrow(b) => Shared::Arrow(b),
        };
        if !pending.is_empty() {
            send(parts, Part::Encoded(std::mem::take(pending)));
        }
        send(parts, Part::Shared { head, rows: shared });
    }

    /// The hex digest of every operation added.
    pub(crate) fn finish(self) -> String {
        let h = match self.0 {
            State::Inline(h) => h,
            State::Background { parts, pending, hashed } => {
                if !pending.is_empty() {
                    parts.send(Part::Encoded(pending)).expect("the hashing thread runs until the sender is dropped");
                }
                drop(parts);
                hashed.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
        };
        hex::encode(h.finalize())
    }
}

fn update(h: &mut Sha256, head: &[u8], rows: &[u8]) {
    h.update(head);
    h.update((rows.len() as u64).to_be_bytes());
    h.update(rows);
}

/// Table, mode and format, length-prefixed where variable.
fn head(table: &str, mode: &WriteMode, format: FileFormat) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::new();
    field(&mut out, table.as_bytes());
    match mode {
        WriteMode::Append => out.push(0),
        // 2 is new with deletes: outputs without them digest as before.
        WriteMode::Upsert { keys } | WriteMode::Delete { keys } => {
            out.push(if matches!(mode, WriteMode::Delete { .. }) { 2 } else { 1 });
            out.extend_from_slice(&(keys.len() as u64).to_be_bytes());
            keys.iter().for_each(|k| field(&mut out, k.as_bytes()));
        }
    }
    out.push(format as u8);
    out
}
