//! The Python runtime: CPython on WASI driven through its reactor exports (`host_alloc`,
//! `turn`), with codebox's kernel (`wasm-runtimes/python/codebox_kernel.py`) loaded into
//! each instance.
//!
//! The guest protocol: the host runs a fixed turn (`RUN_TURN`); the kernel asks the door
//! (`host.call`) for the cell, runs it, and sends each result and the error back through the
//! door as it goes. [`PythonInstance::run_cell`] hands the door the cell and returns what it
//! collected as a [`CellReport`].
//!
//! Contexts start from a template (see [`template`]) when one is built, else from the plain
//! runtime, which then loads the kernel in its first turn.

mod font_cache;
pub(crate) mod template;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use wasmtime::{ExternType, Instance, InstancePre, Memory, Module, Store, TypedFunc};

use super::{Cell, CellReport, ExecutionMode, RuntimeFiles, RuntimeKind, StartSpec};
use crate::core::Core;
use crate::error::Error;
use crate::files::GUEST_HOME;
use crate::host::{self, Door, HostState, KernelCode};
use crate::output::SharedCapture;
use crate::store::Layout;

/// The pinned runtime package.
pub(crate) const MANIFEST: &str = include_str!("../../../../../wasm-runtimes/python.toml");

pub(crate) const KERNEL_SOURCE: &str =
    include_str!("../../../../../wasm-runtimes/python/codebox_kernel.py");

/// matplotlib's config and cache directory inside the guest; a prebuilt font cache is copied
/// there so the first plot does not rebuild it.
pub(crate) const MPL_CONFIG_DIR: &str = "/tmp/.matplotlib";
/// [`MPL_CONFIG_DIR`]'s name inside `/tmp`: kept when a `/tmp` directory is recycled.
pub(crate) const MPL_CONFIG_NAME: &str = ".matplotlib";
/// codebox's matplotlib backend (Agg, with figures reported as results).
const MPL_BACKEND: &str = "module://_codebox_mpl_backend";
/// Where the stdlib zip's directory is mounted.
const GUEST_LIB_DIR: &str = "/usr/local/lib";
/// Where matplotlib's data directory is mounted (inside the stdlib zip's path).
const GUEST_MPL_DATA_DIR: &str = "/usr/local/lib/python315.zip/matplotlib/mpl-data";
/// Python contexts have four preopened directories after stdin, stdout and stderr; a
/// descriptor from this number on was opened by the guest.
pub(crate) const FIRST_FREE_FD: u32 = 7;
/// Python's argv in every context.
const ARGV: &str = "/usr/local/bin/python.wasm";
/// Set in the argv and environment of a template build only.
pub(crate) const TEMPLATE_BUILD_ENV: &str = "CODEBOX_TEMPLATE_BUILD";

/// Loads the kernel module: its bytecode when an earlier context compiled it, else its
/// source (then compiled here and offered back to the host for later contexts).
const BOOT_TURN: &str = r#"
def _codebox_boot():
    import _host, marshal, sys, types
    blob = _host.call(b"!kernel")
    if blob[:1] == b"M":
        code = marshal.loads(blob[1:])
    else:
        code = compile(blob[1:], "<codebox-kernel>", "exec")
        _host.call(b"!bytecode" + marshal.dumps(code))
    module = types.ModuleType("_codebox_kernel")
    sys.modules["_codebox_kernel"] = module
    exec(code, module.__dict__)
_codebox_boot()
del _codebox_boot
"#;

/// Runs one cell; the kernel fetches the code through the door.
const RUN_TURN: &str = "__import__('_codebox_kernel').run()";

/// The first turn of a context restored from a template: the kernel is already loaded, but
/// the streams, environment and working directory are the new context's.
const RESTORE_TURN: &str = "__import__('_codebox_kernel')._setup()";

/// The loaded Python runtime.
pub(crate) struct PythonRuntime {
    pre: InstancePre<HostState>,
    files: RuntimeFiles,
    /// The guest kernel, compiled by the first context that boots the plain runtime.
    kernel: Arc<KernelCode>,
    /// matplotlib's prebuilt font cache, once the first context made sure of it (see
    /// [`font_cache`]); `None` inside when it could not be built.
    font_cache: tokio::sync::OnceCell<Option<PathBuf>>,
}

