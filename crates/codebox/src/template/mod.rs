//! Templates: a Python interpreter's memory snapshotted after a setup script ran (for the
//! built-in `data` template: numpy, pandas and matplotlib imported), so a new context starts
//! with that work done, in milliseconds instead of seconds, sharing the snapshot's pages.
//! The built-in `stdlib` template is the same idea with nothing imported: the plain
//! interpreter with codebox's kernel loaded, which halves a context's start. While a
//! template is not built, contexts fall back to `stdlib`, and `stdlib` itself to booting the
//! plain runtime.
//!
//! A template is built once per runtime, engine configuration and recipe (see
//! [`build`](self::build)), checked by a build gate, and cached as a compiled module next to
//! the compiled runtimes. Custom templates keep their recipe in `<cache dir>/templates`.
//!
//! What a restored context sees: its own environment variables, argv, `/home/user`, `/tmp`,
//! working directory and streams; `random` and legacy `numpy.random` are reseeded on its first
//! turn (`os.urandom`, `secrets` and `numpy.random.default_rng()` always read fresh entropy);
//! `time.monotonic()` continues past the build's readings. `hash()` of `str` and `bytes` is
//! not randomised in this runtime, with or without templates: the same string hashes the same
//! in every context. Other state a setup script creates (seeded generators, caches, open
//! connections) is shared as it was at the snapshot: keep setup scripts to imports and pure
//! definitions.

mod build;
mod wasm;

pub(crate) use build::{BuildSandbox, SnapshotSource, WIZER_VERSION};
pub(crate) use wasm::{plain_functions, with_exports};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::{ExternType, InstancePre, Module};

use crate::context::ContextOptions;
use crate::engine::{Engine, EngineInner};
use crate::host::{self, HostState};
use crate::{Error, Language, fsutil, module_cache, runtime};

/// The plain interpreter, nothing imported: always available (a snapshot once built, else
/// booted from the runtime).
pub const STDLIB_TEMPLATE: &str = "stdlib";
/// The built-in template with numpy (`np`), pandas (`pd`), matplotlib and pyplot (`plt`)
/// imported and warmed up.
pub const DATA_TEMPLATE: &str = "data";

const DATA_SETUP: &str = "\
import numpy as np
import pandas as pd
import matplotlib
import matplotlib.pyplot as plt
";

/// One small groupby and one PNG render, so the first real ones do not pay for lazy imports
/// and caches.
const DATA_WARMUP: &str = "\
import io
frame = pd.DataFrame({'k': ['a', 'b', 'a'], 'v': [1.0, 2.0, 3.0]})
frame.groupby('k').v.agg(['sum', 'mean'])
frame.describe()
figure, axes = plt.subplots()
axes.plot([1, 2, 3], [3, 1, 2], label='line')
axes.bar(['a', 'b'], [1, 2])
axes.set_title('warm-up')
axes.legend()
figure.savefig(io.BytesIO(), format='png')
plt.close('all')
";

/// Exercises what the first cells of any context use (an error's traceback, output, a
/// result) so those code paths are loaded in the snapshot; leaves no names behind.
const STDLIB_WARMUP: &str = "\
import traceback
traceback.format_exception(ZeroDivisionError('warm-up'))
print('warm-up', {'a': [1, 2.5, None]})
";

/// How a template is made: `setup` runs as a cell and everything it defines stays in the
/// template's `__main__`; `warmup` runs next, to exercise code paths, and its names are
/// dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRecipe {
    /// Python run first; its names (imports, definitions) are kept.
    pub setup: String,
    /// Python run after the setup to warm caches; its names are removed. Optional.
    #[serde(default)]
    pub warmup: Option<String>,
}

impl TemplateRecipe {
    /// A recipe with `setup` and no warm-up.
    pub fn new(setup: impl Into<String>) -> Self {
        TemplateRecipe {
            setup: setup.into(),
            warmup: None,
        }
    }

    /// Sets the warm-up code.
    pub fn warmup(mut self, code: impl Into<String>) -> Self {
        self.warmup = Some(code.into());
        self
    }

    /// The built-in `data` recipe.
    pub fn data() -> Self {
        TemplateRecipe::new(DATA_SETUP).warmup(DATA_WARMUP)
    }

    /// The built-in `stdlib` recipe: nothing imported into `__main__`.
    pub fn stdlib() -> Self {
        TemplateRecipe::new("").warmup(STDLIB_WARMUP)
    }
}

/// A template as [`Engine::templates`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    /// The name contexts select it by.
    pub name: String,
    /// Built into codebox (`stdlib`, `data`) rather than made by a user.
    pub builtin: bool,
    /// Built and cached for this engine, so contexts start from it at once.
    pub built: bool,
    /// How it is made.
    pub recipe: TemplateRecipe,
}

