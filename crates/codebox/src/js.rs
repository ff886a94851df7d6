//! The JavaScript runtime: QuickJS-NG as a WASI reactor, driven through its exported C API.
//!
//! Each cell is prepared on the host (TypeScript stripped, notebook-style bindings, see
//! `transform`), evaluated as a global script with top-level await, and run until its promise,
//! microtasks and timers have settled. The prelude (`wasm-runtimes/javascript/prelude.js`)
//! turns the outcome into a JSON report that the host reads back as a string.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use wasmtime::{InstancePre, Memory, Store, TypedFunc};

use crate::Error;
use crate::engine::EngineInner;
use crate::execution::DisplayData;
use crate::host::{GuestError, HostState};
use crate::output::SharedCapture;
use crate::transform;

const PRELUDE: &str = include_str!("../../../wasm-runtimes/javascript/prelude.js");

const EVAL_TYPE_GLOBAL: i32 = 0;
const EVAL_TYPE_MODULE: i32 = 1;
const EVAL_FLAG_COMPILE_ONLY: i32 = 1 << 5;
const EVAL_FLAG_ASYNC: i32 = 1 << 7;
const WRITE_OBJ_BYTECODE: i32 = 1;
const READ_OBJ_BYTECODE: i32 = 1;
/// QuickJS tags, in the high 32 bits of a NaN-boxed value.
const TAG_EXCEPTION: i64 = 6;
const UNDEFINED: i64 = 3 << 32;
const EXCEPTION: i64 = TAG_EXCEPTION << 32;

/// The compiled JavaScript runtime, loaded on first use.
pub(crate) struct JsRuntime {
    pub pre: InstancePre<HostState>,
    /// The prelude as QuickJS bytecode, written by the first context that compiles it, so
    /// later contexts skip parsing it (most of a context's start).
    pub prelude_bytecode: OnceLock<Vec<u8>>,
}

/// The C API functions codebox calls.
struct Api {
    eval: TypedFunc<(i32, i32, i32, i32, i32), i64>,
    get_exception: TypedFunc<i32, i64>,
    to_cstring: TypedFunc<(i32, i32, i64, i32), i32>,
    free_cstring: TypedFunc<(i32, i32), ()>,
    free_value: TypedFunc<(i32, i64), ()>,
    await_value: TypedFunc<(i32, i64), i64>,
    run_loop: TypedFunc<i32, i32>,
    call: TypedFunc<(i32, i64, i64, i32, i32), i64>,
    get_property: TypedFunc<(i32, i64, i32), i64>,
    write_object: TypedFunc<(i32, i32, i64, i32), i32>,
    read_object: TypedFunc<(i32, i32, i32, i32), i64>,
    resolve_module: TypedFunc<(i32, i64), i32>,
    eval_function: TypedFunc<(i32, i64), i64>,
    malloc: TypedFunc<i32, i32>,
    free: TypedFunc<i32, ()>,
}

/// A live QuickJS context.
pub(crate) struct JsInstance {
    pub store: Store<HostState>,
    memory: Memory,
    api: Api,
    ctx: i32,
    /// The prelude's report functions (owned JS values).
    fulfilled: i64,
    threw: i64,
}

fn is_exception(value: i64) -> bool {
    value >> 32 == TAG_EXCEPTION
}

#[derive(Deserialize)]
struct Report {
    results: Vec<ReportResult>,
    error: Option<ReportError>,
}

#[derive(Deserialize)]
struct ReportResult {
    data: BTreeMap<String, serde_json::Value>,
    main: bool,
}

#[derive(Deserialize)]
struct ReportError {
    name: String,
    value: String,
    traceback: String,
}

