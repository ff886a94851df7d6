//! The engine: one configured wasmtime engine, the compiled Python runtime, a ticker thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{
    Collector, Config, Enabled, InstanceAllocationStrategy, InstancePre, PoolingAllocationConfig,
};

use crate::context::{Context, ContextOptions};
use crate::host::{self, HostState};
use crate::js::JsRuntime;
use crate::progress::Progress;
use crate::runtime::{self, Manifest, RuntimeFiles};
use crate::template::Templates;
use crate::workdir::DirPool;
use sha2::Digest as _;

use crate::{Error, font_cache, fsutil, module_cache};

/// How often the epoch ticks: the granularity of timeouts and of time slicing between
/// CPU-bound contexts.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// CPython needs a deep native stack; with wasmtime's default of 512 KiB deep recursion is a
/// fatal stack overflow instead of a `RecursionError`.
const MAX_WASM_STACK: usize = 8 << 20;

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
            default_template: Some(crate::DATA_TEMPLATE.into()),
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

    /// Count fuel so [`Limits::fuel`](crate::Limits::fuel) can bound executions and
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

    /// Use templates. Default on. Off, every Python context boots the plain runtime (about
    /// twice as slow to start as the `stdlib` template), nothing is built or read besides the
    /// compiled runtime, and a context naming a template other than `stdlib` is refused.
    pub fn templates(mut self, on: bool) -> Self {
        self.templates = on;
        self
    }

    /// Builds the engine: verifies (and if needed installs) the runtime and loads its compiled
    /// module, compiling it once if the cache has none (about a minute). Blocking; call it
    /// from `spawn_blocking` inside an async runtime.
    pub fn build(self) -> Result<Engine, Error> {
        let cache_dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(fsutil::default_cache_dir);
        let wasm_engine =
            wasmtime::Engine::new(&self.wasmtime_config()).map_err(Error::internal)?;

        let manifest = Manifest::python();
        let runtimes = runtime::runtimes_dir(&cache_dir);
        let files = if self.install {
            runtime::ensure_installed(&runtimes, &manifest, &self.progress)?
        } else {
            RuntimeFiles::open(&runtimes, &manifest)?
        };
        let key = module_cache::cache_key(&wasm_engine, &files.module_sha256);
        let module = module_cache::load_or_compile(
            &wasm_engine,
            &cache_dir.join("compiled"),
            "python",
            &key,
            &self.progress,
            || {
                files.verify_module()?;
                std::fs::read(&files.module_path).map_err(|e| Error::io(&files.module_path, e))
            },
        )?;

        let python = host::instance_pre(&wasm_engine, &module).map_err(Error::internal)?;
        let writes = host::WriteForwarding::new(&wasm_engine).map_err(Error::internal)?;

        start_ticker(&wasm_engine);
        let engine = Engine {
            inner: Arc::new(EngineInner {
                wasm: wasm_engine,
                python,
                writes,
                files,
                max_contexts: self.max_contexts,
                live_contexts: AtomicUsize::new(0),
                fuel_metering: self.fuel_metering,
                mpl_font_cache: OnceLock::new(),
                javascript: tokio::sync::OnceCell::new(),
                cache_dir: cache_dir.clone(),
                install: self.install,
                progress: self.progress.clone(),
                kernel: Arc::new(host::KernelCode {
                    source: crate::python::KERNEL_SOURCE,
                    bytecode: OnceLock::new(),
                }),
                templates: Templates::default(),
                default_template: self.default_template,
                build_default_template: self.build_default_template,
                templates_enabled: self.templates,
                home_dirs: DirPool::new("codebox-home-", None),
                tmp_dirs: DirPool::new("codebox-tmp-", Some(crate::context::MPL_CONFIG_NAME)),
            }),
        };
        let fonts = font_cache::prepare(&engine, &cache_dir, &self.progress);
        let _ = engine.inner.mpl_font_cache.set(fonts);
        Ok(engine)
    }

    fn wasmtime_config(&self) -> Config {
        let mut pool = PoolingAllocationConfig::default();
        // Per context: the interpreter and the small write-forwarding shim (two instances),
        // the interpreter's memory and a GC heap for its exceptions (memory slots), plus
        // headroom for a restart that briefly overlaps the old instance.
        let contexts = u32::try_from(self.max_contexts + 8).unwrap_or(u32::MAX / 4);
        pool.total_core_instances(contexts * 2)
            .total_memories(contexts * 3)
            .total_tables(contexts * 2)
            .total_gc_heaps(contexts * 2)
            .total_stacks(contexts)
            .max_memory_size(crate::limits::MAX_MEMORY_BYTES as usize)
            // The Python runtime has a 47k-entry function table and a large instance.
            .table_elements(200_000)
            .max_core_instance_size(16 << 20)
            // Keep the top of each fiber stack mapped between calls rather than faulting it in
            // afresh on every execution.
            .async_stack_keep_resident(1 << 20)
            // When a context ends, reset the pages it wrote in place (found with Linux's
            // PAGEMAP_SCAN) instead of unmapping them, so the next context in the slot does
            // not fault them in again: about 150 fewer page faults per Python context. A
            // freed slot keeps at most this much resident; elsewhere this is a no-op.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(1 << 20);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .consume_fuel(self.fuel_metering)
            .wasm_exceptions(true)
            .collector(Collector::DeferredReferenceCounting)
            .max_wasm_stack(MAX_WASM_STACK)
            .async_stack_size(MAX_WASM_STACK + (1 << 20))
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        config
    }
}

