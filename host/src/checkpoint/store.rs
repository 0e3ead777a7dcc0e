//! Where the checkpoint's files live: a local directory or an object-store
//! prefix, behind one set of operations.
//!
//! Guarantees, on both:
//! - [`Store::create`] is create-only: of two writers of `offsets/N`
//!   exactly one succeeds, the other is told (`false`) and writes nothing.
//!   Locally: a temporary file, fsynced, hard-linked to its name (the link
//!   fails if the name exists) and the directory fsynced. In an object
//!   store: a conditional PUT (`If-None-Match: *`).
//! - [`Store::overwrite`] replaces a file whole: locally by rename after
//!   fsync, remotely by one PUT (object stores never show half an object).
//! - A crash mid-write leaves the old file or the new one, never a torn one;
//!   local temporary files start with `.` and are never part of the
//!   checkpoint.

use crate::storage::blobs::Blobs;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The checkpoint's backing store.
#[derive(Debug)]
pub enum Store {
    /// A local directory.
    Local(PathBuf),
    /// An object-store prefix.
    Remote(Arc<Blobs>),
}

impl Store {
    /// How a file is named in messages: its path or its URL.
    pub fn name_of(&self, key: &str) -> PathBuf {
        match self {
            Store::Local(dir) => dir.join(key),
            Store::Remote(blobs) => PathBuf::from(blobs.url_of(key)),
        }
    }

    /// The file's bytes; `None` if there is no such file.
    pub fn read(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self {
            Store::Local(dir) => match std::fs::read(dir.join(key)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Store::Remote(blobs) => Ok(blobs.get(key)?.map(|(bytes, _)| bytes)),
        }
    }

    /// Write `key` only if it does not exist; false if it does. A log file:
    /// the crash tests stop here (`in-checkpoint-write`).
    pub fn create(&self, key: &str, bytes: &[u8]) -> io::Result<bool> {
        self.create_marked(key, bytes, true)
    }

    /// [`create`](Self::create), for files outside the logs (kept
    /// components): no failpoint.
    pub fn create_unmarked(&self, key: &str, bytes: &[u8]) -> io::Result<bool> {
        self.create_marked(key, bytes, false)
    }

    fn create_marked(&self, key: &str, bytes: &[u8], mark: bool) -> io::Result<bool> {
        let failpoint = || {
            if mark {
                crate::failpoint::hit("in-checkpoint-write");
            }
        };
        match self {
            Store::Local(dir) => {
                let path = dir.join(key);
                let tmp = write_temporary(&path, bytes)?;
                failpoint();
                let linked = std::fs::hard_link(&tmp, &path);
                std::fs::remove_file(&tmp)?;
                match linked {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                    Err(e) => return Err(e),
                }
                sync_parent(&path)?;
                Ok(true)
            }
            Store::Remote(blobs) => {
                failpoint();
                Ok(blobs.create(key, bytes)?.is_some())
            }
        }
    }

    /// Write `key`, replacing what is there.
    pub fn overwrite(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        match self {
            Store::Local(dir) => {
                let path = dir.join(key);
                let tmp = write_temporary(&path, bytes)?;
                crate::failpoint::hit("in-checkpoint-write");
                std::fs::rename(&tmp, &path)?;
                sync_parent(&path)
            }
            Store::Remote(blobs) => {
                crate::failpoint::hit("in-checkpoint-write");
                blobs.put(key, bytes)
            }
        }
    }

    /// The names of the files directly in `dir` (none if it is missing).
    /// Locally this includes leftover temporary files (names starting with `.`).
    pub fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        match self {
            Store::Local(root) => {
                let entries = match std::fs::read_dir(root.join(dir)) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                let mut names = Vec::new();
                for entry in entries {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
                Ok(names)
            }
            Store::Remote(blobs) => blobs.list(dir),
        }
    }

    /// Remove `key`; true if it was there.
    pub fn remove(&self, key: &str) -> io::Result<bool> {
        match self {
            Store::Local(dir) => match std::fs::remove_file(dir.join(key)) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
            Store::Remote(blobs) => blobs.delete(key),
        }
    }

    /// Create the directories a local checkpoint writes into.
    pub fn make_dirs(&self, dirs: &[&str]) -> io::Result<()> {
        if let Store::Local(root) = self {
            for d in dirs {
                std::fs::create_dir_all(root.join(d))?;
            }
        }
        Ok(())
    }
}

/// Write `bytes` to a fresh temporary file beside `path` and fsync it.
fn write_temporary(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let dir = path.parent().expect("checkpoint files live in a directory");
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(path.parent().expect("checkpoint files live in a directory"))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_is_create_only_and_overwrite_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::Local(tmp.path().to_owned());
        store.make_dirs(&["offsets"]).unwrap();
        assert!(store.create("offsets/0", b"first").unwrap());
        assert!(
            !store.create("offsets/0", b"second").unwrap(),
            "the second writer is told"
        );
        assert_eq!(store.read("offsets/0").unwrap().unwrap(), b"first");
        assert_eq!(
            store.list("offsets").unwrap(),
            ["0"],
            "no temporary file is left behind"
        );
        store.overwrite("offsets/0", b"third").unwrap();
        assert_eq!(store.read("offsets/0").unwrap().unwrap(), b"third");
        assert!(store.remove("offsets/0").unwrap());
        assert!(!store.remove("offsets/0").unwrap());
        assert_eq!(store.read("offsets/0").unwrap(), None);
    }
}