impl JsInstance {
    pub async fn start(
        inner: &Arc<EngineInner>,
        runtime: &JsRuntime,
        mut store: Store<HostState>,
        capture: &SharedCapture,
        memory_limit: u64,
    ) -> Result<JsInstance, Error> {
        let instance = runtime
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(Error::internal)?;
        macro_rules! export {
            ($name:literal) => {
                instance.get_typed_func(&mut store, $name).map_err(|e| {
                    Error::Internal(format!("the JavaScript runtime's {}: {e}", $name))
                })?
            };
        }
        let initialize: TypedFunc<(), ()> = export!("_initialize");
        let init: TypedFunc<(), i32> = export!("qjs_init");
        let get_context: TypedFunc<(), i32> = export!("qjs_get_context");
        let get_runtime: TypedFunc<i32, i32> = export!("JS_GetRuntime");
        let set_memory_limit: TypedFunc<(i32, i32), ()> = export!("JS_SetMemoryLimit");
        let global_object: TypedFunc<i32, i64> = export!("JS_GetGlobalObject");
        let init_std: TypedFunc<(i32, i32), i32> = export!("js_init_module_std");
        let init_os: TypedFunc<(i32, i32), i32> = export!("js_init_module_os");
        let api = Api {
            eval: export!("JS_Eval"),
            get_exception: export!("JS_GetException"),
            to_cstring: export!("JS_ToCStringLen2"),
            free_cstring: export!("JS_FreeCString"),
            free_value: export!("JS_FreeValue"),
            await_value: export!("js_std_await"),
            run_loop: export!("js_std_loop"),
            call: export!("JS_Call"),
            get_property: export!("JS_GetPropertyStr"),
            write_object: export!("JS_WriteObject"),
            read_object: export!("JS_ReadObject"),
            resolve_module: export!("JS_ResolveModule"),
            eval_function: export!("JS_EvalFunction"),
            malloc: export!("malloc"),
            free: export!("free"),
        };
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Error::Internal("the JavaScript runtime exports no memory".into()))?;
        inner
            .writes
            .bind(&mut store, memory)
            .await
            .map_err(Error::internal)?;
        store.data_mut().door.boot = None;

        let fail = |what: &str, e: wasmtime::Error| {
            Error::Internal(format!("starting JavaScript: {what}: {e:#}"))
        };
        initialize
            .call_async(&mut store, ())
            .await
            .map_err(|e| fail("_initialize", e))?;
        if init
            .call_async(&mut store, ())
            .await
            .map_err(|e| fail("qjs_init", e))?
            != 0
        {
            return Err(Error::Internal(
                "starting JavaScript: qjs_init failed".into(),
            ));
        }
        let ctx = get_context
            .call_async(&mut store, ())
            .await
            .map_err(|e| fail("qjs_get_context", e))?;
        let rt = get_runtime
            .call_async(&mut store, ctx)
            .await
            .map_err(|e| fail("JS_GetRuntime", e))?;
        // QuickJS's own heap limit gives a catchable out-of-memory error before the store's.
        let heap = (memory_limit.saturating_mul(9) / 10).min(u32::MAX as u64) as u32;
        set_memory_limit
            .call_async(&mut store, (rt, heap as i32))
            .await
            .map_err(|e| fail("JS_SetMemoryLimit", e))?;

