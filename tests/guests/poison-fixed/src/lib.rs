//! `poison` with its poison records handled as ordinary ids (see
//! `../poison/src/sink.rs`).

const FIXED: bool = true;

include!("../../poison/src/sink.rs");
