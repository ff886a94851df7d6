//! The host-side file API over a context's `/home/user`.
//!
//! Every path is checked before use (no `..`, no NUL, bounded length, absolute paths only
//! under `/home/user`) and then opened through a capability handle on the home directory, so
//! a symlink the guest planted cannot lead outside it either. Writes land atomically: a
//! failed or refused upload leaves the previous file as it was.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The guest's home directory, where host paths are rooted.
pub const GUEST_HOME: &str = "/home/user";

const MAX_PATH_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 255;

/// A directory entry as [`HomeDir::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The entry's name.
    pub name: String,
    /// Its guest path, e.g. `/home/user/data/sales.csv`.
    pub path: String,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last modification, in seconds since the Unix epoch.
    pub modified: Option<u64>,
}

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
}

/// A `/home/user` directory on the host, with a disk quota. Contexts that share one (the
/// contexts of a sandbox) see each other's files.
#[derive(Debug, Clone)]
pub struct HomeDir {
    root: PathBuf,
    quota_bytes: u64,
}

impl HomeDir {
    /// A home directory at `root` (created if missing) whose files may total `quota_bytes`.
    pub fn new(root: impl Into<PathBuf>, quota_bytes: u64) -> Result<HomeDir, Error> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        Ok(HomeDir { root, quota_bytes })
    }

    /// The host directory behind `/home/user`.
    pub fn host_path(&self) -> &Path {
        &self.root
    }

    fn dir(&self) -> Result<Dir, Error> {
        Dir::open_ambient_dir(&self.root, ambient_authority()).map_err(|e| Error::io(&self.root, e))
    }

    /// Writes `contents` to `path`, creating parent directories. Atomic: readers see the old
    /// file or the new one, never a mix. Fails with [`Error::DiskQuota`] when the home
    /// directory would exceed its quota.
    pub fn write(&self, path: &str, contents: &[u8]) -> Result<(), Error> {
        self.write_from(path, &mut &contents[..], contents.len() as u64)
    }

    /// Like [`HomeDir::write`] with the contents read from `reader`, `len` bytes expected.
    /// The quota is checked before reading and again as bytes arrive.
    pub fn write_from(&self, path: &str, reader: &mut dyn Read, len: u64) -> Result<(), Error> {
        let rel = guest_relative(path)?;
        let Some(name) = rel.file_name() else {
            return Err(invalid(path, "names no file"));
        };
        let dir = self.dir()?;
        let existing = dir.symlink_metadata(&rel).map(|m| m.len()).unwrap_or(0);
        let room = self
            .quota_bytes
            .saturating_sub(tree_size(&self.root).saturating_sub(existing));
        let quota = || Error::DiskQuota {
            path: path.to_string(),
            quota_bytes: self.quota_bytes,
        };
        if len > room {
            return Err(quota());
        }
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            dir.create_dir_all(parent).map_err(|e| fs_error(path, e))?;
        }
        let tmp_name = format!(
            ".{}.codebox-upload-{}",
            name.to_string_lossy(),
            crate::fsutil::unique_suffix()
        );
        let tmp = parent.map_or_else(|| PathBuf::from(&tmp_name), |p| p.join(&tmp_name));
        let result = (|| {
            let mut file = dir.create(&tmp).map_err(|e| fs_error(path, e))?;
            let mut written = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf).map_err(|e| fs_error(path, e))?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                if written > room {
                    return Err(quota());
                }
                file.write_all(&buf[..n]).map_err(|e| fs_error(path, e))?;
            }
            file.sync_all().map_err(|e| fs_error(path, e))?;
            dir.rename(&tmp, &dir, &rel).map_err(|e| fs_error(path, e))
        })();
        if result.is_err() {
            let _ = dir.remove_file(&tmp);
        }
        result
    }

    /// Reads the whole file at `path`.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, Error> {
        let rel = guest_relative(path)?;
        let mut file = self.dir()?.open(&rel).map_err(|e| fs_error(path, e))?;
        if file.metadata().map_err(|e| fs_error(path, e))?.is_dir() {
            return Err(Error::InvalidInput(format!("{path} is a directory")));
        }
        let mut out = Vec::new();
        file.read_to_end(&mut out).map_err(|e| fs_error(path, e))?;
        Ok(out)
    }

    /// Lists the directory at `path` (`""` or `/home/user` for the home directory), sorted by
    /// name.
    pub fn list(&self, path: &str) -> Result<Vec<FileEntry>, Error> {
        let rel = guest_relative_or_root(path)?;
        let dir = self.dir()?;
        let entries = if rel.as_os_str().is_empty() {
            dir.entries()
        } else {
            dir.read_dir(&rel)
        }
        .map_err(|e| fs_error(path, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| fs_error(path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().map_err(|e| fs_error(path, e))?;
            let kind = if meta.is_symlink() {
                FileKind::Symlink
            } else if meta.is_dir() {
                FileKind::Dir
            } else {
                FileKind::File
            };
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.into_std().duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            out.push(FileEntry {
                path: guest_path(&rel.join(&name)),
                name,
                kind,
                size: if kind == FileKind::Dir { 0 } else { meta.len() },
                modified,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates the directory `path` and its parents; fine if it exists.
    pub fn make_dir(&self, path: &str) -> Result<(), Error> {
        let rel = guest_relative(path)?;
        self.dir()?
            .create_dir_all(&rel)
            .map_err(|e| fs_error(path, e))
    }

    /// Creates the directory `path` and returns its normalised guest path.
    pub(crate) fn make_dir_guest_path(&self, path: &str) -> Result<String, Error> {
        self.make_dir(path)?;
        Ok(guest_path(&guest_relative(path)?))
    }

    /// Removes the file or directory (with its contents) at `path`.
    pub fn remove(&self, path: &str) -> Result<(), Error> {
        let rel = guest_relative(path)?;
        let dir = self.dir()?;
        let meta = dir.symlink_metadata(&rel).map_err(|e| fs_error(path, e))?;
        if meta.is_dir() {
            dir.remove_dir_all(&rel)
        } else {
            dir.remove_file(&rel)
        }
        .map_err(|e| fs_error(path, e))
    }

    /// Moves `from` to `to` (replacing a file at `to`), creating `to`'s parent directories.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        let (src, dst) = (guest_relative(from)?, guest_relative(to)?);
        let dir = self.dir()?;
        dir.symlink_metadata(&src).map_err(|e| fs_error(from, e))?;
        if let Some(parent) = dst.parent().filter(|p| !p.as_os_str().is_empty()) {
            dir.create_dir_all(parent).map_err(|e| fs_error(to, e))?;
        }
        dir.rename(&src, &dir, &dst).map_err(|e| fs_error(to, e))
    }

    /// Whether something exists at `path`.
    pub fn exists(&self, path: &str) -> Result<bool, Error> {
        let rel = guest_relative_or_root(path)?;
        Ok(rel.as_os_str().is_empty() || self.dir()?.symlink_metadata(&rel).is_ok())
    }

    /// Bytes used by the files under the home directory.
    pub fn usage(&self) -> u64 {
        tree_size(&self.root)
    }
}

/// Turns a guest path (`/home/user/a/b`, or `a/b` relative to it) into a safe relative path.
fn guest_relative(path: &str) -> Result<PathBuf, Error> {
    let rel = guest_relative_or_root(path)?;
    if rel.as_os_str().is_empty() {
        return Err(invalid(path, "is the home directory itself"));
    }
    Ok(rel)
}

fn guest_relative_or_root(path: &str) -> Result<PathBuf, Error> {
    if path.contains('\0') {
        return Err(invalid(path, "contains a NUL byte"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(path, "is longer than 4096 bytes"));
    }
    let rest = if let Some(rest) = path.strip_prefix(GUEST_HOME) {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return Err(invalid(path, "is outside /home/user"));
        }
        rest.trim_start_matches('/')
    } else if path.starts_with('/') {
        return Err(invalid(path, "is outside /home/user"));
    } else {
        path
    };
    let mut out = PathBuf::new();
    for component in Path::new(rest).components() {
        match component {
            Component::Normal(name) => {
                if name.len() > MAX_NAME_BYTES {
                    return Err(invalid(path, "has a name longer than 255 bytes"));
                }
                out.push(name);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid(path, "contains `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(path, "is outside /home/user"));
            }
        }
    }
    Ok(out)
}

fn guest_path(rel: &Path) -> String {
    format!("{GUEST_HOME}/{}", rel.to_string_lossy())
}

fn invalid(path: &str, reason: &'static str) -> Error {
    // Keep error messages bounded even for absurd input.
    let shown: String = path.chars().take(200).collect();
    Error::InvalidPath {
        path: shown,
        reason,
    }
}

fn fs_error(path: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(path.chars().take(200).collect()),
        // cap-std reports an attempt to leave the directory (through a symlink) this way.
        std::io::ErrorKind::PermissionDenied => invalid(path, "leads outside /home/user"),
        _ => Error::io(
            &PathBuf::from(GUEST_HOME).join(path.trim_start_matches('/')),
            e,
        ),
    }
}

/// Bytes of the regular files under `root`, not following symlinks.
pub(crate) fn tree_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert_eq!(guest_relative("a/b.csv").unwrap(), PathBuf::from("a/b.csv"));
        assert_eq!(guest_relative("/home/user/a").unwrap(), PathBuf::from("a"));
        assert_eq!(guest_relative("./a/./b").unwrap(), PathBuf::from("a/b"));
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "/home/username/x",
            "a\0b",
            "",
            "/home/user",
        ] {
            assert!(guest_relative(bad).is_err(), "{bad:?} accepted");
        }
        assert!(guest_relative(&"a/".repeat(3000)).is_err());
        assert!(guest_relative(&"x".repeat(300)).is_err());
    }

    #[test]
    fn write_read_list_remove_and_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let home = HomeDir::new(tmp.path(), 100).unwrap();
        home.write("d/a.txt", b"hello").unwrap();
        assert_eq!(home.read("/home/user/d/a.txt").unwrap(), b"hello");
        let list = home.list("d").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].path, "/home/user/d/a.txt");
        assert_eq!(list[0].size, 5);
        // Over quota: refused, the old contents stay.
        assert!(matches!(
            home.write("d/a.txt", &[0; 101]),
            Err(Error::DiskQuota { .. })
        ));
        assert_eq!(home.read("d/a.txt").unwrap(), b"hello");
        // Replacing a file counts only the difference.
        home.write("d/a.txt", &[1; 100]).unwrap();
        home.rename("d/a.txt", "e/b.txt").unwrap();
        assert!(!home.exists("d/a.txt").unwrap());
        home.remove("e").unwrap();
        assert!(matches!(home.read("e/b.txt"), Err(Error::NotFound(_))));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_home_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let home = HomeDir::new(tmp.path().join("home"), 1 << 20).unwrap();
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), home.host_path().join("link"))
            .unwrap();
        std::os::unix::fs::symlink("..", home.host_path().join("up")).unwrap();
        assert!(home.read("link").is_err());
        assert!(home.read("up/secret").is_err());
        assert!(home.write("up/x", b"x").is_err());
        assert!(!tmp.path().join("x").exists());
    }
}
