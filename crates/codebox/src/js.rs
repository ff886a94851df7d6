//! The JavaScript runtime: QuickJS-NG as a WASI reactor, driven through its exported C API.
//!
//! Each cell is prepared on the host (TypeScript stripped, notebook-style bindings, see
//! `transform`), evaluated as a global script with top-level await, and run until its promise,
//! microtasks and timers have settled. The prelude (`wasm-runtimes/javascript/prelude.js`)
//! turns the outcome into a JSON report that the host reads back as a string.
//!
//! Contexts start from a snapshot of the runtime taken right after QuickJS, its `std`/`os`
//! modules and the prelude were initialised (see [`snapshot_module`]); the prelude's
//! `setup()` then gives each its own environment, working directory, random seed and clock
//! origin.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use wasmtime::{Instance, InstancePre, Memory, Store, TypedFunc};

use wasmtime::Module;
use wasmtime_wizer::Wizer;

use crate::context::{ContextOptions, Language, StoreSpec, new_store};
use crate::engine::{Engine, EngineInner};
use crate::execution::DisplayData;
use crate::host::{GuestError, HostState};
use crate::output::SharedCapture;
use crate::template::{BuildSandbox, SnapshotSource, plain_functions, with_exports};
use crate::transform;
use crate::{Error, host};

pub(crate) const PRELUDE: &str = include_str!("../../../wasm-runtimes/javascript/prelude.js");

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
    /// The runtime snapshotted right after [`JsInstance::initialize`], which contexts are
    /// restored from; `None` when templates are off or the snapshot could not be made.
    pub snapshot: Option<InstancePre<HostState>>,
    /// The prelude as QuickJS bytecode, written by the first context that compiles it, so
    /// later contexts skip parsing it (most of a context's start).
    pub prelude_bytecode: OnceLock<Vec<u8>>,
}

/// The C API functions codebox calls.
struct Api {
    /// Absent from the snapshot, which wizer removes it from.
    initialize: Option<TypedFunc<(), ()>>,
    init: TypedFunc<(), i32>,
    get_context: TypedFunc<(), i32>,
    get_runtime: TypedFunc<i32, i32>,
    set_memory_limit: TypedFunc<(i32, i32), ()>,
    global_object: TypedFunc<i32, i64>,
    init_std: TypedFunc<(i32, i32), i32>,
    init_os: TypedFunc<(i32, i32), i32>,
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
    instance: Instance,
    memory: Memory,
    api: Api,
    ctx: i32,
    /// The prelude's report functions (owned JS values).
    fulfilled: i64,
    threw: i64,
}

/// Builds the JavaScript snapshot: QuickJS, its `std`/`os` modules and the prelude
/// initialised in an instrumented instance, its memory and globals written out with wizer,
/// and compiled (about 2 s in all, once; cached like a runtime). Contexts restored from it
/// skip most of their start. Blocking.
pub(crate) fn snapshot_module(
    engine: &Engine,
    runtime: &JsRuntime,
    wasm: &[u8],
) -> Result<Module, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("starting the snapshot's runtime: {e}")))?;
    let image = rt.block_on(snapshot(engine, runtime, wasm))?;
    Module::new(&engine.inner.wasm, &image)
        .map_err(|e| Error::internal(format!("compiling the JavaScript snapshot: {e:#}")))
}

/// Part of the snapshot's cache key: bump it when the way the snapshot is made changes.
pub(crate) const SNAPSHOT_FORMAT: u32 = 3;

/// wasi-libc's function that (re)reads the environment from WASI, and the name the snapshot
/// exports it under.
const READ_ENVIRON: &str = "__wasilibc_initialize_environ";
const READ_ENVIRON_EXPORT: &str = "codebox.read_environ";

