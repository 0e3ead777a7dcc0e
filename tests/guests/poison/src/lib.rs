//! A sink with poison records on purpose: see `sink.rs`. `poison-fixed` is
//! the same sink with the bugs fixed, for replays and releases.

const FIXED: bool = false;

include!("sink.rs");
