//! The output digest: SHA-256 over the staged operations in order, each
//! field length-prefixed so no two different outputs encode the same.
//!
//! Hashing a batch's output (tens of megabytes) took ~15 ms on the thread
//! running the sink. So the digest is computed as operations are staged, and
//! from the first large one on, on a thread of its own: the sink goes on
//! while its earlier output is hashed. The bytes hashed are the same either
//! way, so is the digest.

use super::{StagedOp, StagedRows, WriteMode};
use arrow_buffer::Buffer;
use sha2::{Digest as _, Sha256};
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

/// Operations at least this big move the hashing to its own thread.
const BACKGROUND_FROM_BYTES: usize = 1 << 20;

/// An operation's rows, as the hashing thread holds them: Arrow streams are
/// shared, JSON lines copied (a copy costs a fraction of hashing them).
enum Rows {
    Copied(Vec<u8>),
    Shared(Buffer),
}

impl Rows {
    fn bytes(&self) -> &[u8] {
        match self {
            Rows::Copied(b) => b,
            Rows::Shared(b) => b.as_slice(),
        }
    }
}

/// One operation, ready to hash: everything before the rows, then the rows.
struct Part {
    head: Vec<u8>,
    rows: Rows,
}

enum State {
    Inline(Sha256),
    Background { parts: Sender<Part>, hashed: JoinHandle<Sha256> },
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
    pub(crate) fn add(&mut self, op: &StagedOp) {
        let head = head(op);
        let bytes = op.rows.bytes();
        if let State::Inline(h) = &mut self.0
            && bytes.len() < BACKGROUND_FROM_BYTES
        {
            update(h, &head, bytes);
            return;
        }
        if let State::Inline(h) = &mut self.0 {
            // The state so far goes to the thread once it runs; without a
            // thread, hashing goes on here.
            let (state, received_state) = channel::<Sha256>();
            let (parts, received) = channel::<Part>();
            let spawned = std::thread::Builder::new().name("sluice-digest".into()).spawn(move || {
                let mut h = received_state.recv().unwrap_or_default();
                for part in received {
                    update(&mut h, &part.head, part.rows.bytes());
                }
                h
            });
            let Ok(hashed) = spawned else {
                update(h, &head, bytes);
                return;
            };
            let _ = state.send(std::mem::take(h));
            self.0 = State::Background { parts, hashed };
        }
        let State::Background { parts, .. } = &self.0 else { unreachable!("moved to the background above") };
        let rows = match &op.rows {
            StagedRows::JsonLines(b) => Rows::Copied(b.clone()),
            StagedRows::ArrowIpc(a) => Rows::Shared(a.buffer().clone()),
        };
        parts.send(Part { head, rows }).expect("the hashing thread runs until the sender is dropped");
    }

    /// The hex digest of every operation added.
    pub(crate) fn finish(self) -> String {
        let h = match self.0 {
            State::Inline(h) => h,
            State::Background { parts, hashed } => {
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
fn head(op: &StagedOp) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::new();
    field(&mut out, op.table.as_bytes());
    match &op.mode {
        WriteMode::Append => out.push(0),
        WriteMode::Upsert { keys } => {
            out.push(1);
            out.extend_from_slice(&(keys.len() as u64).to_be_bytes());
            keys.iter().for_each(|k| field(&mut out, k.as_bytes()));
        }
    }
    out.push(op.rows.format() as u8);
    out
}
