//! The engine's shared core: one configured wasmtime engine and its epoch ticker, the write
//! forwarding every store uses, the cache directory, the context count and the recycled
//! directories. Runtimes, templates and contexts take the core; only [`Engine`](crate::Engine)
//! is public.
//!
//! The core knows no language: everything language-specific sits in
//! [`runtimes`](crate::runtimes) above it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::{Collector, Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::Error;
use crate::host::WriteForwarding;
use crate::progress::Progress;
use crate::workdir::{DirPool, WorkDir};

/// How often the epoch ticks: the granularity of timeouts and of time slicing between
/// CPU-bound contexts.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// CPython needs a deep native stack; with wasmtime's default of 512 KiB deep recursion is a
/// fatal stack overflow instead of a `RecursionError`.
const MAX_WASM_STACK: usize = 8 << 20;

/// What the core is built from (see [`EngineBuilder`](crate::EngineBuilder) for each default).
pub(crate) struct CoreSettings {
    pub cache_dir: PathBuf,
    pub max_contexts: usize,
    pub fuel_metering: bool,
    pub install: bool,
    pub progress: Progress,
    pub templates: bool,
    /// An entry of `/tmp` kept when a directory is recycled (a prebuilt cache).
    pub tmp_keep: Option<&'static str>,
}

pub(crate) struct Core {
    wasm: wasmtime::Engine,
    writes: WriteForwarding,
    cache_dir: PathBuf,
    max_contexts: usize,
    live_contexts: AtomicUsize,
    fuel_metering: bool,
    install: bool,
    progress: Progress,
    templates: bool,
    home_dirs: Arc<DirPool>,
    tmp_dirs: Arc<DirPool>,
}

impl Core {
    /// Configures wasmtime and starts the epoch ticker.
    pub fn new(settings: CoreSettings) -> Result<Core, Error> {
        let wasm = wasmtime::Engine::new(&wasmtime_config(
            settings.max_contexts,
            settings.fuel_metering,
        ))
        .map_err(|e| Error::internal_from("configuring wasmtime", e))?;
        let writes = WriteForwarding::new(&wasm)
            .map_err(|e| Error::internal_from("preparing write forwarding", e))?;
        start_ticker(&wasm);
        Ok(Core {
            writes,
            wasm,
            cache_dir: settings.cache_dir,
            max_contexts: settings.max_contexts,
            live_contexts: AtomicUsize::new(0),
            fuel_metering: settings.fuel_metering,
            install: settings.install,
            progress: settings.progress,
            templates: settings.templates,
            home_dirs: DirPool::new("codebox-home-", None),
            tmp_dirs: DirPool::new("codebox-tmp-", settings.tmp_keep),
        })
    }

    pub fn wasm(&self) -> &wasmtime::Engine {
        &self.wasm
    }

    /// Forwards quota-checked writes to WASI.
    pub fn writes(&self) -> &WriteForwarding {
        &self.writes
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Where compiled modules (runtimes, snapshots, templates) are cached.
    pub fn compiled_dir(&self) -> PathBuf {
        self.cache_dir.join("compiled")
    }

    /// Where runtimes are installed.
    pub fn runtimes_dir(&self) -> PathBuf {
        runtimes_dir(&self.cache_dir)
    }

    /// Whether a missing runtime may be installed with pip.
    pub fn may_install(&self) -> bool {
        self.install
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn fuel_metering(&self) -> bool {
        self.fuel_metering
    }

    /// Whether snapshots (templates, the JavaScript snapshot) are made and used.
    pub fn templates_enabled(&self) -> bool {
        self.templates
    }

    pub fn max_contexts(&self) -> usize {
        self.max_contexts
    }

    pub fn live_contexts(&self) -> usize {
        self.live_contexts.load(Ordering::Relaxed)
    }

    /// Takes a context slot, or fails when all are in use.
    pub fn acquire_slot(self: &Arc<Self>) -> Result<ContextSlot, Error> {
        let limit = self.max_contexts;
        self.live_contexts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| Error::TooManyContexts { limit })?;
        Ok(ContextSlot(self.clone()))
    }

    /// A private directory for a context's `/tmp`.
    pub fn take_tmp_dir(&self) -> Result<WorkDir, Error> {
        self.tmp_dirs
            .take()
            .map_err(|e| Error::io(&std::env::temp_dir(), e))
    }

    /// A private directory for a context's own `/home/user`.
    pub fn take_home_dir(&self) -> Result<WorkDir, Error> {
        self.home_dirs
            .take()
            .map_err(|e| Error::io(&std::env::temp_dir(), e))
    }
}

/// Where runtimes live: `CODEBOX_RUNTIMES_DIR`, else `<cache dir>/runtimes`.
pub(crate) fn runtimes_dir(cache_dir: &Path) -> PathBuf {
    match std::env::var_os("CODEBOX_RUNTIMES_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => cache_dir.join("runtimes"),
    }
}

/// One counted live context; the count goes down when it drops.
pub(crate) struct ContextSlot(Arc<Core>);

impl Drop for ContextSlot {
    fn drop(&mut self) {
        self.0.live_contexts.fetch_sub(1, Ordering::AcqRel);
    }
}

fn wasmtime_config(max_contexts: usize, fuel_metering: bool) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    // Per context: the interpreter and the small write-forwarding shim (two instances), the
    // interpreter's memory and a GC heap for its exceptions (memory slots), plus headroom for
    // a restart that briefly overlaps the old instance.
    let contexts = u32::try_from(max_contexts + 8).unwrap_or(u32::MAX / 4);
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
        // PAGEMAP_SCAN) instead of unmapping them, so the next context in the slot does not
        // fault them in again: about 150 fewer page faults per Python context. A freed slot
        // keeps at most this much resident; elsewhere this is a no-op.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(1 << 20);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .consume_fuel(fuel_metering)
        .wasm_exceptions(true)
        .collector(Collector::DeferredReferenceCounting)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(MAX_WASM_STACK + (1 << 20))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
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
