//! JavaScript's snapshot recipe: QuickJS, its `std`/`os` modules and the prelude initialised
//! in an instrumented instance, written out with wizer, compiled and cached (about 2 s, once).
//!
//! What a restored context sees: its own environment (the C library re-reads it through
//! wasi-libc's reader, which the snapshot exports), working directory, `Math.random` seed and
//! `performance.now()` origin, all set by the prelude's `setup()` at start. Nothing else runs
//! before the snapshot, so nothing else is shared.

use std::sync::Arc;

use wasmtime::{InstancePre, Module};

use super::{JsInstance, JsRuntime, PRELUDE};
use crate::core::Core;
use crate::error::Error;
use crate::host::{self, HostState};
use crate::limits::Limits;
use crate::runtimes::RuntimeFiles;
use crate::snapshot::{self, BuildSandbox, Instrumented, wasm};
use crate::{digest, module_cache};

/// Part of the snapshot's cache key: bump it when the way the snapshot is made changes.
const SNAPSHOT_FORMAT: u32 = 3;

/// wasi-libc's function that (re)reads the environment from WASI, and the name the snapshot
/// exports it under.
const READ_ENVIRON: &str = "__wasilibc_initialize_environ";
pub(super) const READ_ENVIRON_EXPORT: &str = "codebox.read_environ";

/// The snapshot of `runtime`, from the cache or made now.
pub(super) async fn load_or_make(
    core: &Arc<Core>,
    runtime: &JsRuntime,
    files: &RuntimeFiles,
) -> Result<InstancePre<HostState>, Error> {
    let inputs = format!(
        "{} snapshot {SNAPSHOT_FORMAT} {} {}",
        files.module_sha256,
        snapshot::WIZER_VERSION,
        digest::hex_sha256(PRELUDE.as_bytes())
    );
    let key = module_cache::cache_key(core.wasm(), &inputs);
    let module: Module =
        snapshot::load_or_make(core, &format!("javascript-snapshot-{key}"), async || {
            let wasm =
                std::fs::read(&files.module_path).map_err(|e| Error::io(&files.module_path, e))?;
            make(core, runtime, &wasm).await
        })
        .await?;
    host::instance_pre(core.wasm(), &module)
        .map_err(|e| Error::internal_from("linking the JavaScript snapshot", e))
}

/// Runs the recipe and returns the snapshot's image.
async fn make(core: &Core, runtime: &JsRuntime, wasm: &[u8]) -> Result<Vec<u8>, Error> {
    let failed = |what: &str, e: wasmtime::Error| {
        Error::internal_from(&format!("the JavaScript snapshot: {what}"), e)
    };
    let instrumented =
        Instrumented::new(wasm, "_initialize").map_err(|e| failed("instrumenting", e))?;
    // wasi-libc reads the environment once, at start-up. The snapshot exports its reader so
    // a restored context's C library (`std.getenv`) can read its own.
    let read_environ = wasm::plain_functions(wasm, &[READ_ENVIRON])
        .map_err(|e| Error::internal(format!("the JavaScript snapshot: {e}")))?[0];
    let module =
        Module::new(core.wasm(), &instrumented.wasm).map_err(|e| failed("compiling", e))?;
    let pre = host::instance_pre(core.wasm(), &module).map_err(|e| failed("linking", e))?;
    // The same mounts, in the same order, as every JavaScript context.
    let sandbox = BuildSandbox::new()?;
    let store = sandbox.store(core, &runtime.layout(), &Limits::default())?;
    let mut js = JsInstance::instantiate(core, &pre, store).await?;
    js.initialize(runtime, &sandbox.capture).await?;
    let instance = js.instance();
    let image = instrumented
        .write(js.store(), instance)
        .await
        .map_err(|e| failed("writing", e))?;
    // The snapshot keeps the module's function indices.
    wasm::with_exports(&image, &[(read_environ, READ_ENVIRON_EXPORT)])
        .map_err(|e| Error::internal(format!("the JavaScript snapshot: {e}")))
}
