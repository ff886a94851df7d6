//! The public engine: [`EngineBuilder`] and the [`Engine`] handle with all of its methods.
//! Everything behind it is crate-private: the [`Core`](crate::core::Core), the loaded
//! [`Runtimes`](crate::runtimes::Runtimes) and the [`Templates`](crate::templates::Templates).

use std::path::PathBuf;
use std::sync::Arc;

use crate::context::{Context, ContextOptions};
use crate::core::{Core, CoreSettings};
use crate::error::Error;
use crate::fsutil;
use crate::progress::Progress;
use crate::runtimes::python::template::TemplateRecipe;
use crate::runtimes::{Runtimes, python};
use crate::templates::{TemplateInfo, Templates};

/// Configures and builds an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    cache_dir: Option<PathBuf>,
    max_contexts: usize,
    fuel_metering: bool,
    install: bool,
    progress: Progress,
    default_template: Option<String>,
    build_default_template: bool,
    templates: bool,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            cache_dir: None,
            max_contexts: 100,
            fuel_metering: false,
            install: std::env::var_os("CODEBOX_OFFLINE").is_none_or(|v| v.is_empty()),
            progress: Progress::stderr(),
            default_template: Some(crate::runtimes::python::template::DATA_TEMPLATE.into()),
            build_default_template: true,
            templates: true,
        }
    }
}

impl EngineBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Directory for installed runtimes and compiled modules. Default: `CODEBOX_CACHE_DIR`,
    /// else `$XDG_CACHE_HOME/codebox`, else `~/.cache/codebox`. Runtimes themselves are looked
    /// up in `CODEBOX_RUNTIMES_DIR` when that is set.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Most contexts alive at once. Default 100. Creating one more fails with
    /// [`Error::TooManyContexts`]. Each slot reserves address space (not memory) up front.
    pub fn max_contexts(mut self, n: usize) -> Self {
        self.max_contexts = n.max(1);
        self
    }

    /// Count fuel so [`Limits::fuel`](crate::limits::Limits::fuel) can bound executions and
    /// [`Execution::fuel_consumed`](crate::Execution::fuel_consumed) is reported. Default off:
    /// metering costs roughly 20% of CPU speed and needs its own compiled module.
    pub fn fuel_metering(mut self, on: bool) -> Self {
        self.fuel_metering = on;
        self
    }

    /// Download and install a missing runtime with pip. Default on unless the environment
    /// variable `CODEBOX_OFFLINE` is set; when off, a missing runtime is
    /// [`Error::RuntimeMissing`].
    pub fn install_runtimes(mut self, on: bool) -> Self {
        self.install = on;
        self
    }

    /// Where progress of slow one-time steps (download, compilation) is reported. Default:
    /// stderr.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The template Python contexts start from when their options name none. Default
    /// `Some("data")`: numpy, pandas and matplotlib already imported. `None` starts them from
    /// `stdlib`, the plain interpreter. While the default template is not built, contexts
    /// start from `stdlib`.
    pub fn default_template(mut self, name: Option<&str>) -> Self {
        self.default_template = name.map(str::to_string);
        self
    }

    /// Build the default template, and `stdlib` that contexts fall back to, in the background
    /// the first time a context would have used them and they are not built yet. Default on;
    /// turn it off in short-lived processes that would exit before a build (about a minute
    /// each, one at a time) completes.
    pub fn build_default_template(mut self, on: bool) -> Self {
        self.build_default_template = on;
        self
    }

    /// Use templates (and the JavaScript snapshot). Default on. Off, every Python context
    /// boots the plain runtime (about twice as slow to start as the `stdlib` template),
    /// nothing is built or read besides the compiled runtimes, and a context naming a
    /// template other than `stdlib` is refused.
    pub fn templates(mut self, on: bool) -> Self {
        self.templates = on;
        self
    }

    /// Builds the engine: verifies (and if needed installs) the Python runtime and loads its
    /// compiled module, compiling it once if the cache has none (about a minute). The
    /// JavaScript runtime is loaded when the first JavaScript context starts. Blocking; call
    /// it from `spawn_blocking` inside an async runtime.
    pub fn build(self) -> Result<Engine, Error> {
        let core = Arc::new(Core::new(CoreSettings {
            cache_dir: self.cache_dir.unwrap_or_else(fsutil::default_cache_dir),
            max_contexts: self.max_contexts,
            fuel_metering: self.fuel_metering,
            install: self.install,
            progress: self.progress,
            templates: self.templates,
            tmp_keep: Some(python::MPL_CONFIG_NAME),
        })?);
        let runtimes = Runtimes::load(&core)?;
        let templates = Templates::new(
            core.clone(),
            runtimes.python().clone(),
            self.default_template,
            self.build_default_template,
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                core,
                runtimes,
                templates,
            }),
        })
    }
}

/// A configured engine with its runtimes. Cheap to clone; build it once per process and
/// create contexts from it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    core: Arc<Core>,
    runtimes: Runtimes,
    templates: Arc<Templates>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let core = &self.inner.core;
        f.debug_struct("Engine")
            .field("max_contexts", &core.max_contexts())
            .field("live_contexts", &core.live_contexts())
            .field("fuel_metering", &core.fuel_metering())
            .finish()
    }
}

impl Engine {
    /// An engine with the default settings; see [`EngineBuilder`].
    pub fn new() -> Result<Engine, Error> {
        EngineBuilder::new().build()
    }

    /// A builder to configure an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// Creates a context of `options.language`: a fresh interpreter with its own
    /// `/home/user` and `/tmp`. Python contexts start from a template (see
    /// [`ContextOptions::template`]); the engine's first Python context also makes sure
    /// matplotlib's font cache is prebuilt (once per cache directory, under a second).
    pub async fn create_context(&self, options: ContextOptions) -> Result<Context, Error> {
        let Inner {
            core,
            runtimes,
            templates,
        } = &*self.inner;
        // Everything is checked before a template is looked up (or built).
        options.validate(core.fuel_metering())?;
        let template = templates.for_context(&options).await?;
        let runtime = runtimes.get(core, options.language).await?;
        Context::create(core.clone(), runtime, options, template).await
    }

    /// Contexts alive now.
    pub fn live_contexts(&self) -> usize {
        self.inner.core.live_contexts()
    }

    /// Whether this engine meters fuel.
    pub fn fuel_metering(&self) -> bool {
        self.inner.core.fuel_metering()
    }

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
        self.inner.templates.build_custom(name, recipe).await
    }

    /// Makes sure the template `name` (built-in or stored) is built, building it if it is not
    /// (about a minute). `codebox runtimes install` calls this for `stdlib` and `data`.
    pub async fn prepare_template(&self, name: &str) -> Result<(), Error> {
        self.inner.templates.prepare(name).await
    }

    /// Whether a template of this name exists (built or not): `stdlib`, `data` or a stored
    /// custom one. Cheap: reads no compiled module.
    pub fn has_template(&self, name: &str) -> bool {
        self.inner.templates.exists(name)
    }

    /// Every template: `stdlib`, `data` and the custom ones, and whether each is built.
    pub fn templates(&self) -> Vec<TemplateInfo> {
        self.inner.templates.list()
    }

    /// Removes a custom template (its recipe and compiled module), or a built-in template's
    /// compiled module (it is rebuilt when next needed). Live contexts started from it keep
    /// running.
    pub fn remove_template(&self, name: &str) -> Result<(), Error> {
        self.inner.templates.remove(name)
    }
}