/// A built template, ready to instantiate.
pub(crate) struct Template {
    pub name: String,
    pub pre: InstancePre<HostState>,
    /// The snapshot's memory: a context needs a memory limit at least this large.
    pub memory_bytes: u64,
}

impl Template {
    fn new(engine: &wasmtime::Engine, name: &str, module: &Module) -> Result<Template, Error> {
        let memory_bytes = module
            .exports()
            .find_map(|export| match export.ty() {
                ExternType::Memory(memory) if export.name() == "memory" => {
                    Some(memory.minimum() * memory.page_size())
                }
                _ => None,
            })
            .ok_or_else(|| Error::Internal("the template exports no memory".into()))?;
        let pre = host::instance_pre(engine, module).map_err(Error::internal)?;
        Ok(Template {
            name: name.to_string(),
            pre,
            memory_bytes,
        })
    }
}

/// The engine's templates: those loaded in this process, and background builds.
#[derive(Default)]
pub(crate) struct Templates {
    loaded: Mutex<HashMap<String, Arc<Template>>>,
    /// Background builds running, or failed (then not retried by this engine).
    background: Mutex<HashMap<String, Background>>,
}

enum Background {
    Running,
    Failed,
}

/// A template error whose name [`build::build`] fills in.
fn template_error(message: impl Into<String>) -> Error {
    Error::Template {
        name: String::new(),
        message: message.into(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `(name, recipe)` of a template that may be built: the built-in one or a stored recipe.
fn recipe_of(inner: &EngineInner, name: &str) -> Result<TemplateRecipe, Error> {
    match name {
        DATA_TEMPLATE => return Ok(TemplateRecipe::data()),
        STDLIB_TEMPLATE => return Ok(TemplateRecipe::stdlib()),
        _ => {}
    }
    check_name(name)?;
    let path = recipe_path(&inner.cache_dir, name);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Template {
            name: name.into(),
            message: format!("its stored recipe {} is unreadable: {e}", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::InvalidInput(format!(
            "there is no template named {name:?}; build it first (`codebox template build`) \
             or use {DATA_TEMPLATE:?} or {STDLIB_TEMPLATE:?}"
        ))),
        Err(e) => Err(Error::io(&path, e)),
    }
}

fn templates_off(name: &str) -> Error {
    Error::InvalidInput(format!(
        "templates are turned off in this engine, so template {name:?} is not available \
         (see EngineBuilder::templates)"
    ))
}

fn check_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        let shown: String = name.chars().take(64).collect();
        return Err(Error::InvalidInput(format!(
            "invalid template name {shown:?}: use 1 to 64 lowercase letters, digits, '-' or \
             '_', starting with a letter or digit"
        )));
    }
    Ok(())
}

fn recipe_path(cache_dir: &Path, name: &str) -> PathBuf {
    cache_dir.join("templates").join(format!("{name}.json"))
}

fn compiled_dir(inner: &EngineInner) -> PathBuf {
    inner.cache_dir.join("compiled")
}

/// File stem of the compiled template: its name and a key over everything it is made from.
fn compiled_stem(inner: &EngineInner, name: &str, recipe: &TemplateRecipe) -> String {
    let mut hasher = Sha256::new();
    let parts = [
        build::WIZER_VERSION,
        runtime::PYTHON_MANIFEST,
        crate::python::KERNEL_SOURCE,
        &crate::context::python_guest_layout(),
        &recipe.setup,
        recipe.warmup.as_deref().unwrap_or(""),
    ];
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let inputs = runtime::hex(&hasher.finalize());
    let key = module_cache::cache_key(&inner.wasm, &inputs);
    format!("template-{name}-{key}")
}

impl Engine {
    /// Builds (or rebuilds) the custom template `name` from `recipe` and stores it; contexts
    /// then select it with [`ContextOptions::template`]. Takes about a minute (a snapshot and
    /// one compilation) and 2–3 GB of memory while it runs. If the setup raises, its traceback
    /// is in the [`Error::Template`] and nothing is stored; a template that fails the build
    /// gate is refused the same way.
    pub async fn build_template(
        &self,
        name: &str,
        recipe: TemplateRecipe,
    ) -> Result<TemplateInfo, Error> {
        check_name(name)?;
        self.check_templates_on(name)?;
        if name == DATA_TEMPLATE || name == STDLIB_TEMPLATE {
            return Err(Error::InvalidInput(format!(
                "{name:?} is a built-in template; choose another name"
            )));
        }
        let template = self.build_in_thread(name, recipe.clone()).await?;
        let path = recipe_path(&self.inner.cache_dir, name);
        let dir = path.parent().expect("the recipe path has a parent");
        fsutil::create_private_dir(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_vec_pretty(&recipe).map_err(Error::internal)?;
        fsutil::write_atomically(&path, &json)?;
        self.loaded().insert(name.to_string(), template);
        Ok(TemplateInfo {
            name: name.into(),
            builtin: false,
            built: true,
            recipe,
        })
    }

    /// Makes sure the template `name` (built-in or stored) is built, building it if it is not
    /// (about a minute). `codebox runtimes install` calls this for `stdlib` and `data`.
    pub async fn prepare_template(&self, name: &str) -> Result<(), Error> {
        self.check_templates_on(name)?;
        self.template(name).await.map(|_| ())
    }

    /// Refuses template work in an engine with templates turned off.
    fn check_templates_on(&self, name: &str) -> Result<(), Error> {
        if self.inner.templates_enabled {
            Ok(())
        } else {
            Err(templates_off(name))
        }
    }

    /// Whether a template of this name exists (built or not): `stdlib`, `data` or a stored
    /// custom one. Cheap: reads no compiled module.
    pub fn has_template(&self, name: &str) -> bool {
        name == STDLIB_TEMPLATE || recipe_of(&self.inner, name).is_ok()
    }

    /// Every template: `stdlib`, `data` and the custom ones, and whether each is built.
    pub fn templates(&self) -> Vec<TemplateInfo> {
        let inner = &self.inner;
        let built = |name: &str, recipe: &TemplateRecipe| {
            compiled_dir(inner)
                .join(format!("{}.cwasm", compiled_stem(inner, name, recipe)))
                .is_file()
        };
        let mut list: Vec<TemplateInfo> = [
            (STDLIB_TEMPLATE, TemplateRecipe::stdlib()),
            (DATA_TEMPLATE, TemplateRecipe::data()),
        ]
        .into_iter()
        .map(|(name, recipe)| TemplateInfo {
            name: name.into(),
            builtin: true,
            built: built(name, &recipe),
            recipe,
        })
        .collect();
        let mut custom = Vec::new();
        if let Ok(entries) = std::fs::read_dir(inner.cache_dir.join("templates")) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                if let Ok(recipe) = recipe_of(inner, name) {
                    custom.push(TemplateInfo {
                        name: name.into(),
                        builtin: false,
                        built: built(name, &recipe),
                        recipe,
                    });
                }
            }
        }
        custom.sort_by(|a, b| a.name.cmp(&b.name));
        list.extend(custom);
        list
    }

    /// Removes a custom template (its recipe and compiled module), or a built-in template's
    /// compiled module (it is rebuilt when next needed). Live contexts started from it keep
    /// running.
    pub fn remove_template(&self, name: &str) -> Result<(), Error> {
        if name != DATA_TEMPLATE && name != STDLIB_TEMPLATE {
            recipe_of(&self.inner, name)?;
            let path = recipe_path(&self.inner.cache_dir, name);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        self.loaded().remove(name);
        remove_compiled(&self.inner, name, None);
        Ok(())
    }

    /// The template a new context starts from, per its options; `None` for the plain runtime.
    pub(crate) async fn template_for(
        &self,
        options: &ContextOptions,
    ) -> Result<Option<Arc<Template>>, Error> {
        if options.language != Language::Python {
            return match &options.template {
                None => Ok(None),
                Some(_) => Err(Error::InvalidInput(format!(
                    "templates are for Python contexts, not {}",
                    options.language.name()
                ))),
            };
        }
        let memory_limit = options.limits.memory_bytes;
        let fits = |t: &Arc<Template>| t.memory_bytes <= memory_limit;
        if !self.inner.templates_enabled {
            return match options.template.as_deref() {
                None | Some(STDLIB_TEMPLATE) => Ok(None),
                Some(name) => Err(templates_off(name)),
            };
        }
        match options.template.as_deref() {
            // Never waited for: until it is built, the plain runtime serves.
            Some(STDLIB_TEMPLATE) => Ok(self.built_or_queued(STDLIB_TEMPLATE)?.filter(fits)),
            Some(name) => {
                let template = self.template(name).await?;
                if template.memory_bytes > memory_limit {
                    return Err(Error::InvalidInput(format!(
                        "template {name:?} needs a memory limit of at least {} MiB; \
                         limits.memory_bytes is {} MiB",
                        template.memory_bytes.div_ceil(1 << 20),
                        memory_limit >> 20
                    )));
                }
                Ok(Some(template))
            }
            None => {
                // Never wait for a build here: start from stdlib and build in the background.
                let name = self.inner.default_template.as_deref();
                if let Some(name) = name.filter(|n| *n != STDLIB_TEMPLATE)
                    && let Some(template) = self.built_or_queued(name)?.filter(fits)
                {
                    return Ok(Some(template));
                }
                Ok(self.built_or_queued(STDLIB_TEMPLATE)?.filter(fits))
            }
        }
    }

    /// The template if it is built; else `None`, and a background build is queued when the
    /// engine allows it.
    fn built_or_queued(&self, name: &str) -> Result<Option<Arc<Template>>, Error> {
        let template = self.template_if_built(name)?;
        if template.is_none() && self.inner.build_default_template {
            self.build_in_background(name);
        }
        Ok(template)
    }

    fn loaded(&self) -> MutexGuard<'_, HashMap<String, Arc<Template>>> {
        lock(&self.inner.templates.loaded)
    }

    /// The template if it is loaded or built on disk.
    fn template_if_built(&self, name: &str) -> Result<Option<Arc<Template>>, Error> {
        if let Some(template) = self.loaded().get(name) {
            return Ok(Some(template.clone()));
        }
        let recipe = recipe_of(&self.inner, name)?;
        let stem = compiled_stem(&self.inner, name, &recipe);
        let Some(module) =
            module_cache::load_existing(&self.inner.wasm, &compiled_dir(&self.inner), &stem)
        else {
            return Ok(None);
        };
        let template = Arc::new(Template::new(&self.inner.wasm, name, &module)?);
        self.loaded().insert(name.into(), template.clone());
        Ok(Some(template))
    }

    /// The template, built now if it is not built yet.
    async fn template(&self, name: &str) -> Result<Arc<Template>, Error> {
        if let Some(template) = self.template_if_built(name)? {
            return Ok(template);
        }
        let recipe = recipe_of(&self.inner, name)?;
        let template = self.build_in_thread(name, recipe).await?;
        self.loaded().insert(name.into(), template.clone());
        Ok(template)
    }

    /// Builds on a thread of its own (the build blocks on a file lock and a long
    /// compilation, and drives the guest with its own small runtime), then calls `done`.
    fn spawn_build(
        &self,
        name: &str,
        recipe: TemplateRecipe,
        done: impl FnOnce(Result<Arc<Template>, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        let engine = self.clone();
        let owned = name.to_string();
        std::thread::Builder::new()
            .name(format!("codebox-template-{name}"))
            .spawn(move || done(build::build(&engine, &owned, &recipe)))
            .map(|_| ())
            .map_err(|e| Error::internal(format!("starting a template build: {e}")))
    }

    async fn build_in_thread(
        &self,
        name: &str,
        recipe: TemplateRecipe,
    ) -> Result<Arc<Template>, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn_build(name, recipe, move |built| {
            let _ = tx.send(built);
        })?;
        rx.await
            .map_err(|_| Error::Internal("the template build stopped unexpectedly".into()))?
    }

    /// Starts building `name` unless a build of it is running or has failed before.
    fn build_in_background(&self, name: &str) {
        let Ok(recipe) = recipe_of(&self.inner, name) else {
            return;
        };
        {
            let mut background = lock(&self.inner.templates.background);
            if background.contains_key(name) {
                return;
            }
            background.insert(name.to_string(), Background::Running);
        }
        let fallback = if name == STDLIB_TEMPLATE {
            "the plain runtime"
        } else {
            STDLIB_TEMPLATE
        };
        self.inner.progress.step(&format!(
            "building the {name} template in the background; new contexts start from \
             {fallback} until it is ready"
        ));
        let engine = self.clone();
        let owned = name.to_string();
        let started = self.spawn_build(name, recipe, move |built| {
            let state = match built {
                Ok(template) => {
                    engine.loaded().insert(owned.clone(), template);
                    None
                }
                Err(e) => {
                    let line = format!("building the {owned} template failed: {e}");
                    engine.inner.progress.step(&line);
                    Some(Background::Failed)
                }
            };
            let mut background = lock(&engine.inner.templates.background);
            match state {
                None => background.remove(&owned),
                Some(failed) => background.insert(owned, failed),
            };
        });
        if started.is_err() {
            lock(&self.inner.templates.background).remove(name);
        }
    }
}

/// Deletes the compiled files of template `name`, except `keep`.
fn remove_compiled(inner: &EngineInner, name: &str, keep: Option<&str>) {
    let prefix = format!("template-{name}-");
    let Ok(entries) = std::fs::read_dir(compiled_dir(inner)) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let Some(stem) = file_name.strip_suffix(".cwasm") else {
            continue;
        };
        // The key is hex without dashes, so `template-a-<key>` never matches name `a-b`.
        let is_this = stem
            .strip_prefix(&prefix)
            .is_some_and(|key| key.chars().all(|c| c.is_ascii_hexdigit()));
        if is_this && Some(stem) != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["data2", "ml", "a", "my-template_1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "A", "a/b", "..", "a b", &"x".repeat(65), "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
