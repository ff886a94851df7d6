//! The Python runtime: CPython on WASI driven through its reactor exports (`host_alloc`,
//! `turn`), with codebox's kernel loaded into each instance.

use std::sync::Arc;

use wasmtime::{Instance, InstancePre, Memory, Store, TypedFunc};

use crate::Error;
use crate::engine::EngineInner;
use crate::host::HostState;
use crate::output::SharedCapture;
use crate::template::Template;

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

/// The first turn of a context restored from a template: the kernel is already loaded, but
/// the streams, environment and working directory are the new context's.
const RESTORE_TURN: &str = "__import__('_codebox_kernel')._setup()";

/// A live CPython instance.
pub(crate) struct PythonInstance {
    pub store: Store<HostState>,
    pub instance: Instance,
    turn: TypedFunc<(i32, i32), i32>,
    alloc: TypedFunc<i32, i32>,
    pub memory: Memory,
}

impl PythonInstance {
    /// Starts a context's interpreter: from `template` when given (restored, kernel loaded),
    /// else from the plain runtime (the kernel is loaded now).
    pub async fn start(
        inner: &Arc<EngineInner>,
        store: Store<HostState>,
        capture: &SharedCapture,
        template: Option<&Template>,
    ) -> Result<PythonInstance, Error> {
        let (pre, first_turn) = match template {
            Some(t) => (&t.pre, RESTORE_TURN),
            None => (&inner.python, BOOT_TURN),
        };
        let mut live = PythonInstance::instantiate(inner, pre, store, template.is_none()).await?;
        live.first_turn(capture, first_turn).await?;
        Ok(live)
    }

    /// Instantiates `pre` in `store`, calls `_initialize` when asked and the module exports
    /// it, and binds the write forwarding to the new memory.
    pub async fn instantiate(
        inner: &EngineInner,
        pre: &InstancePre<HostState>,
        mut store: Store<HostState>,
        initialize: bool,
    ) -> Result<PythonInstance, Error> {
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(Error::internal)?;
        let func = |store: &mut Store<HostState>, name: &str| {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| Error::Internal(format!("the runtime does not export {name}")))
        };
        if initialize && let Ok(init) = func(&mut store, "_initialize") {
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
        Ok(PythonInstance {
            store,
            instance,
            turn,
            alloc,
            memory,
        })
    }

    /// Runs the start-up turn `source`, which must succeed without an error.
    pub async fn first_turn(&mut self, capture: &SharedCapture, source: &str) -> Result<(), Error> {
        capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start(64 << 10, None);
        let status = self.turn(source).await;
        let output = capture.lock().unwrap_or_else(|e| e.into_inner()).finish();
        self.store.data_mut().door.boot = None;
        match status {
            Ok(0) if self.store.data().door.error.is_none() => Ok(()),
            other => Err(Error::Internal(format!(
                "the Python kernel failed to start ({other:?}): {}",
                output.stderr.trim()
            ))),
        }
    }

    /// Loads the kernel into a plain interpreter.
    pub async fn boot(&mut self, capture: &SharedCapture) -> Result<(), Error> {
        self.first_turn(capture, BOOT_TURN).await
    }

    /// Runs the cell waiting in the door.
    pub async fn run_cell(&mut self) -> wasmtime::Result<i32> {
        self.turn(RUN_TURN).await
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