async fn snapshot(engine: &Engine, runtime: &JsRuntime, wasm: &[u8]) -> Result<Vec<u8>, Error> {
    let inner = &engine.inner;
    let failed = |what: &str, e: wasmtime::Error| {
        Error::internal(format!("the JavaScript snapshot: {what}: {e:#}"))
    };
    let mut wizer = Wizer::new();
    wizer.init_func("_initialize");
    let (cx, instrumented) = wizer
        .instrument(wasm)
        .map_err(|e| failed("instrumenting", e))?;
    // wasi-libc reads the environment once, at start-up. The snapshot exports its reader so
    // a restored context's C library (`std.getenv`) can read its own.
    let read_environ = plain_functions(wasm, &[READ_ENVIRON])
        .map_err(|e| Error::internal(format!("the JavaScript snapshot: {e}")))?[0];
    let module = Module::new(&inner.wasm, &instrumented).map_err(|e| failed("compiling", e))?;
    let pre = host::instance_pre(&inner.wasm, &module).map_err(|e| failed("linking", e))?;
    // The same mounts, in the same order, as every JavaScript context.
    let sandbox = BuildSandbox::new()?;
    let options = ContextOptions::new().language(Language::JavaScript);
    let store = new_store(&StoreSpec {
        engine,
        options: &options,
        tmp: sandbox.tmp.path(),
        home: &sandbox.home,
        cwd: None,
        capture: &sandbox.capture,
        template_build: false,
    })?;
    let mut js = JsInstance::instantiate(inner, &pre, store).await?;
    js.initialize(runtime, &sandbox.capture).await?;
    let mut state = SnapshotSource {
        store: &mut js.store,
        instance: js.instance,
    };
    let image = wizer
        .snapshot(&cx, &mut state)
        .await
        .map_err(|e| failed("writing", e))?;
    // The snapshot keeps the module's function indices.
    with_exports(&image, &[(read_environ, READ_ENVIRON_EXPORT)])
        .map_err(|e| Error::internal(format!("the JavaScript snapshot: {e}")))
}

fn start_error(what: &str, e: wasmtime::Error) -> Error {
    Error::Internal(format!("starting JavaScript: {what}: {e:#}"))
}

