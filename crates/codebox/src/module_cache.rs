//! The compiled-module cache: compile a guest module once, then load it in milliseconds.
//!
//! Files are keyed by the module's sha256, the wasmtime version and the engine's compilation
//! settings, so a different engine never sees another's code. A file is written to a temporary
//! name and renamed into place, so no reader ever sees half of one; a lock file keeps two
//! processes from compiling the same module at once (the second waits, then loads).

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Module;

use crate::digest::hex;
use crate::error::Error;
use crate::fsutil;
use crate::progress::Progress;

/// Feeds `Hash` output into sha256, so the key is stable across processes and Rust versions.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only the sha256 digest is read")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The cache key of a module compiled by `engine`.
pub(crate) fn cache_key(engine: &wasmtime::Engine, module_sha256: &str) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    module_sha256.hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..16])
}

/// Loads the compiled module for `key`, or compiles it with `compile` and stores it.
pub(crate) fn load_or_compile(
    engine: &wasmtime::Engine,
    dir: &Path,
    name: &str,
    key: &str,
    progress: &Progress,
    compile: impl FnOnce() -> Result<Vec<u8>, Error>,
) -> Result<Module, Error> {
    load_or_create(engine, dir, &format!("{name}-{key}"), || {
        let wasm = compile()?;
        let what = format!("compiling the {name} runtime (one time, about a minute)");
        progress
            .long_task(&what, || Module::new(engine, &wasm))
            .map_err(|e| Error::internal_from(&format!("compiling {name}"), e))
    })
}

/// Loads `<dir>/<stem>.cwasm`, or makes the module with `create`, stores it and loads the
/// stored file. Holds a lock while creating, so concurrent callers (threads or processes)
/// create it once; nothing is stored when `create` fails.
pub(crate) fn load_or_create(
    engine: &wasmtime::Engine,
    dir: &Path,
    stem: &str,
    create: impl FnOnce() -> Result<Module, Error>,
) -> Result<Module, Error> {
    fsutil::create_private_dir(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(format!("{stem}.cwasm"));
    if let Some(module) = try_load(engine, &path) {
        return Ok(module);
    }
    let _lock = fsutil::lock_file(&dir.join(format!(".{stem}.lock")))?;
    // Another process may have finished while we waited for the lock.
    if let Some(module) = try_load(engine, &path) {
        return Ok(module);
    }
    let module = create()?;
    let bytes = module
        .serialize()
        .map_err(|e| Error::internal_from("serializing a compiled module", e))?;
    drop(module);
    fsutil::write_atomically(&path, &bytes)?;
    // The stored file is mapped rather than held in memory, and shared between processes.
    try_load(engine, &path).ok_or_else(|| {
        Error::internal(format!(
            "{} cannot be loaded after compiling",
            path.display()
        ))
    })
}

/// Loads `<dir>/<stem>.cwasm` if it exists and is valid for `engine`.
pub(crate) fn load_existing(engine: &wasmtime::Engine, dir: &Path, stem: &str) -> Option<Module> {
    try_load(engine, &dir.join(format!("{stem}.cwasm")))
}

/// Loads a cached module; a file that is missing, truncated or made for another engine is
/// removed (when present) and reported as absent.
fn try_load(engine: &wasmtime::Engine, path: &Path) -> Option<Module> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file was written by `Module::serialize` of an engine with the same
    // compatibility hash (it is part of the name) into a private directory, and renamed into
    // place only when complete. wasmtime checks the header and version and refuses a file that
    // does not parse; a refused file is deleted and recompiled.
    #[allow(unsafe_code)]
    let loaded = unsafe { Module::deserialize_file(engine, path) };
    match loaded {
        Ok(module) => Some(module),
        Err(_) => {
            let _ = fs::remove_file(path);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const WAT: &str = r#"(module (func (export "answer") (result i32) i32.const 42))"#;

    fn load(engine: &wasmtime::Engine, dir: &Path, compiles: &Cell<u32>) -> Module {
        let key = cache_key(engine, "test-module");
        load_or_compile(engine, dir, "test", &key, &Progress::silent(), || {
            compiles.set(compiles.get() + 1);
            Ok(WAT.as_bytes().to_vec())
        })
        .unwrap()
    }

    #[test]
    fn compiles_once_then_loads_and_recompiles_a_damaged_file() {
        let engine = wasmtime::Engine::default();
        let dir = tempfile::tempdir().unwrap();
        let compiles = Cell::new(0);
        load(&engine, dir.path(), &compiles);
        load(&engine, dir.path(), &compiles);
        assert_eq!(compiles.get(), 1, "the second load comes from the cache");

        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .unwrap();
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        load(&engine, dir.path(), &compiles);
        assert_eq!(
            compiles.get(),
            2,
            "a truncated file is recompiled, not trusted"
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn the_key_depends_on_the_engine_settings() {
        let plain = wasmtime::Engine::default();
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let metered = wasmtime::Engine::new(&config).unwrap();
        assert_ne!(cache_key(&plain, "m"), cache_key(&metered, "m"));
        assert_ne!(cache_key(&plain, "m"), cache_key(&plain, "n"));
        assert_eq!(
            cache_key(&plain, "m"),
            cache_key(&wasmtime::Engine::default(), "m")
        );
    }
}
