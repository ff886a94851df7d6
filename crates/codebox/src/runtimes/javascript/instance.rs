//! A live QuickJS context, driven through the runtime's exported C API: start (restore the
//! snapshot or initialise afresh, then the per-context set-up) and run a cell.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmtime::{Instance, InstancePre, Memory, Store, TypedFunc};

use super::snapshot::READ_ENVIRON_EXPORT;
use super::{JsRuntime, PRELUDE, transform};
use crate::core::Core;
use crate::error::Error;
use crate::execution::DisplayData;
use crate::host::{GuestError, HostState};
use crate::output::SharedCapture;
use crate::runtimes::{Cell, CellReport, ExecutionMode, Language, StartSpec};

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

fn start_error(what: &str, e: wasmtime::Error) -> Error {
    Error::internal_from(&format!("starting JavaScript: {what}"), e)
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
        core: &Core,
        runtime: &JsRuntime,
        store: Store<HostState>,
        spec: &StartSpec<'_>,
    ) -> Result<JsInstance, Error> {
        let mut js = match &runtime.snapshot {
            Some(pre) => {
                let mut js = JsInstance::instantiate(core, pre, store).await?;
                js.read_environ().await?;
                js
            }
            None => {
                let mut js = JsInstance::instantiate(core, &runtime.pre, store).await?;
                js.initialize(runtime, spec.capture).await?;
                js
            }
        };
        js.set_up(spec.capture, spec.memory_limit, spec.env).await?;
        Ok(js)
    }

    pub fn store(&mut self) -> &mut Store<HostState> {
        &mut self.store
    }

    pub fn instance(&self) -> Instance {
        self.instance
    }

    /// Instantiates `pre` and binds the C API; QuickJS itself is not started yet unless
    /// `pre` is the snapshot.
    pub(super) async fn instantiate(
        core: &Core,
        pre: &InstancePre<HostState>,
        mut store: Store<HostState>,
    ) -> Result<JsInstance, Error> {
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| start_error("instantiating", e))?;
        macro_rules! export {
            ($name:literal) => {
                instance.get_typed_func(&mut store, $name).map_err(|e| {
                    Error::internal_from(&format!("the JavaScript runtime's {}", $name), e)
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
        let memory = core
            .writes()
            .bind(&mut store, instance)
            .await
            .map_err(|e| start_error("binding writes", e))?;
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
    pub(super) async fn initialize(
        &mut self,
        runtime: &JsRuntime,
        capture: &SharedCapture,
    ) -> Result<(), Error> {
        let initialize =
            self.api.initialize.clone().ok_or_else(|| {
                Error::internal("the JavaScript runtime does not export _initialize")
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
            return Err(Error::internal("starting JavaScript: qjs_init failed"));
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
                return Err(Error::internal(format!(
                    "starting JavaScript: module {name} failed"
                )));
            }
        }
        crate::output::start(capture, 64 << 10);
        let prelude = self.load_prelude(runtime).await;
        let boot_output = crate::output::finish(capture);
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
            return Err(Error::internal(format!(
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
            return Err(Error::internal(
                "starting JavaScript: the runtime has no context",
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
        getrandom::fill(&mut seed).map_err(|e| Error::internal_from("drawing a random seed", e))?;
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
        crate::output::start(capture, 64 << 10);
        let done = self
            .eval(&source, "<codebox-setup>", EVAL_TYPE_GLOBAL)
            .await;
        let output = crate::output::finish(capture);
        let done = done.map_err(|e| start_error("setup", e))?;
        if is_exception(done) {
            let message = self.exception_text().await.unwrap_or_default();
            return Err(Error::internal(format!(
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

    /// Runs one cell and returns the prelude's report of it.
    pub async fn run_cell(&mut self, cell: Cell) -> wasmtime::Result<CellReport> {
        let filename = format!("<cell {}>", cell.number);
        let typescript = cell.language == Language::TypeScript;
        let prepared = match transform::prepare(&cell.code, typescript) {
            Ok(prepared) => prepared,
            Err(e) => {
                return Ok(CellReport {
                    error: Some(GuestError {
                        name: "SyntaxError".into(),
                        value: e.message.clone(),
                        traceback: e.traceback(&filename),
                        errno: None,
                    }),
                    ..CellReport::default()
                });
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
        // A script shows no value, as `node -e` does not.
        let script = cell.mode == ExecutionMode::Script;
        let results = report
            .results
            .into_iter()
            .filter(|r| !(script && r.main))
            .map(|r| DisplayData {
                data: r.data,
                is_main_result: r.main,
            })
            .collect();
        let error = report.error.map(|e| {
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
        Ok(CellReport {
            status: 0,
            results,
            error,
            fault: None,
        })
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
