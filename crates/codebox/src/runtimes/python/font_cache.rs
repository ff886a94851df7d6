//! matplotlib's font cache, built once per runtime and copied into each Python context.
//!
//! matplotlib scans its fonts and writes `fontlist-*.json` into its config directory the
//! first time it is imported (~300 ms). Every context would pay that again in its fresh
//! `/tmp`, so the first Python context of an engine makes sure the cache exists (building it
//! once per cache directory, in an instance of its own that runs only codebox's code), and
//! every context after it starts with a copy.

use std::path::{Path, PathBuf};

use super::{MPL_CONFIG_NAME, PythonInstance, PythonRuntime};
use crate::core::Core;
use crate::error::Error;
use crate::fsutil;
use crate::limits::Limits;
use crate::runtimes::{Cell, ExecutionMode, Language, StartSpec};
use crate::snapshot::BuildSandbox;

/// The cache for `python`'s contexts: found in the cache directory or built now. `None`
/// (contexts then build their own) when building failed; that is reported.
pub(super) async fn prepare(core: &Core, python: &PythonRuntime) -> Option<PathBuf> {
    let dir = python.font_cache_dir(core);
    if has_font_list(&dir) {
        return Some(dir);
    }
    match build(core, python, &dir).await {
        Ok(()) => Some(dir),
        Err(e) => {
            let line = format!("could not prebuild matplotlib's font cache: {e}");
            core.progress().step(&line);
            None
        }
    }
}

fn has_font_list(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("fontlist-"))
    })
}

async fn build(core: &Core, python: &PythonRuntime, dir: &Path) -> Result<(), Error> {
    let parent = dir.parent().expect("has a parent");
    fsutil::create_private_dir(parent).map_err(|e| Error::io(parent, e))?;
    let staging = tempfile::tempdir_in(parent).map_err(|e| Error::io(parent, e))?;

    let sandbox = BuildSandbox::new()?;
    let limits = Limits::default();
    let layout = python.layout();
    let store = sandbox.store(core, &layout, &limits)?;
    let spec = StartSpec {
        capture: &sandbox.capture,
        env: &[],
        memory_limit: limits.memory_bytes,
        template: None,
    };
    let mut py = PythonInstance::start(core, python, store, &spec).await?;
    crate::output::start(&sandbox.capture, 1 << 20);
    let cell = Cell {
        code: "import matplotlib.font_manager".into(),
        env: Default::default(),
        mode: ExecutionMode::Script,
        number: 1,
        language: Language::Python,
    };
    let report = py
        .run_cell(cell)
        .await
        .map_err(|e| Error::internal_from("importing matplotlib", e))?;
    let output = crate::output::finish(&sandbox.capture);
    if let Some(error) = report.error {
        return Err(Error::internal(format!(
            "importing matplotlib failed: {}: {} {}",
            error.name,
            error.value,
            output.stderr.trim()
        )));
    }

    let built = sandbox.tmp.path().join(MPL_CONFIG_NAME);
    for entry in std::fs::read_dir(&built)
        .map_err(|e| Error::io(&built, e))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("fontlist-") {
            let dest = staging.path().join(entry.file_name());
            std::fs::copy(entry.path(), &dest).map_err(|e| Error::io(&dest, e))?;
        }
    }
    if !has_font_list(staging.path()) {
        return Err(Error::internal("matplotlib wrote no font cache"));
    }
    // Another process may have built it meanwhile; either copy is as good.
    let _lock = fsutil::lock_file(&parent.join(".lock"))?;
    if has_font_list(dir) {
        return Ok(());
    }
    let kept = staging.keep();
    std::fs::rename(&kept, dir).map_err(|e| Error::io(dir, e))
}