impl PythonRuntime {
    /// Installs (if allowed and needed), verifies and compiles the runtime. Blocking.
    pub fn load(core: &Core) -> Result<PythonRuntime, Error> {
        let (files, module) = super::load_module(core, RuntimeKind::Python)?;
        let pre = host::instance_pre(core.wasm(), &module)
            .map_err(|e| Error::internal_from("linking the Python runtime", e))?;
        Ok(PythonRuntime {
            pre,
            files,
            kernel: Arc::new(KernelCode {
                source: KERNEL_SOURCE,
                bytecode: OnceLock::new(),
            }),
            font_cache: tokio::sync::OnceCell::new(),
        })
    }

    pub fn files(&self) -> &RuntimeFiles {
        &self.files
    }

    /// Where matplotlib's font cache for this runtime is kept, built or not.
    fn font_cache_dir(&self, core: &Core) -> PathBuf {
        let sha = &self.files.module_sha256;
        core.cache_dir().join("matplotlib").join(&sha[..16])
    }

    /// Run before a context starts: the first time, makes sure matplotlib's font cache is
    /// prebuilt (once per cache directory, under a second), so every context copies it.
    pub async fn prepare_context(&self, core: &Core) {
        self.font_cache
            .get_or_init(|| font_cache::prepare(core, self))
            .await;
    }

    /// What a context's interpreter sees.
    pub fn layout(&self) -> Layout {
        self.layout_for(false)
    }

    /// What a template build's interpreter sees: a context's layout, with a marker in argv
    /// and the environment so the build gate can tell that a restored context reads its own.
    pub fn build_layout(&self) -> Layout {
        self.layout_for(true)
    }

    fn layout_for(&self, template_build: bool) -> Layout {
        let mut argv = vec![ARGV.to_string()];
        let mut env: Vec<(String, String)> = [
            ("PYTHONTZPATH", ""),
            ("MPLBACKEND", MPL_BACKEND),
            ("MPLCONFIGDIR", MPL_CONFIG_DIR),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if template_build {
            argv.push(TEMPLATE_BUILD_ENV.into());
            env.push((TEMPLATE_BUILD_ENV.into(), "1".into()));
        }
        let files = &self.files;
        Layout {
            argv,
            env,
            // The order matters to the runtime: stdlib, then matplotlib's data.
            mounts: vec![
                (files.python_lib_dir(), GUEST_LIB_DIR),
                (files.mpl_data_dir(), GUEST_MPL_DATA_DIR),
            ],
            tmp_seed: self
                .font_cache
                .get()
                .and_then(Option::as_ref)
                .map(|dir| (dir.clone(), MPL_CONFIG_NAME)),
            kernel: Some(self.kernel.clone()),
        }
    }
}

/// The guest-side layout a Python context sees (argv, fixed environment, mounts), as text:
/// part of a template's cache key, since a template is only valid for the layout it was
/// built with.
pub(crate) fn guest_layout_key() -> String {
    format!(
        "argv={:?} HOME={GUEST_HOME} TMPDIR=/tmp PYTHONTZPATH= \
         MPLBACKEND={MPL_BACKEND} MPLCONFIGDIR={MPL_CONFIG_DIR} \
         mounts={GUEST_LIB_DIR},{GUEST_MPL_DATA_DIR},/tmp,{GUEST_HOME} \
         first_free_fd={FIRST_FREE_FD}",
        [ARGV]
    )
}

/// A built template: a snapshot of the interpreter after a recipe ran, ready to
/// instantiate.
pub(crate) struct Template {
    pub name: String,
    pub pre: InstancePre<HostState>,
    /// The snapshot's memory: a context needs a memory limit at least this large.
    pub memory_bytes: u64,
}

impl Template {
    pub fn new(core: &Core, name: &str, module: &Module) -> Result<Template, Error> {
        let memory_bytes = module
            .exports()
            .find_map(|export| match export.ty() {
                ExternType::Memory(memory) if export.name() == "memory" => {
                    Some(memory.minimum() * memory.page_size())
                }
                _ => None,
            })
            .ok_or_else(|| Error::internal("the template exports no memory"))?;
        let pre = host::instance_pre(core.wasm(), module)
            .map_err(|e| Error::internal_from("linking a template", e))?;
        Ok(Template {
            name: name.to_string(),
            pre,
            memory_bytes,
        })
    }
}

/// A live CPython instance.
pub(crate) struct PythonInstance {
    store: Store<HostState>,
    instance: Instance,
    turn: TypedFunc<(i32, i32), i32>,
    alloc: TypedFunc<i32, i32>,
    memory: Memory,
}

impl PythonInstance {
    /// Starts a context's interpreter: from the template when given (restored, kernel
    /// loaded), else from the plain runtime (the kernel is loaded now).
    pub async fn start(
        core: &Core,
        runtime: &PythonRuntime,
        store: Store<HostState>,
        spec: &StartSpec<'_>,
    ) -> Result<PythonInstance, Error> {
        let (pre, first_turn) = match spec.template {
            Some(t) => (&t.pre, RESTORE_TURN),
            None => (&runtime.pre, BOOT_TURN),
        };
        let initialize = spec.template.is_none();
        let mut live = PythonInstance::instantiate(core, pre, store, initialize).await?;
        live.first_turn(spec.capture, first_turn).await?;
        Ok(live)
    }

