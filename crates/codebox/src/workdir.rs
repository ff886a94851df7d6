//! Private host directories behind contexts' `/home/user` and `/tmp`, recycled.
//!
//! Making and removing a directory is most of a small context's start on a filesystem that
//! discards freed blocks synchronously (ext4 mounted with `discard`, common on cloud disks):
//! about 0.5 ms of a 0.8 ms JavaScript start here. So a directory a context is done with is
//! emptied and renamed to a new unique name, and the next context takes it. The rename means
//! a stale handle to the old path (a cloned [`HomeDir`](crate::HomeDir)) finds nothing there,
//! rather than another context's files. A directory that cannot be emptied or renamed is
//! removed instead.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Most emptied directories kept for reuse, per pool. They stay behind if the process ends
/// without dropping its engine, so keep it small.
const MAX_FREE: usize = 16;

/// Emptied directories of one kind waiting for their next context.
#[derive(Debug)]
pub(crate) struct DirPool {
    prefix: &'static str,
    /// An entry kept across reuse; whoever takes the directory checks it before use.
    keep: Option<&'static str>,
    free: Mutex<Vec<PathBuf>>,
}

/// A directory taken from a pool; emptied and given back when dropped.
#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
    pool: Arc<DirPool>,
}

impl DirPool {
    /// A pool of directories named `<prefix><random>` in the system's temporary directory.
    /// Directories left in the pools of processes that have ended are removed now.
    pub(crate) fn new(prefix: &'static str, keep: Option<&'static str>) -> Arc<DirPool> {
        sweep(&std::env::temp_dir(), prefix);
        Arc::new(DirPool {
            prefix,
            keep,
            free: Mutex::new(Vec::new()),
        })
    }

    /// A private directory, empty apart from the pool's `keep` entry left by its last use.
    pub(crate) fn take(self: &Arc<Self>) -> io::Result<WorkDir> {
        let reused = self.lock().pop();
        let path = match reused {
            Some(path) => path,
            None => tempfile::Builder::new()
                .prefix(self.prefix)
                .tempdir()?
                .keep(),
        };
        Ok(WorkDir {
            path,
            pool: self.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        crate::sync::lock(&self.free)
    }
}

impl Drop for DirPool {
    fn drop(&mut self) {
        for path in self.lock().drain(..) {
            let _ = fs::remove_dir_all(path);
        }
    }
}

impl WorkDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Empties the directory and moves it to a new name; the new path.
    fn recycle(&self) -> io::Result<PathBuf> {
        if self.pool.lock().len() >= MAX_FREE {
            return Err(io::Error::other("the pool is full"));
        }
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if self.pool.keep.is_some_and(|keep| entry.file_name() == keep) {
                continue;
            }
            // `file_type` does not follow symlinks: a link is removed, never its target.
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        let parent = self.path.parent().unwrap_or(Path::new("/"));
        let renamed = parent.join(format!(
            "{}{}",
            self.pool.prefix,
            crate::fsutil::unique_suffix()
        ));
        // Never onto an existing path: `rename` would replace an empty directory there.
        if fs::symlink_metadata(&renamed).is_ok() {
            return Err(io::Error::other("the new name is taken"));
        }
        fs::rename(&self.path, &renamed)?;
        Ok(renamed)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        match self.recycle() {
            Ok(path) => {
                let mut free = self.pool.lock();
                if free.len() < MAX_FREE {
                    free.push(path);
                } else {
                    drop(free);
                    let _ = fs::remove_dir_all(path);
                }
            }
            Err(_) => {
                let _ = fs::remove_dir_all(&self.path);
            }
        }
    }
}

/// Removes `<prefix>r<pid>-<n>` directories in `dir` whose process is gone (Linux: no
/// `/proc/<pid>`). Only recycled directories carry such names, and a process only ever takes
/// directories named after itself.
fn sweep(dir: &Path, prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_prefix('r'))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_directory_is_empty_and_moved_and_keeps_only_its_keep_entry() {
        let pool = DirPool::new("codebox-test-", Some("kept"));
        let first = pool.take().unwrap();
        let old = first.path().to_path_buf();
        fs::write(old.join("secret.txt"), b"x").unwrap();
        fs::create_dir_all(old.join("nested/deeper")).unwrap();
        fs::create_dir(old.join("kept")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc", old.join("link")).unwrap();
        drop(first);
        assert!(!old.exists(), "the old path must not lead anywhere");
        assert!(Path::new("/etc").exists(), "a link's target is untouched");

        let second = pool.take().unwrap();
        assert_ne!(second.path(), old);
        let names: Vec<_> = fs::read_dir(second.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kept")]);
        drop(second);
        // Names do not grow with reuse.
        for _ in 0..300 {
            let dir = pool.take().unwrap();
            assert!(dir.path().as_os_str().len() < old.as_os_str().len() + 24);
        }
        let pooled = pool.lock().clone();
        assert_eq!(pooled.len(), 1);
        drop(pool);
        assert!(
            !pooled[0].exists(),
            "the pool removes its directories when it goes"
        );
    }

    #[test]
    fn directories_left_by_ended_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("codebox-x-r7fffffff-3"); // no such process
        let mine = dir
            .path()
            .join(format!("codebox-x-r{:x}-1", std::process::id()));
        let other = dir.path().join("codebox-x-abc");
        for path in [&gone, &mine, &other] {
            fs::create_dir_all(path.join("inside")).unwrap();
        }
        sweep(dir.path(), "codebox-x-");
        assert!(!gone.exists());
        assert!(mine.exists() && other.exists());
    }
}
