//! Named points in a batch's life where the crash tests stop the process.
//!
//! With `SLUICE_FAILPOINT=<name>[:<n>]` in the environment, the `n`-th time
//! (default: first) the process reaches `<name>` it prints
//! `sluice: failpoint <name> reached` to stderr and then waits forever, so
//! the test, reading stderr, can `kill -9` it at exactly that point. With
//! `SLUICE_FAILPOINT_STOP=1` as well, the process stops itself with SIGSTOP
//! there instead, and goes on when sent SIGCONT: the zombie tests pause an
//! owner at an exact step, past its lease, and wake it up. Several
//! points, comma-separated, stop each thread that reaches one. Without the
//! variable a failpoint is a look at an empty list.
//!
//! The points, in batch order: `after-offsets-log`, `in-sink`,
//! `before-table-commit` (each table, after the ownership checks),
//! `after-schema-change` (a table's added columns committed, its batch not),
//! `between-table-commits`, `after-table-commits`, `in-checkpoint-write`
//! (after the temporary file is written, before it is linked or renamed
//! into place; before the PUT in object storage).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    nth: u64,
    seen: AtomicU64,
}

/// The points armed by `SLUICE_FAILPOINT`: comma-separated, so a test can
/// stop both threads of an overlapped batch at once.
fn armed() -> &'static [Armed] {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let Ok(spec) = std::env::var("SLUICE_FAILPOINT") else { return Vec::new() };
        spec.split(',')
            .map(|point| match point.split_once(':') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
                None => (point.to_owned(), 1),
            })
            .map(|(name, nth)| Armed { name, nth, seen: AtomicU64::new(0) })
            .collect()
    })
}

/// Mark that the process reached `name`; stops here if it is armed.
pub(crate) fn hit(name: &str) {
    for armed in armed().iter().filter(|a| a.name == name) {
        if armed.seen.fetch_add(1, Ordering::Relaxed) + 1 == armed.nth {
            eprintln!("sluice: failpoint {name} reached");
            if std::env::var_os("SLUICE_FAILPOINT_STOP").is_some() {
                // Stops every thread; SIGCONT resumes here.
                let _ = signal_hook::low_level::raise(signal_hook::consts::SIGSTOP);
                return;
            }
            loop {
                std::thread::park();
            }
        }
    }
}
