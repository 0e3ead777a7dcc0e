//! Private scratch directories: the sink's `/staging`.
//!
//! Guarantee: every batch attempt gets a directory that did not exist before
//! (created with `mkdir`, never reused), so two batches, or two attempts of
//! one batch, running at the same time never share a file. The sink sees the
//! directory as its only preopen; all host-side access to it goes through a
//! cap-std [`Dir`], so a symlink planted by the sink cannot lead the host
//! outside either.
//!
//! ```text
//!   <root>/live/<pipeline>.b<batch>.a<attempt>.<pid>.<seq>    while running
//!        ├── (success) ──► removed
//!        └── (failure) ──► <root>/failed/<same name>          newest `keep_failed` kept
//! ```
//!
//! Clean-up never fails a batch and never recurses: [`remove_tree`] flattens
//! a tree of any depth holding at most three descriptors, so a sink's tree
//! 20 000 directories deep goes as easily as a flat one, and its cost is
//! bounded by the entries the sink could create (`limits.staging_files`).
//! A directory that still cannot be removed (a disk error) is reported as
//! a warning and left for a later prune; it never turns a successful batch
//! into a failed one, and never replaces a failed batch's own error.

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where scratch directories live, and how many failed ones are kept.
#[derive(Debug)]
pub struct ScratchRoot {
    root: PathBuf,
    keep_failed: usize,
    seq: AtomicU64,
}

impl ScratchRoot {
    /// Use `root` (created if missing) for scratch directories, keeping the
    /// newest `keep_failed` directories of failed attempts.
    pub fn new(root: impl Into<PathBuf>, keep_failed: usize) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("live"))?;
        std::fs::create_dir_all(root.join("failed"))?;
        Ok(Self { root, keep_failed, seq: AtomicU64::new(0) })
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A fresh, empty directory for one batch attempt.
    pub(crate) fn create(&self, pipeline_id: &str, batch_id: u64, attempt: u32) -> io::Result<ScratchDir> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{pipeline_id}.b{batch_id}.a{attempt}.{}.{seq}", std::process::id());
        let path = self.root.join("live").join(&name);
        // `create_dir`, not `create_dir_all`: an existing directory is an
        // error, so a directory is never shared.
        std::fs::create_dir(&path)?;
        let dir = Dir::open_ambient_dir(&path, ambient_authority())?;
        Ok(ScratchDir { name, path, dir, failed_root: self.root.join("failed"), keep_failed: self.keep_failed })
    }

    /// The kept directories of failed attempts, oldest first.
    pub fn failed(&self) -> io::Result<Vec<PathBuf>> {
        list_by_age(&self.root.join("failed"))
    }
}

/// One attempt's `/staging`.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    name: String,
    path: PathBuf,
    dir: Dir,
    failed_root: PathBuf,
    keep_failed: usize,
}

impl ScratchDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Capability handle: opens nothing outside the directory.
    pub(crate) fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The batch succeeded: delete everything. What cannot be deleted is
    /// moved under `failed/` (a later prune tries again) with a warning.
    pub(crate) fn remove(self) {
        drop(self.dir);
        if let Err(e) = remove_tree(&self.path) {
            let parked = self.failed_root.join(format!("{}.unremovable", self.name));
            let moved = std::fs::rename(&self.path, &parked).map(|()| format!("moved to {}", parked.display()));
            let now = moved.unwrap_or_else(|e| format!("left in place ({e})"));
            eprintln!("sluice: warning: cannot remove the scratch directory {}: {e}; {now}", self.path.display());
        }
    }

    /// The batch failed: keep the directory for a post-mortem, then drop the
    /// oldest kept ones beyond the bound. Returns where it was kept, if it
    /// was; trouble here is a warning, never the batch's error.
    pub(crate) fn keep(self) -> Option<PathBuf> {
        drop(self.dir);
        let kept = self.failed_root.join(&self.name);
        let kept = if self.keep_failed == 0 {
            None
        } else {
            match std::fs::rename(&self.path, &kept) {
                Ok(()) => Some(kept),
                Err(e) => {
                    eprintln!("sluice: warning: cannot keep {} under {}: {e}; removing it", self.path.display(), self.failed_root.display());
                    None
                }
            }
        };
        if kept.is_none() {
            if let Err(e) = remove_tree(&self.path) {
                eprintln!("sluice: warning: cannot remove the scratch directory {}: {e}", self.path.display());
            }
        }
        prune(&self.failed_root, self.keep_failed, kept.as_deref());
        kept
    }
}

/// Remove the oldest kept directories beyond `keep`, never `newest` (the
/// one just kept: modification times are coarse, so it may tie with older
/// ones). Best effort: one that cannot be removed is skipped with a
/// warning, and tried again next time.
fn prune(failed_root: &Path, keep: usize, newest: Option<&Path>) {
    let mut all = match list_by_age(failed_root) {
        Ok(all) => all,
        Err(e) => return eprintln!("sluice: warning: cannot list {}: {e}", failed_root.display()),
    };
    if let Some(newest) = newest {
        all.retain(|p| p != newest);
        all.push(newest.to_owned());
    }
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        // Another process may prune the same directory: not an error.
        match remove_tree(old) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                eprintln!("sluice: warning: cannot remove the kept scratch directory {}: {e}", old.display());
            }
            _ => {}
        }
    }
}

