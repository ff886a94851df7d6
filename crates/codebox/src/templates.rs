//! The engine's Python templates: which exist (`stdlib`, `data`, custom recipes stored in
//! `<cache dir>/templates`), which are built, building them (now, or in the background while
//! contexts fall back), and the build gate. The recipe itself, and the contract of what a
//! restored context shares with the build, are in `runtimes::python::template`.
//!
//! A build runs on a thread of its own: it blocks on a file lock and on a compilation of
//! about a minute, and drives the guest with the one current-thread runtime this crate
//! starts ([`build_runtime`]). One build runs at a time in a process: each needs 2–3 GB
//! and both cores while it compiles.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use wasmtime::Module;

use crate::context::{Context, ContextOptions};
use crate::core::Core;
use crate::error::Error;
use crate::runtimes::Runtime;
use crate::runtimes::python::template::{
    self as recipe, DATA_TEMPLATE, Probe, STDLIB_TEMPLATE, Sealed, TemplateRecipe,
};
use crate::runtimes::python::{self, PythonRuntime, Template};
use crate::snapshot::WIZER_VERSION;
use crate::{digest, fsutil, module_cache};

/// A template as [`Engine::templates`](crate::Engine::templates) lists it.
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

/// The engine's templates: those loaded in this process, and background builds.
pub(crate) struct Templates {
    core: Arc<Core>,
    python: Arc<PythonRuntime>,
    /// The template contexts start from when their options name none.
    default: Option<String>,
    /// Whether a missing default (and `stdlib`) is built in the background.
    build_default: bool,
    loaded: Mutex<HashMap<String, Arc<Template>>>,
    /// Background builds running, or failed (then not retried by this engine).
    background: Mutex<HashMap<String, Background>>,
}

enum Background {
    Running,
    Failed,
}

impl Templates {
    pub fn new(
        core: Arc<Core>,
        python: Arc<PythonRuntime>,
        default: Option<String>,
        build_default: bool,
    ) -> Arc<Templates> {
        Arc::new(Templates {
            core,
            python,
            default,
            build_default,
            loaded: Mutex::default(),
            background: Mutex::default(),
        })
    }