    /// Instantiates `pre` in `store`, calls `_initialize` when asked and the module exports
    /// it, and binds the write forwarding to the new memory.
    pub async fn instantiate(
        core: &Core,
        pre: &InstancePre<HostState>,
        mut store: Store<HostState>,
        initialize: bool,
    ) -> Result<PythonInstance, Error> {
        let failed = |what: &str, e: wasmtime::Error| {
            Error::internal_from(&format!("starting Python: {what}"), e)
        };
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| failed("instantiating", e))?;
        if initialize && let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize")
        {
            init.call_async(&mut store, ())
                .await
                .map_err(|e| failed("_initialize", e))?;
        }
        let turn = instance
            .get_typed_func(&mut store, "turn")
            .map_err(|e| failed("its turn export", e))?;
        let alloc = instance
            .get_typed_func(&mut store, "host_alloc")
            .map_err(|e| failed("its host_alloc export", e))?;
        let memory = core
            .writes()
            .bind(&mut store, instance)
            .await
            .map_err(|e| failed("binding writes", e))?;
        Ok(PythonInstance {
            store,
            instance,
            turn,
            alloc,
            memory,
        })
    }

    pub fn store(&mut self) -> &mut Store<HostState> {
        &mut self.store
    }

    pub fn instance(&self) -> Instance {
        self.instance
    }

    pub fn memory(&self) -> Memory {
        self.memory
    }

    /// Runs the start-up turn `source`, which must succeed without an error.
    pub async fn first_turn(&mut self, capture: &SharedCapture, source: &str) -> Result<(), Error> {
        crate::output::start(capture, 64 << 10);
        let status = self.turn(source).await;
        let output = crate::output::finish(capture);
        self.store.data_mut().door.boot = None;
        match status {
            Ok(0) if self.store.data().door.error.is_none() => Ok(()),
            other => Err(Error::internal(format!(
                "the Python kernel failed to start ({other:?}): {}",
                output.stderr.trim()
            ))),
        }
    }

    /// Loads the kernel into a plain interpreter.
    pub async fn boot(&mut self, capture: &SharedCapture) -> Result<(), Error> {
        self.first_turn(capture, BOOT_TURN).await
    }

    /// Runs one cell: the door holds it until the kernel asks, and collects what the kernel
    /// reports.
    pub async fn run_cell(&mut self, cell: Cell) -> wasmtime::Result<CellReport> {
        self.store.data_mut().door = Door {
            code: cell.code,
            env: cell.env,
            script: cell.mode == ExecutionMode::Script,
            ..Door::default()
        };
        let status = self.turn(RUN_TURN).await?;
        let door = std::mem::take(&mut self.store.data_mut().door);
        Ok(CellReport {
            status,
            results: door.results,
            error: door.error,
            fault: door.fault,
        })
    }

    /// Writes `source` into guest memory and runs it as one turn.
    pub async fn turn(&mut self, source: &str) -> wasmtime::Result<i32> {
        let len = i32::try_from(source.len())?;
        let ptr = self.alloc.call_async(&mut self.store, len).await?;
        self.memory
            .write(&mut self.store, ptr as u32 as usize, source.as_bytes())?;
        self.turn.call_async(&mut self.store, (ptr, len)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel recognises the run turn by its exact text to skip the runtime's parse.
    #[test]
    fn the_kernel_knows_the_run_turn() {
        assert!(KERNEL_SOURCE.contains(&format!("_RUN_TURN = \"{RUN_TURN}\"")));
    }
}