/// Remove the directory `path` and everything in it, without recursion and
/// holding at most three descriptors, whatever the tree's depth.
///
/// Every directory found directly under `path` is emptied by renaming its
/// entries up into `path` (under fresh names), then removed; files and
/// links are unlinked; repeat until `path` is empty. Each entry is renamed
/// at most once and removed once, so the work is linear in the entries.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    // Most batches leave few files; an empty directory needs one rmdir.
    if std::fs::remove_dir(path).is_ok() {
        return Ok(());
    }
    let root = Dir::open_ambient_dir(path, ambient_authority())?;
    let mut fresh = 0u64;
    loop {
        let mut round = Vec::new();
        for entry in root.entries()? {
            let entry = entry?;
            round.push((entry.file_name(), entry.file_type()?.is_dir()));
        }
        if round.is_empty() {
            break;
        }
        for (name, is_dir) in round {
            if !is_dir {
                root.remove_file(&name)?;
                continue;
            }
            let sub = root.open_dir(&name)?;
            let children = sub.entries()?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>()?;
            for child in children {
                let target = loop {
                    fresh += 1;
                    let candidate = format!(".sluice-rm-{fresh}");
                    if root.symlink_metadata(&candidate).is_err() {
                        break candidate;
                    }
                };
                sub.rename(&child, &root, &target)?;
            }
            drop(sub);
            root.remove_dir(&name)?;
        }
    }
    drop(root);
    std::fs::remove_dir(path)
}

fn list_by_age(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // A directory kept by a concurrent attempt may vanish under us.
        let Ok(meta) = entry.metadata() else { continue };
        entries.push((meta.modified()?, entry.file_name(), entry.path()));
    }
    entries.sort();
    Ok(entries.into_iter().map(|(_, _, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_batch_and_attempt_get_distinct_fresh_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ScratchRoot::new(tmp.path(), 2).unwrap();
        let a = root.create("p", 1, 1).unwrap();
        let b = root.create("p", 1, 1).unwrap();
        assert_ne!(a.path(), b.path());
        a.dir().write("f", b"a").unwrap();
        assert!(!b.dir().exists("f"));
        a.remove();
        b.remove();
        assert_eq!(std::fs::read_dir(tmp.path().join("live")).unwrap().count(), 0);
    }

    #[test]
    fn failed_dirs_are_kept_up_to_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ScratchRoot::new(tmp.path(), 2).unwrap();
        let mut kept = Vec::new();
        for batch in 0..4 {
            let d = root.create("p", batch, 1).unwrap();
            d.dir().write("evidence", batch.to_string()).unwrap();
            kept.push(d.keep().unwrap());
        }
        let left = root.failed().unwrap();
        assert_eq!(left.len(), 2);
        for path in &left {
            assert!(kept[2..].contains(path), "{path:?} should be one of the newest two");
        }
    }

    /// A chain of `depth` directories under `dir/top`, built the way a sink
    /// can, with paths two components long: a fresh directory, the chain
    /// renamed into it, the fresh one renamed to the chain's name.
    fn deep_chain(dir: &Path, depth: usize) {
        std::fs::create_dir(dir.join("top")).unwrap();
        for _ in 1..depth {
            std::fs::create_dir(dir.join("n")).unwrap();
            std::fs::rename(dir.join("top"), dir.join("n/top")).unwrap();
            std::fs::rename(dir.join("n"), dir.join("top")).unwrap();
        }
    }

    #[test]
    fn a_tree_20000_deep_is_removed_with_few_descriptors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ScratchRoot::new(tmp.path(), 2).unwrap();
        let d = root.create("p", 1, 1).unwrap();
        deep_chain(d.path(), 20_000);
        d.dir().write("top/file", b"x").unwrap();
        // std's remove_dir_all holds a descriptor per level, so a tree this
        // deep takes 20 000 at once (the process limit here); the
        // flattening removal holds three.
        let path = d.path().to_owned();
        let started = std::time::Instant::now();
        d.remove();
        assert!(!path.exists(), "the deep tree is gone");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
        assert_eq!(std::fs::read_dir(tmp.path().join("failed")).unwrap().count(), 0, "nothing parked");
    }

    #[test]
    fn remove_tree_handles_files_links_and_wide_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("t");
        std::fs::create_dir_all(t.join("a/b/c")).unwrap();
        for i in 0..1000 {
            std::fs::write(t.join(format!("a/b/f{i}")), b"").unwrap();
        }
        std::fs::write(t.join(".sluice-rm-1"), b"a name the removal would pick").unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"keep me").unwrap();
        std::os::unix::fs::symlink(&outside, t.join("a/escape")).unwrap();
        std::os::unix::fs::symlink("a", t.join("loop")).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.join("precious").exists(), "a symlink is unlinked, never followed");
    }

    #[test]
    fn an_unremovable_kept_entry_never_fails_a_later_keep() {
        let tmp = tempfile::tempdir().unwrap();
        let root = ScratchRoot::new(tmp.path(), 1).unwrap();
        // The oldest entry under failed/ is one no tree removal can remove
        // (a file: opening it as a directory fails). std's remove_dir_all
        // failed the same way on a tree too deep for it.
        std::fs::write(tmp.path().join("failed/unremovable"), b"").unwrap();
        for batch in 0..3 {
            let d = root.create("p", batch, 1).unwrap();
            let kept = d.keep().expect("a failed prune never fails keeping this attempt's directory");
            assert!(kept.is_dir());
        }
        let left = root.failed().unwrap();
        assert_eq!(left.len(), 2, "the newest one kept, plus the one that cannot go: {left:?}");
        assert!(left.iter().any(|p| p.ends_with("unremovable")));
    }
}