    /// Builds (or rebuilds) the custom template `name` from `recipe` and stores it.
    pub async fn build_custom(
        self: &Arc<Self>,
        name: &str,
        recipe: TemplateRecipe,
    ) -> Result<TemplateInfo, Error> {
        check_name(name)?;
        self.check_enabled(name)?;
        if is_builtin(name) {
            return Err(Error::InvalidInput(format!(
                "{name:?} is a built-in template; choose another name"
            )));
        }
        let template = self.build_in_thread(name, recipe.clone()).await?;
        let path = self.recipe_path(name);
        let dir = path.parent().expect("the recipe path has a parent");
        fsutil::create_private_dir(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_vec_pretty(&recipe)
            .map_err(|e| Error::internal_from("writing the recipe", e))?;
        fsutil::write_atomically(&path, &json)?;
        self.loaded().insert(name.to_string(), template);
        Ok(TemplateInfo {
            name: name.into(),
            builtin: false,
            built: true,
            recipe,
        })
    }

    /// Makes sure template `name` is built, building it now if it is not.
    pub async fn prepare(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        self.check_enabled(name)?;
        self.template(name).await.map(|_| ())
    }

    /// Whether a template of this name exists, built or not. Reads no compiled module.
    pub fn exists(&self, name: &str) -> bool {
        name == STDLIB_TEMPLATE || self.recipe_of(name).is_ok()
    }

    /// Every template and whether each is built.
    pub fn list(&self) -> Vec<TemplateInfo> {
        let built = |name: &str, recipe: &TemplateRecipe| {
            self.core
                .compiled_dir()
                .join(format!("{}.cwasm", self.compiled_stem(name, recipe)))
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
        if let Ok(entries) = std::fs::read_dir(self.core.cache_dir().join("templates")) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                if let Ok(recipe) = self.recipe_of(name) {
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

    /// Removes a custom template (recipe and compiled module), or a built-in one's compiled
    /// module.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        if !is_builtin(name) {
            self.recipe_of(name)?;
            let path = self.recipe_path(name);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        self.loaded().remove(name);
        self.remove_compiled(name, None);
        Ok(())
    }

    /// The template a new context starts from, per its options; `None` for the plain
    /// runtime (and for languages without templates).
    pub async fn for_context(
        self: &Arc<Self>,
        options: &ContextOptions,
    ) -> Result<Option<Arc<Template>>, Error> {
        if !options.language.has_templates() {
            return match &options.template {
                None => Ok(None),
                Some(_) => Err(Error::InvalidInput(format!(
                    "templates are for Python contexts, not {}",
                    options.language
                ))),
            };
        }
        let memory_limit = options.limits.memory_bytes;
        let fits = |t: &Arc<Template>| t.memory_bytes <= memory_limit;
        if !self.core.templates_enabled() {
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
                let name = self.default.as_deref();
                if let Some(name) = name.filter(|n| *n != STDLIB_TEMPLATE)
                    && let Some(template) = self.built_or_queued(name)?.filter(fits)
                {
                    return Ok(Some(template));
                }
                Ok(self.built_or_queued(STDLIB_TEMPLATE)?.filter(fits))
            }
        }
    }

    /// Refuses template work in an engine with templates turned off.
    fn check_enabled(&self, name: &str) -> Result<(), Error> {
        if self.core.templates_enabled() {
            Ok(())
        } else {
            Err(templates_off(name))
        }
    }

    /// The template if it is built; else `None`, and a background build is queued when the
    /// engine allows it.
    fn built_or_queued(self: &Arc<Self>, name: &str) -> Result<Option<Arc<Template>>, Error> {
        let template = self.template_if_built(name)?;
        if template.is_none() && self.build_default {
            self.build_in_background(name);
        }
        Ok(template)
    }

    fn loaded(&self) -> MutexGuard<'_, HashMap<String, Arc<Template>>> {
        crate::sync::lock(&self.loaded)
    }

    /// The template if it is loaded or built on disk.
    fn template_if_built(&self, name: &str) -> Result<Option<Arc<Template>>, Error> {
        if let Some(template) = self.loaded().get(name) {
            return Ok(Some(template.clone()));
        }
        let recipe = self.recipe_of(name)?;
        let stem = self.compiled_stem(name, &recipe);
        let Some(module) =
            module_cache::load_existing(self.core.wasm(), &self.core.compiled_dir(), &stem)
        else {
            return Ok(None);
        };
        let template = Arc::new(Template::new(&self.core, name, &module)?);
        self.loaded().insert(name.into(), template.clone());
        Ok(Some(template))
    }

    /// The template, built now if it is not built yet.
    async fn template(self: &Arc<Self>, name: &str) -> Result<Arc<Template>, Error> {
        if let Some(template) = self.template_if_built(name)? {
            return Ok(template);
        }
        let recipe = self.recipe_of(name)?;
        let template = self.build_in_thread(name, recipe).await?;
        self.loaded().insert(name.into(), template.clone());
        Ok(template)
    }

    async fn build_in_thread(
        self: &Arc<Self>,
        name: &str,
        recipe: TemplateRecipe,
    ) -> Result<Arc<Template>, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn_build(name, recipe, move |built| {
            let _ = tx.send(built);
        })?;
        rx.await
            .map_err(|_| Error::internal("the template build stopped unexpectedly"))?
    }

