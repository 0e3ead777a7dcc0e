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

    /// The batch succeeded: delete everything.
    pub(crate) fn remove(self) -> io::Result<()> {
        drop(self.dir);
        // Most batches leave few files; an empty directory needs one rmdir.
        std::fs::remove_dir(&self.path).or_else(|_| std::fs::remove_dir_all(&self.path))
    }

    /// The batch failed: keep the directory for a post-mortem, then drop the
    /// oldest kept ones beyond the bound. Returns where it was kept.
    pub(crate) fn keep(self) -> io::Result<Option<PathBuf>> {
        drop(self.dir);
        if self.keep_failed == 0 {
            std::fs::remove_dir_all(&self.path)?;
            return Ok(None);
        }
        let kept = self.failed_root.join(&self.name);
        std::fs::rename(&self.path, &kept)?;
        let all = list_by_age(&self.failed_root)?;
        for old in all.iter().take(all.len().saturating_sub(self.keep_failed)) {
            // Another process may prune the same directory: not an error.
            match std::fs::remove_dir_all(old) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(Some(kept))
    }
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
        a.remove().unwrap();
        b.remove().unwrap();
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
            kept.push(d.keep().unwrap().unwrap());
        }
        let left = root.failed().unwrap();
        assert_eq!(left.len(), 2);
        for path in &left {
            assert!(kept[2..].contains(path), "{path:?} should be one of the newest two");
        }
    }
}
