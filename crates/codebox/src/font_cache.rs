//! matplotlib's font cache, built once per runtime and copied into each context.
//!
//! matplotlib scans its fonts and writes `fontlist-*.json` into its config directory the first
//! time it is imported (~300 ms). Every context would pay that again in its fresh `/tmp`, so
//! the engine builds the cache once, keeps it next to the compiled module, and each context
//! starts with a copy.

use std::path::{Path, PathBuf};

use crate::context::{ContextOptions, MPL_CONFIG_DIR};
use crate::engine::Engine;
use crate::progress::Progress;
use crate::{Error, fsutil};

/// The cache directory for this engine's runtime, built if missing. `None` (contexts then
/// build their own) if building it failed; that is reported but not fatal.
pub(crate) fn prepare(engine: &Engine, cache_dir: &Path, progress: &Progress) -> Option<PathBuf> {
    let sha = &engine.inner.files.module_sha256;
    let dir = cache_dir.join("matplotlib").join(&sha[..16]);
    if has_font_list(&dir) {
        return Some(dir);
    }
    match build(engine, &dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            progress.step(&format!("could not prebuild matplotlib's font cache: {e}"));
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

fn build(engine: &Engine, dir: &Path) -> Result<(), Error> {
    let parent = dir.parent().expect("has a parent");
    fsutil::create_private_dir(parent).map_err(|e| Error::io(parent, e))?;
    let _lock = fsutil::lock_file(&parent.join(".lock"))?;
    if has_font_list(dir) {
        return Ok(());
    }
    let staging = tempfile::tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
    let staged = staging.path().to_path_buf();
    let engine = engine.clone();
    // Its own thread and runtime: `build` may be called from inside an async runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("starting a runtime: {e}")))?;
        rt.block_on(async {
            let ctx = engine.create_context(ContextOptions::default()).await?;
            let run = ctx.execute("import matplotlib.font_manager").await?;
            if let Some(error) = run.error {
                return Err(Error::Internal(format!(
                    "importing matplotlib failed: {error}"
                )));
            }
            let built = ctx
                .tmp_path()
                .join(MPL_CONFIG_DIR.trim_start_matches("/tmp/"));
            for entry in std::fs::read_dir(&built)
                .map_err(|e| Error::io(&built, e))?
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with("fontlist-") {
                    let dest = staged.join(entry.file_name());
                    std::fs::copy(entry.path(), &dest).map_err(|e| Error::io(&dest, e))?;
                }
            }
            Ok(())
        })
    })
    .join()
    .map_err(|_| Error::Internal("building the font cache panicked".into()))??;
    if !has_font_list(staging.path()) {
        return Err(Error::Internal("matplotlib wrote no font cache".into()));
    }
    let kept = staging.keep();
    std::fs::rename(&kept, dir).map_err(|e| Error::io(dir, e))?;
    Ok(())
}