    /// Starts building `name` unless a build of it is running or has failed before.
    fn build_in_background(self: &Arc<Self>, name: &str) {
        let Ok(recipe) = self.recipe_of(name) else {
            return;
        };
        {
            let mut background = crate::sync::lock(&self.background);
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
        self.core.progress().step(&format!(
            "building the {name} template in the background; new contexts start from \
             {fallback} until it is ready"
        ));
        let templates = self.clone();
        let owned = name.to_string();
        let started = self.spawn_build(name, recipe, move |built| {
            let state = match built {
                Ok(template) => {
                    templates.loaded().insert(owned.clone(), template);
                    None
                }
                Err(e) => {
                    let line = format!("building the {owned} template failed: {e}");
                    templates.core.progress().step(&line);
                    Some(Background::Failed)
                }
            };
            let mut background = crate::sync::lock(&templates.background);
            match state {
                None => background.remove(&owned),
                Some(failed) => background.insert(owned, failed),
            };
        });
        if started.is_err() {
            crate::sync::lock(&self.background).remove(name);
        }
    }

    /// Builds on a thread of its own, then calls `done` there.
    fn spawn_build(
        self: &Arc<Self>,
        name: &str,
        recipe: TemplateRecipe,
        done: impl FnOnce(Result<Arc<Template>, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        let templates = self.clone();
        let owned = name.to_string();
        std::thread::Builder::new()
            .name(format!("codebox-template-{name}"))
            .spawn(move || done(templates.build(&owned, &recipe)))
            .map(|_| ())
            .map_err(|e| Error::internal_from("starting a template build", e))
    }

    /// Loads the template from the cache or builds, gates and stores it. Blocking.
    fn build(&self, name: &str, recipe: &TemplateRecipe) -> Result<Arc<Template>, Error> {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _turn = crate::sync::lock(&ONE_AT_A_TIME);
        let core = &self.core;
        let stem = self.compiled_stem(name, recipe);
        let module = module_cache::load_or_create(core.wasm(), &core.compiled_dir(), &stem, || {
            let progress = core.progress();
            progress.step(&format!(
                "building the {name} template (one time, about a minute)"
            ));
            let runtime = build_runtime()?;
            let (wasm, sealed) = runtime.block_on(recipe::snapshot(core, &self.python, recipe))?;
            let module = progress
                .long_task(&format!("compiling the {name} template"), || {
                    Module::new(core.wasm(), &wasm)
                })
                .map_err(|e| Error::template_step(format!("compiling the snapshot: {e:#}")))?;
            drop(wasm);
            let template = Arc::new(Template::new(core, name, &module)?);
            runtime
                .block_on(gate(core, &self.python, template, sealed))
                .map_err(|reason| {
                    Error::template_step(format!("the build gate refused it: {reason}"))
                })?;
            Ok(module)
        })
        .map_err(|error| error.for_template(name))?;
        // Builds for an earlier runtime, kernel or recipe are never loaded again (~300 MB).
        self.remove_compiled(name, Some(&stem));
        Ok(Arc::new(Template::new(core, name, &module)?))
    }

    /// `name`'s recipe: built-in, or stored.
    fn recipe_of(&self, name: &str) -> Result<TemplateRecipe, Error> {
        match name {
            DATA_TEMPLATE => return Ok(TemplateRecipe::data()),
            STDLIB_TEMPLATE => return Ok(TemplateRecipe::stdlib()),
            _ => {}
        }
        check_name(name)?;
        let path = self.recipe_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Template {
                name: name.into(),
                message: format!("its stored recipe {} is unreadable: {e}", path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::UnknownTemplate { name: name.into() })
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn recipe_path(&self, name: &str) -> PathBuf {
        self.core
            .cache_dir()
            .join("templates")
            .join(format!("{name}.json"))
    }

    /// File stem of the compiled template: its name and a key over everything it is made
    /// from.
    fn compiled_stem(&self, name: &str, recipe: &TemplateRecipe) -> String {
        let mut hasher = Sha256::new();
        let parts = [
            WIZER_VERSION,
            python::MANIFEST,
            python::KERNEL_SOURCE,
            &python::guest_layout_key(),
            &recipe.setup,
            recipe.warmup.as_deref().unwrap_or(""),
        ];
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let inputs = digest::hex(&hasher.finalize());
        let key = module_cache::cache_key(self.core.wasm(), &inputs);
        format!("template-{name}-{key}")
    }

    /// Deletes the compiled files of template `name`, except `keep`.
    fn remove_compiled(&self, name: &str, keep: Option<&str>) {
        let prefix = format!("template-{name}-");
        let Ok(entries) = std::fs::read_dir(self.core.compiled_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".cwasm")) else {
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
}

/// The small runtime a build drives its guest with, on the build's own thread (never an
/// async worker): the one place this crate blocks on async work.
fn build_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal_from("starting a template build's runtime", e))
}

/// The build gate: two fresh contexts from the template must each see their own argv,
/// environment and files, draw different random numbers, read clocks past the build's, and
/// (when pyplot is loaded) render text to PNG.
async fn gate(
    core: &Arc<Core>,
    python: &Arc<PythonRuntime>,
    template: Arc<Template>,
    sealed: Sealed,
) -> Result<(), String> {
    let mut probes: Vec<Probe> = Vec::new();
    for i in 0..2 {
        let token = format!("gate-{i}-{}", random_token());
        let options = ContextOptions::new().env("CODEBOX_GATE_TOKEN", &token);
        let runtime = Runtime::Python(python.clone());
        let ctx = Context::create(core.clone(), runtime, options, Some(template.clone()))
            .await
            .map_err(|e| format!("a context cannot start from it: {e}"))?;
        ctx.files()
            .write("gate-in.txt", token.as_bytes())
            .map_err(|e| e.to_string())?;
        let run = ctx
            .execute(recipe::GATE_PROBE)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(error) = &run.error {
            return Err(format!(
                "the probe failed in a restored context: {}: {}\n{}",
                error.name, error.value, error.traceback
            ));
        }
        let probe: Probe = serde_json::from_str(run.stdout.trim())
            .map_err(|e| format!("unreadable probe output ({e}): {}", run.stdout))?;
        let written = ctx
            .files()
            .read("gate-out.txt")
            .map_err(|e| e.to_string())?;
        recipe::check_probe(&probe, &token, &written, &sealed)?;
        probes.push(probe);
    }
    let probes: [Probe; 2] = probes.try_into().expect("two probes");
    recipe::check_probes_differ(&probes)
}

/// Entropy for the gate's tokens, without another dependency.
fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

fn is_builtin(name: &str) -> bool {
    name == DATA_TEMPLATE || name == STDLIB_TEMPLATE
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