        let mut js = JsInstance {
            store,
            memory,
            api,
            ctx,
            fulfilled: UNDEFINED,
            threw: UNDEFINED,
        };
        // The prelude builds on QuickJS's `std` and `os` modules.
        for (name, init) in [("std", &init_std), ("os", &init_os)] {
            let (module_name, _) = js.write_c_string(name).await.map_err(|e| fail(name, e))?;
            let module = init
                .call_async(&mut js.store, (ctx, module_name))
                .await
                .map_err(|e| fail(name, e))?;
            if module == 0 {
                return Err(Error::Internal(format!(
                    "starting JavaScript: module {name} failed"
                )));
            }
        }
        capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start(64 << 10, None);
        let prelude = js.load_prelude(runtime).await;
        let boot_output = capture.lock().unwrap_or_else(|e| e.into_inner()).finish();
        let prelude = prelude.map_err(|e| fail("the prelude", e))?;
        let settled = if is_exception(prelude) {
            prelude
        } else {
            js.api
                .await_value
                .call_async(&mut js.store, (ctx, prelude))
                .await
                .map_err(|e| fail("the prelude", e))?
        };
        if is_exception(settled) {
            let message = js.exception_text().await.unwrap_or_default();
            return Err(Error::Internal(format!(
                "the JavaScript prelude failed: {message} {}",
                boot_output.stderr.trim()
            )));
        }
        js.free_value(settled)
            .await
            .map_err(|e| fail("the prelude", e))?;
        let global = global_object
            .call_async(&mut js.store, ctx)
            .await
            .map_err(|e| fail("globals", e))?;
        let codebox = js
            .property(global, "__codebox")
            .await
            .map_err(|e| fail("globals", e))?;
        js.fulfilled = js
            .property(codebox, "fulfilled")
            .await
            .map_err(|e| fail("globals", e))?;
        js.threw = js
            .property(codebox, "threw")
            .await
            .map_err(|e| fail("globals", e))?;
        js.free_value(codebox)
            .await
            .map_err(|e| fail("globals", e))?;
        js.free_value(global)
            .await
            .map_err(|e| fail("globals", e))?;
        Ok(js)
    }

    /// Runs the cell waiting in the door and puts the report there.
    pub async fn run_cell(
        &mut self,
        execution_count: u64,
        typescript: bool,
    ) -> wasmtime::Result<i32> {
        let source = std::mem::take(&mut self.store.data_mut().door.code);
        let filename = format!("<cell {execution_count}>");
        let prepared = match transform::prepare(&source, typescript) {
            Ok(prepared) => prepared,
            Err(e) => {
                self.store.data_mut().door.error = Some(GuestError {
                    name: "SyntaxError".into(),
                    value: e.message.clone(),
                    traceback: e.traceback(&filename),
                    errno: None,
                });
                return Ok(0);
            }
        };
        let outcome = self
            .eval(
                &prepared.code,
                &filename,
                EVAL_TYPE_GLOBAL | EVAL_FLAG_ASYNC,
            )
            .await?;
        let report = if is_exception(outcome) {
            let error = self
                .api
                .get_exception
                .call_async(&mut self.store, self.ctx)
                .await?;
            let report = self.call(self.threw, error).await?;
            self.free_value(error).await?;
            report
        } else {
            // Handing the outcome to the prelude first attaches a handler to a rejected cell,
            // so QuickJS does not treat it as an unhandled rejection.
            let report = self.call(self.fulfilled, outcome).await?;
            self.free_value(outcome).await?;
            report
        };
        // Microtasks and timers run to the end before the execution does.
        self.api
            .run_loop
            .call_async(&mut self.store, self.ctx)
            .await?;
        // js_std_await takes the promise and returns its settled value.
        let text_value = self
            .api
            .await_value
            .call_async(&mut self.store, (self.ctx, report))
            .await?;
        let text = self.read_string(text_value).await?;
        self.free_value(text_value).await?;
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| wasmtime::format_err!("the prelude's report is not valid: {e}"))?;
        let door = &mut self.store.data_mut().door;
        door.results = report
            .results
            .into_iter()
            .map(|r| DisplayData {
                data: r.data,
                is_main_result: r.main,
            })
            .collect();
        door.error = report.error.map(|e| {
            let traceback = match &prepared.source_map {
                Some(map) => transform::map_positions(&e.traceback, &filename, map),
                None => e.traceback,
            };
            GuestError {
                name: e.name,
                value: e.value,
                traceback,
                errno: None,
            }
        });
        Ok(0)
    }

    /// Evaluates the prelude module, from bytecode when an earlier context compiled it;
    /// returns the promise of its completion (or an exception).
    async fn load_prelude(&mut self, runtime: &JsRuntime) -> wasmtime::Result<i64> {
        let ctx = self.ctx;
        let module = match runtime.prelude_bytecode.get() {
            Some(bytecode) => {
                let (buf, len) = self.write_bytes(bytecode).await?;
                let module = self
                    .api
                    .read_object
                    .call_async(&mut self.store, (ctx, buf, len, READ_OBJ_BYTECODE))
                    .await;
                self.api.free.call_async(&mut self.store, buf).await?;
                module?
            }
            None => {
                let module = self
                    .eval(
                        PRELUDE,
                        "<codebox-prelude>",
                        EVAL_TYPE_MODULE | EVAL_FLAG_COMPILE_ONLY,
                    )
                    .await?;
                if !is_exception(module) {
                    self.save_bytecode(runtime, module).await?;
                }
                module
            }
        };
        if is_exception(module)
            || self
                .api
                .resolve_module
                .call_async(&mut self.store, (ctx, module))
                .await?
                < 0
        {
            return Ok(EXCEPTION);
        }
        self.api
            .eval_function
            .call_async(&mut self.store, (ctx, module))
            .await
    }

    async fn save_bytecode(&mut self, runtime: &JsRuntime, module: i64) -> wasmtime::Result<()> {
        let size_ptr = self.api.malloc.call_async(&mut self.store, 4).await?;
        let buf = self
            .api
            .write_object
            .call_async(
                &mut self.store,
                (self.ctx, size_ptr, module, WRITE_OBJ_BYTECODE),
            )
            .await?;
        let mut size = [0u8; 4];
        self.memory
            .read(&self.store, size_ptr as u32 as usize, &mut size)?;
        self.api.free.call_async(&mut self.store, size_ptr).await?;
        if buf != 0 {
            let mut bytes = vec![0u8; u32::from_le_bytes(size) as usize];
            self.memory
                .read(&self.store, buf as u32 as usize, &mut bytes)?;
            let _ = runtime.prelude_bytecode.set(bytes);
        }
        Ok(())
    }

    /// Copies `bytes` into guest memory; returns (pointer, length).
    async fn write_bytes(&mut self, bytes: &[u8]) -> wasmtime::Result<(i32, i32)> {
        let len = i32::try_from(bytes.len())?;
        let ptr = self
            .api
            .malloc
            .call_async(&mut self.store, len.max(1))
            .await?;
        if ptr == 0 {
            wasmtime::bail!("out of guest memory");
        }
        self.memory
            .write(&mut self.store, ptr as u32 as usize, bytes)?;
        Ok((ptr, len))
    }

    /// Evaluates `source`; the returned value is owned by the caller.
    async fn eval(&mut self, source: &str, filename: &str, flags: i32) -> wasmtime::Result<i64> {
        let (src, len) = self.write_c_string(source).await?;
        let (name, _) = self.write_c_string(filename).await?;
        let value = self
            .api
            .eval
            .call_async(&mut self.store, (self.ctx, src, len, name, flags))
            .await;
        self.api.free.call_async(&mut self.store, src).await?;
        self.api.free.call_async(&mut self.store, name).await?;
        value
    }

    /// Calls `function(argument)`; returns the (owned) result.
    async fn call(&mut self, function: i64, argument: i64) -> wasmtime::Result<i64> {
        let argv = self.api.malloc.call_async(&mut self.store, 8).await?;
        if argv == 0 {
            wasmtime::bail!("out of memory for a call");
        }
        self.memory.write(
            &mut self.store,
            argv as u32 as usize,
            &argument.to_le_bytes(),
        )?;
        let result = self
            .api
            .call
            .call_async(&mut self.store, (self.ctx, function, UNDEFINED, 1, argv))
            .await;
        self.api.free.call_async(&mut self.store, argv).await?;
        result
    }

    async fn property(&mut self, object: i64, name: &str) -> wasmtime::Result<i64> {
        let (key, _) = self.write_c_string(name).await?;
        let value = self
            .api
            .get_property
            .call_async(&mut self.store, (self.ctx, object, key))
            .await;
        self.api.free.call_async(&mut self.store, key).await?;
        value
    }

    async fn free_value(&mut self, value: i64) -> wasmtime::Result<()> {
        self.api
            .free_value
            .call_async(&mut self.store, (self.ctx, value))
            .await
    }

    /// A JS value as a Rust string (via `toString`).
    async fn read_string(&mut self, value: i64) -> wasmtime::Result<String> {
        let len_ptr = self.api.malloc.call_async(&mut self.store, 4).await?;
        let ptr = self
            .api
            .to_cstring
            .call_async(&mut self.store, (self.ctx, len_ptr, value, 0))
            .await?;
        let mut len = [0u8; 4];
        self.memory
            .read(&self.store, len_ptr as u32 as usize, &mut len)?;
        self.api.free.call_async(&mut self.store, len_ptr).await?;
        if ptr == 0 {
            wasmtime::bail!("a value could not be turned into a string");
        }
        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
        self.memory
            .read(&self.store, ptr as u32 as usize, &mut bytes)?;
        self.api
            .free_cstring
            .call_async(&mut self.store, (self.ctx, ptr))
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn exception_text(&mut self) -> wasmtime::Result<String> {
        let error = self
            .api
            .get_exception
            .call_async(&mut self.store, self.ctx)
            .await?;
        let text = self.read_string(error).await;
        self.free_value(error).await?;
        text
    }

    /// Copies `text` into guest memory with a NUL terminator; returns (pointer, length).
    async fn write_c_string(&mut self, text: &str) -> wasmtime::Result<(i32, i32)> {
        let len = i32::try_from(text.len())?;
        let ptr = self.api.malloc.call_async(&mut self.store, len + 1).await?;
        if ptr == 0 {
            wasmtime::bail!("out of guest memory for the source");
        }
        let at = ptr as u32 as usize;
        self.memory.write(&mut self.store, at, text.as_bytes())?;
        self.memory.write(&mut self.store, at + text.len(), &[0])?;
        Ok((ptr, len))
    }
}
