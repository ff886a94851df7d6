//! Small filesystem helpers shared by the caches: private directories and lock files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::Error;

/// Creates `dir` (and parents) and makes it private to the current user (0700 on Unix).
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
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
