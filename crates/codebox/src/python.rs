//! The Python runtime: CPython on WASI driven through its reactor exports (`host_alloc`,
//! `turn`), with codebox's kernel loaded into each instance.

use std::sync::Arc;

use wasmtime::{Memory, Store, TypedFunc};

use crate::Error;
use crate::engine::EngineInner;
use crate::host::HostState;
use crate::output::SharedCapture;

pub(crate) const KERNEL_SOURCE: &str =
    include_str!("../../../wasm-runtimes/python/codebox_kernel.py");

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

/// A live CPython instance.
pub(crate) struct PythonInstance {
    pub store: Store<HostState>,
    turn: TypedFunc<(i32, i32), i32>,
    alloc: TypedFunc<i32, i32>,
    memory: Memory,
}

impl PythonInstance {
    /// Instantiates the runtime in `store` and loads the kernel.
    pub async fn start(
        inner: &Arc<EngineInner>,
        mut store: Store<HostState>,
        capture: &SharedCapture,
    ) -> Result<PythonInstance, Error> {
        let instance = inner
            .python
            .instantiate_async(&mut store)
            .await
            .map_err(Error::internal)?;
        let func = |store: &mut Store<HostState>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| Error::Internal(format!("the runtime does not export {name}")))
        };
        if let Ok(init) = func(&mut store, "_initialize") {
            init.typed::<(), ()>(&store)
                .map_err(Error::internal)?
                .call_async(&mut store, ())
                .await
                .map_err(Error::internal)?;
        }
        let turn = func(&mut store, "turn")?
            .typed(&store)
            .map_err(Error::internal)?;
        let alloc = func(&mut store, "host_alloc")?
            .typed(&store)
            .map_err(Error::internal)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Error::Internal("the runtime exports no memory".into()))?;
        inner
            .writes
            .bind(&mut store, memory)
            .await
            .map_err(Error::internal)?;
        let mut live = PythonInstance {
            store,
            turn,
            alloc,
            memory,
        };

        capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start(64 << 10, None);
        let status = live.turn(BOOT_TURN).await;
        let boot_output = capture.lock().unwrap_or_else(|e| e.into_inner()).finish();
        live.store.data_mut().door.boot = None;
        match status {
            Ok(0) if live.store.data().door.error.is_none() => Ok(live),
            other => Err(Error::Internal(format!(
                "the Python kernel failed to start ({other:?}): {}",
                boot_output.stderr.trim()
            ))),
        }
    }

    /// Runs the cell waiting in the door.
    pub async fn run_cell(&mut self) -> wasmtime::Result<i32> {
        self.turn(RUN_TURN).await
    }

    /// Writes `source` into guest memory and runs it as one turn.
    async fn turn(&mut self, source: &str) -> wasmtime::Result<i32> {
        let len = i32::try_from(source.len())?;
        let ptr = self.alloc.call_async(&mut self.store, len).await?;
        self.memory
            .write(&mut self.store, ptr as u32 as usize, source.as_bytes())?;
        self.turn.call_async(&mut self.store, (ptr, len)).await
    }
}