fn start_capture(capture: &SharedCapture) {
    capture
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .start(64 << 10, None);
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
    /// Starts a context: restored from the runtime's snapshot when there is one, else with
    /// QuickJS, its `std`/`os` modules and the prelude initialised afresh; then the
    /// per-context setup (memory limit, environment, working directory, random seed).
    pub async fn start(
        inner: &Arc<EngineInner>,
        runtime: &JsRuntime,
        store: Store<HostState>,
        capture: &SharedCapture,
        memory_limit: u64,
        env: &[(String, String)],
    ) -> Result<JsInstance, Error> {
        let mut js = match &runtime.snapshot {
            Some(pre) => {
                let mut js = JsInstance::instantiate(inner, pre, store).await?;
                js.read_environ().await?;
                js
            }
            None => {
                let mut js = JsInstance::instantiate(inner, &runtime.pre, store).await?;
                js.initialize(runtime, capture).await?;
                js
            }
        };
        js.set_up(capture, memory_limit, env).await?;
        Ok(js)
    }

    /// Instantiates `pre` and binds the C API; QuickJS itself is not started yet unless
    /// `pre` is the snapshot.
    async fn instantiate(
        inner: &EngineInner,
        pre: &InstancePre<HostState>,
        mut store: Store<HostState>,
    ) -> Result<JsInstance, Error> {
        let instance = pre
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
        let api = Api {
            initialize: instance.get_typed_func(&mut store, "_initialize").ok(),
            init: export!("qjs_init"),
            get_context: export!("qjs_get_context"),
            get_runtime: export!("JS_GetRuntime"),
            set_memory_limit: export!("JS_SetMemoryLimit"),
            global_object: export!("JS_GetGlobalObject"),
            init_std: export!("js_init_module_std"),
            init_os: export!("js_init_module_os"),
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
        Ok(JsInstance {
            store,
            instance,
            memory,
            api,
            ctx: 0,
            fulfilled: UNDEFINED,
            threw: UNDEFINED,
        })
    }

    /// Starts QuickJS, its `std` and `os` modules, and evaluates the prelude.
    async fn initialize(
        &mut self,
        runtime: &JsRuntime,
        capture: &SharedCapture,
    ) -> Result<(), Error> {
        let initialize = self.api.initialize.clone().ok_or_else(|| {
            Error::Internal("the JavaScript runtime does not export _initialize".into())
        })?;
        initialize
            .call_async(&mut self.store, ())
            .await
            .map_err(|e| start_error("_initialize", e))?;
        let init = self
            .api
            .init
            .call_async(&mut self.store, ())
            .await
            .map_err(|e| start_error("qjs_init", e))?;
        if init != 0 {
            return Err(Error::Internal(
                "starting JavaScript: qjs_init failed".into(),
            ));
        }
        let ctx = self.context().await?;
        // The prelude builds on QuickJS's `std` and `os` modules.
        for (name, init) in [
            ("std", self.api.init_std.clone()),
            ("os", self.api.init_os.clone()),
        ] {
            let (module_name, _) = self
                .write_c_string(name)
                .await
                .map_err(|e| start_error(name, e))?;
            let module = init
                .call_async(&mut self.store, (ctx, module_name))
                .await
                .map_err(|e| start_error(name, e))?;
            if module == 0 {
                return Err(Error::Internal(format!(
                    "starting JavaScript: module {name} failed"
                )));
            }
        }
        start_capture(capture);
        let prelude = self.load_prelude(runtime).await;
        let boot_output = capture.lock().unwrap_or_else(|e| e.into_inner()).finish();
        let prelude = prelude.map_err(|e| start_error("the prelude", e))?;
        let settled = if is_exception(prelude) {
            prelude
        } else {
            self.api
                .await_value
                .call_async(&mut self.store, (ctx, prelude))
                .await
                .map_err(|e| start_error("the prelude", e))?
        };
        if is_exception(settled) {
            let message = self.exception_text().await.unwrap_or_default();
            return Err(Error::Internal(format!(
                "the JavaScript prelude failed: {message} {}",
                boot_output.stderr.trim()
            )));
        }
        self.free_value(settled)
            .await
            .map_err(|e| start_error("the prelude", e))
    }

    /// Makes a restored C library read this context's environment instead of the build's.
    async fn read_environ(&mut self) -> Result<(), Error> {
        let read = self
            .instance
            .get_typed_func::<(), ()>(&mut self.store, READ_ENVIRON_EXPORT)
            .map_err(|e| start_error(READ_ENVIRON_EXPORT, e))?;
        read.call_async(&mut self.store, ())
            .await
            .map_err(|e| start_error(READ_ENVIRON_EXPORT, e))
    }

    /// The QuickJS context, which the runtime keeps in a static once `qjs_init` ran.
    async fn context(&mut self) -> Result<i32, Error> {
        let ctx = self
            .api
            .get_context
            .call_async(&mut self.store, ())
            .await
            .map_err(|e| start_error("qjs_get_context", e))?;
        if ctx == 0 {
            return Err(Error::Internal(
                "starting JavaScript: the runtime has no context".into(),
            ));
        }
        self.ctx = ctx;
        Ok(ctx)
    }

    /// What makes this context its own: the memory limit, then the prelude's `setup` with
    /// the environment and a fresh random seed (from the host: the C library's view of the
    /// environment is the snapshot's); and the report functions the host calls after each
    /// cell.
    async fn set_up(
        &mut self,
        capture: &SharedCapture,
        memory_limit: u64,
        env: &[(String, String)],
    ) -> Result<(), Error> {
        let ctx = self.context().await?;
        let rt = self
            .api
            .get_runtime
            .call_async(&mut self.store, ctx)
            .await
            .map_err(|e| start_error("JS_GetRuntime", e))?;
        // QuickJS's own heap limit gives a catchable out-of-memory error before the store's.
        let heap = (memory_limit.saturating_mul(9) / 10).min(u32::MAX as u64) as u32;
        self.api
            .set_memory_limit
            .call_async(&mut self.store, (rt, heap as i32))
            .await
            .map_err(|e| start_error("JS_SetMemoryLimit", e))?;

        let mut seed = [0u8; 16];
        getrandom::fill(&mut seed).map_err(|e| Error::internal(format!("random seed: {e}")))?;
        let words: Vec<String> = seed
            .chunks(4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")).to_string())
            .collect();
        let env: serde_json::Map<String, serde_json::Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let env = serde_json::Value::Object(env);
        let source = format!("__codebox.setup([{}], {env})", words.join(","));
        start_capture(capture);
        let done = self
            .eval(&source, "<codebox-setup>", EVAL_TYPE_GLOBAL)
            .await;
        let output = capture.lock().unwrap_or_else(|e| e.into_inner()).finish();
        let done = done.map_err(|e| start_error("setup", e))?;
        if is_exception(done) {
            let message = self.exception_text().await.unwrap_or_default();
            return Err(Error::Internal(format!(
                "the JavaScript setup failed: {message} {}",
                output.stderr.trim()
            )));
        }
        self.free_value(done)
            .await
            .map_err(|e| start_error("setup", e))?;

        let global = self
            .api
            .global_object
            .call_async(&mut self.store, ctx)
            .await
            .map_err(|e| start_error("globals", e))?;
        let codebox = self
            .property(global, "__codebox")
            .await
            .map_err(|e| start_error("globals", e))?;
        self.fulfilled = self
            .property(codebox, "fulfilled")
            .await
            .map_err(|e| start_error("globals", e))?;
        self.threw = self
            .property(codebox, "threw")
            .await
            .map_err(|e| start_error("globals", e))?;
        self.free_value(codebox)
            .await
            .map_err(|e| start_error("globals", e))?;
        self.free_value(global)
            .await
            .map_err(|e| start_error("globals", e))
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
