//! Named points in a batch's life where the crash tests stop the process.
//!
//! With `SLUICE_FAILPOINT=<name>[:<n>]` in the environment, the `n`-th time
//! (default: first) the process reaches `<name>` it prints
//! `sluice: failpoint <name> reached` to stderr and then waits forever, so
//! the test, reading stderr, can `kill -9` it at exactly that point. Without
//! the variable a failpoint is one relaxed atomic load.
//!
//! The points, in batch order: `after-offsets-log`, `in-sink`,
//! `between-table-commits`, `after-table-commits`, `in-checkpoint-write`
//! (after the temporary file is written, before the rename).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    nth: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("SLUICE_FAILPOINT").ok()?;
            let (name, nth) = match spec.split_once(':') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Armed { name, nth, seen: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Mark that the process reached `name`; stops here if it is armed.
pub(crate) fn hit(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name || armed.seen.fetch_add(1, Ordering::Relaxed) + 1 != armed.nth {
        return;
    }
    eprintln!("sluice: failpoint {name} reached");
    loop {
        std::thread::park();
    }
}
