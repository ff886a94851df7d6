//! Small filesystem helpers shared by the caches: private directories and lock files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Creates `dir` and makes it private to the current user (0700 on Unix). Parents it has to
/// create (the cache root, say) are made private too; existing ones are left as they are.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir)?;
    Ok(())
}

/// An exclusive advisory lock held until dropped. Serialises installers and compilers across
/// threads and processes; the kernel releases it if the holder dies.
#[derive(Debug)]
pub(crate) struct FileLock(File);

pub(crate) fn lock_file(path: &Path) -> Result<FileLock, Error> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.lock().map_err(|e| Error::io(path, e))?;
    Ok(FileLock(file))
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The per-user cache directory: `CODEBOX_CACHE_DIR`, else `$XDG_CACHE_HOME/codebox`, else
/// `$HOME/.cache/codebox`.
pub(crate) fn default_cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("CODEBOX_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("codebox");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("codebox"),
        None => std::env::temp_dir().join("codebox-cache"),
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it into place, so
/// readers see the old file or the complete new one, never part of one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn private_dirs_and_the_parents_they_create_are_0700() {
        let root = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let cache = root.path().join("cache");
        create_private_dir(&cache.join("compiled")).unwrap();
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&cache.join("compiled")), 0o700);
        // An existing parent is not the cache's to change.
        assert_eq!(mode(root.path()), 0o755);
        // An existing directory is made private.
        let shared = root.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        create_private_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o700);
    }
}

/// A name suffix no other file or directory of this machine has had: `r`, this process's id
/// and a counter, in hex (the directory pools' sweep reads the id back).
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("r{:x}-{n:x}", std::process::id())
}
