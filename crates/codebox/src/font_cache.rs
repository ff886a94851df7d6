//! matplotlib's font cache, built once per runtime and copied into each Python context.
//!
//! matplotlib scans its fonts and writes `fontlist-*.json` into its config directory the
//! first time it is imported (~300 ms). Every context would pay that again in its fresh
//! `/tmp`, so the first Python context of an engine makes sure the cache exists (building it
//! once, in a context of its own that runs only codebox's code, when the cache directory has
//! none), and every context after it starts with a copy.

use std::path::Path;
use std::sync::Arc;

use crate::context::{Context, ContextOptions};
use crate::core::Core;
use crate::error::Error;
use crate::fsutil;
use crate::runtimes::Runtime;
use crate::runtimes::python::{MPL_CONFIG_NAME, PythonRuntime};

/// Makes sure `python`'s contexts get the prebuilt cache, building it the first time. A
/// failure is reported and not retried by this engine; contexts then build their own.
pub(crate) async fn ensure(core: &Arc<Core>, python: &Arc<PythonRuntime>) {
    python
        .font_cache()
        .get_or_init(|| async {
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
        })
        .await;
}

fn has_font_list(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("fontlist-"))
    })
}

async fn build(core: &Arc<Core>, python: &Arc<PythonRuntime>, dir: &Path) -> Result<(), Error> {
    let parent = dir.parent().expect("has a parent");
    fsutil::create_private_dir(parent).map_err(|e| Error::io(parent, e))?;
    let staging = tempfile::tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
    let runtime = Runtime::Python(python.clone());
    let ctx = Context::create(core.clone(), runtime, ContextOptions::default(), None).await?;
    let run = ctx.execute("import matplotlib.font_manager").await?;
    if let Some(error) = run.error {
        return Err(Error::internal(format!(
            "importing matplotlib failed: {error}"
        )));
    }
    let built = ctx.tmp_path().join(MPL_CONFIG_NAME);
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