/// A configured engine with the Python runtime loaded. Cheap to clone; build it once per
/// process and create contexts from it.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub wasm: wasmtime::Engine,
    pub python: InstancePre<HostState>,
    /// Forwards quota-checked writes to WASI.
    pub writes: host::WriteForwarding,
    pub files: RuntimeFiles,
    pub max_contexts: usize,
    pub live_contexts: AtomicUsize,
    pub fuel_metering: bool,
    /// A directory with matplotlib's prebuilt font cache, once it exists.
    pub mpl_font_cache: OnceLock<Option<PathBuf>>,
    /// The guest kernel, compiled by the first context that starts.
    pub kernel: Arc<host::KernelCode>,
    /// The JavaScript runtime, installed and compiled when the first JS context starts.
    pub javascript: tokio::sync::OnceCell<Arc<JsRuntime>>,
    pub cache_dir: PathBuf,
    pub install: bool,
    pub progress: Progress,
    pub templates: Templates,
    pub default_template: Option<String>,
    pub build_default_template: bool,
    /// Off: no template is used or built; Python contexts boot the plain runtime.
    pub templates_enabled: bool,
    /// Recycled host directories for contexts' `/home/user` and `/tmp`.
    pub home_dirs: Arc<DirPool>,
    pub tmp_dirs: Arc<DirPool>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("max_contexts", &self.inner.max_contexts)
            .field("live_contexts", &self.live_contexts())
            .field("fuel_metering", &self.inner.fuel_metering)
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

    /// Creates a Python context: a fresh interpreter with its own `/home/user` and `/tmp`.
    pub async fn create_context(&self, options: ContextOptions) -> Result<Context, Error> {
        Context::create(self.clone(), options).await
    }

    /// Contexts alive now.
    pub fn live_contexts(&self) -> usize {
        self.inner.live_contexts.load(Ordering::Relaxed)
    }

    /// Whether this engine meters fuel.
    pub fn fuel_metering(&self) -> bool {
        self.inner.fuel_metering
    }

    /// The JavaScript runtime, installed (with pip) and compiled on first use.
    pub(crate) async fn javascript(&self) -> Result<Arc<JsRuntime>, Error> {
        let engine = self.clone();
        self.inner
            .javascript
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || load_javascript(&engine))
                    .await
                    .map_err(|e| Error::internal(format!("loading JavaScript: {e}")))?
            })
            .await
            .cloned()
    }

    /// Takes a context slot, or fails when all are in use.
    pub(crate) fn acquire_slot(&self) -> Result<ContextSlot, Error> {
        let limit = self.inner.max_contexts;
        self.inner
            .live_contexts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| Error::TooManyContexts { limit })?;
        Ok(ContextSlot(self.inner.clone()))
    }
}

/// One counted live context; the count goes down when it drops.
pub(crate) struct ContextSlot(Arc<EngineInner>);

impl Drop for ContextSlot {
    fn drop(&mut self) {
        self.0.live_contexts.fetch_sub(1, Ordering::AcqRel);
    }
}

fn load_javascript(engine: &Engine) -> Result<Arc<JsRuntime>, Error> {
    let inner = &engine.inner;
    let manifest = Manifest::javascript();
    let runtimes = runtime::runtimes_dir(&inner.cache_dir);
    let files = if inner.install {
        runtime::ensure_installed(&runtimes, &manifest, &inner.progress)?
    } else {
        RuntimeFiles::open(&runtimes, &manifest)?
    };
    let key = module_cache::cache_key(&inner.wasm, &files.module_sha256);
    let module = module_cache::load_or_compile(
        &inner.wasm,
        &inner.cache_dir.join("compiled"),
        "javascript",
        &key,
        &inner.progress,
        || {
            files.verify_module()?;
            std::fs::read(&files.module_path).map_err(|e| Error::io(&files.module_path, e))
        },
    )?;
    let pre = host::instance_pre(&inner.wasm, &module).map_err(Error::internal)?;
    let mut runtime = JsRuntime {
        pre,
        snapshot: None,
        prelude_bytecode: OnceLock::new(),
    };
    if inner.templates_enabled {
        // Without the snapshot contexts start the slow way; say why, once, and go on.
        match javascript_snapshot(engine, &runtime, &files) {
            Ok(pre) => runtime.snapshot = Some(pre),
            Err(e) => inner.progress.step(&format!(
                "JavaScript contexts start without a snapshot: {e}"
            )),
        }
    }
    Ok(Arc::new(runtime))
}

fn javascript_snapshot(
    engine: &Engine,
    runtime: &JsRuntime,
    files: &RuntimeFiles,
) -> Result<InstancePre<HostState>, Error> {
    let inner = &engine.inner;
    let inputs = format!(
        "{} snapshot {} {} {}",
        files.module_sha256,
        crate::js::SNAPSHOT_FORMAT,
        crate::template::WIZER_VERSION,
        runtime::hex(&sha2::Sha256::digest(crate::js::PRELUDE.as_bytes()))
    );
    let key = module_cache::cache_key(&inner.wasm, &inputs);
    let module = module_cache::load_or_create(
        &inner.wasm,
        &inner.cache_dir.join("compiled"),
        &format!("javascript-snapshot-{key}"),
        || {
            let wasm =
                std::fs::read(&files.module_path).map_err(|e| Error::io(&files.module_path, e))?;
            crate::js::snapshot_module(engine, runtime, &wasm)
        },
    )?;
    host::instance_pre(&inner.wasm, &module).map_err(Error::internal)
}

/// Advances the epoch every tick while the engine is alive. Holds only a weak reference, so
/// the thread ends soon after the last clone of the engine is dropped.
fn start_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("codebox-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .expect("spawn the epoch ticker thread");
}
