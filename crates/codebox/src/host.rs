//! What the host gives the guest: WASI preview 1, the `host.call` door, and the limits that
//! are checked inside host calls (memory growth, disk quota).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use wasmtime::error::Context as _;
use wasmtime::{Caller, Extern, Linker, Memory, ResourceLimiter, TypedFunc};
use wasmtime::{Result, format_err};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::execution::DisplayData;

/// Largest request the guest may send through the door (a result or an error report).
pub(crate) const MAX_DOOR_REQUEST: usize = 32 << 20;

/// `host.call` return codes.
const DOOR_OK: i32 = 0;
const DOOR_FAULT: i32 = -2;

/// WASI errno `nospc`; wasi-libc uses WASI's numbers, so Python sees `errno == 51` too.
const ERRNO_NOSPC: i32 = 51;
pub(crate) const GUEST_ENOSPC: i64 = ERRNO_NOSPC as i64;

/// Per-store state: everything host functions can reach.
pub(crate) struct HostState {
    pub wasi: WasiP1Ctx,
    pub memory: MemoryLimiter,
    pub door: Door,
    pub quota: DiskQuota,
    /// When the running execution must stop; checked on every epoch tick.
    pub deadline: Instant,
    /// Where quota-checked writes go on to WASI; set right after instantiation.
    pub forward: Option<Forward>,
}

/// Memory cap with a record of refusals, so a crash right after one can be reported as the
/// memory limit rather than as a plain crash.
pub(crate) struct MemoryLimiter {
    pub limit: usize,
    pub refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        let ok = desired <= self.limit;
        self.refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The guest kernel's source and, once a context has compiled it, its bytecode, so later
/// contexts skip the compile (~10 ms of a context's start).
#[derive(Debug)]
pub(crate) struct KernelCode {
    pub source: &'static str,
    pub bytecode: OnceLock<Vec<u8>>,
}

/// What the door offers while a context boots.
pub(crate) struct Boot {
    pub kernel: Arc<KernelCode>,
    /// Whether this boot may supply the shared bytecode: only a context whose start the
    /// caller cannot influence (no caller environment variables), so no context can plant
    /// code that others would run.
    pub may_supply_bytecode: bool,
}

/// The door's per-execution state: code waiting to be run and what the guest reported.
#[derive(Default)]
pub(crate) struct Door {
    /// Set only while the context boots.
    pub boot: Option<Boot>,
    pub code: String,
    /// Environment variables for this execution only.
    pub env: BTreeMap<String, String>,
    /// Run the code as a script (no value shown, `<string>` in tracebacks).
    pub script: bool,
    pub results: Vec<DisplayData>,
    pub error: Option<GuestError>,
    /// A malformed or oversized report; the execution's error says so.
    pub fault: Option<String>,
}

/// An uncaught exception as the guest kernel reports it.
#[derive(Debug, Deserialize)]
pub(crate) struct GuestError {
    pub name: String,
    pub value: String,
    pub traceback: String,
    /// `errno` of an `OSError`, used to recognise a disk-quota refusal.
    #[serde(default)]
    pub errno: Option<i64>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Code,
    Result {
        data: BTreeMap<String, serde_json::Value>,
        #[serde(default)]
        main: bool,
    },
    Error(GuestError),
}

impl Door {
    /// Answers one request; `Err` makes `host.call` return a fault code to the guest.
    fn handle(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        if let Some(rest) = request.strip_prefix(b"!") {
            return self.handle_boot(rest);
        }
        let request: Request = serde_json::from_slice(request)
            .map_err(|e| format!("the guest sent a malformed report: {e}"))?;
        match request {
            Request::Code => {
                // A JSON header line, then the source.
                let mut header = serde_json::Map::new();
                if !self.env.is_empty() {
                    header.insert("env".into(), serde_json::json!(self.env));
                }
                if self.script {
                    header.insert("mode".into(), "script".into());
                }
                let header = serde_json::Value::Object(header).to_string();
                let code = std::mem::take(&mut self.code);
                Ok([header.as_bytes(), b"\n", code.as_bytes()].concat())
            }
            Request::Result { data, main } => {
                self.results.push(DisplayData {
                    data,
                    is_main_result: main,
                });
                Ok(Vec::new())
            }
            Request::Error(error) => {
                self.error = Some(error);
                Ok(Vec::new())
            }
        }
    }
}

impl Door {
    fn handle_boot(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        let boot = self
            .boot
            .as_ref()
            .ok_or("kernel requests are only answered at start")?;
        if request == b"kernel" {
            return Ok(match boot.kernel.bytecode.get() {
                Some(bytecode) => [b"M".as_slice(), bytecode].concat(),
                None => [b"S".as_slice(), boot.kernel.source.as_bytes()].concat(),
            });
        }
        if let Some(bytecode) = request.strip_prefix(b"bytecode") {
            if boot.may_supply_bytecode {
                let _ = boot.kernel.bytecode.set(bytecode.to_vec());
            }
            return Ok(Vec::new());
        }
        Err("unknown kernel request".into())
    }
}

/// Disk quota over the context's writable directories, checked on each guest write.
///
/// Keeps an estimate (bytes found by the last walk plus bytes written since). Only when the
/// estimate says a write would go over is the real usage measured again, so the common path
/// costs one addition.
pub(crate) struct DiskQuota {
    pub limit: u64,
    pub dirs: Vec<PathBuf>,
    estimate: u64,
    last_walk: Option<Instant>,
    pub refused: bool,
}

impl DiskQuota {
    pub(crate) fn new(limit: u64, dirs: Vec<PathBuf>) -> DiskQuota {
        DiskQuota {
            limit,
            dirs,
            estimate: 0,
            last_walk: None,
            refused: false,
        }
    }

    /// Measures usage afresh.
    fn resync(&mut self) {
        self.estimate = self.dirs.iter().map(|d| crate::files::tree_size(d)).sum();
        self.last_walk = Some(Instant::now());
    }

    /// Called before each execution. Files may have changed since the last walk (uploads,
    /// other contexts sharing the home directory), so re-measure, but at most once a second:
    /// walking a large directory on every tiny execution would cost more than the execution.
    pub(crate) fn start_execution(&mut self) {
        self.refused = false;
        if self
            .last_walk
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.resync();
        }
    }

    /// Whether `bytes` more may be written.
    fn admit(&mut self, bytes: u64) -> bool {
        if self.estimate.saturating_add(bytes) <= self.limit {
            self.estimate += bytes;
            return true;
        }
        // Re-measure, but not more than every 100 ms when a guest keeps knocking.
        let stale = self
            .last_walk
            .is_none_or(|t| t.elapsed() > Duration::from_millis(100));
        if stale {
            self.resync();
            if self.estimate.saturating_add(bytes) <= self.limit {
                self.estimate += bytes;
                return true;
            }
        }
        self.refused = true;
        false
    }
}

/// `module` linked against WASI and the host door, ready to instantiate.
pub(crate) fn instance_pre(
    engine: &wasmtime::Engine,
    module: &wasmtime::Module,
) -> Result<wasmtime::InstancePre<HostState>> {
    let mut linker = Linker::new(engine);
    add_to_linker(&mut linker)?;
    linker.instantiate_pre(module)
}

fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |s| &mut s.wasi)?;
    linker.func_wrap_async(
        "host",
        "call",
        |mut caller: Caller<'_, HostState>, args: (i32, i32, i32, i32)| {
            Box::new(async move { door_call(&mut caller, args).await })
        },
    )?;

    // Writes go through the quota check first, then on to WASI through `WriteForwarding`.
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut caller: Caller<'_, HostState>,
         (fd, iovs, iovs_len, nwritten): (i32, i32, i32, i32)| {
            Box::new(async move {
                if !admit_iovs(&mut caller, iovs, iovs_len)? {
                    return Ok(ERRNO_NOSPC);
                }
                let f = caller
                    .data()
                    .forward
                    .as_ref()
                    .context("writes are forwarded")?
                    .write
                    .clone();
                f.call_async(&mut caller, (fd, iovs, iovs_len, nwritten))
                    .await
            })
        },
    )?;
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "fd_pwrite",
        |mut caller: Caller<'_, HostState>,
         (fd, iovs, iovs_len, offset, nwritten): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                if !admit_iovs(&mut caller, iovs, iovs_len)? {
                    return Ok(ERRNO_NOSPC);
                }
                let f = caller
                    .data()
                    .forward
                    .as_ref()
                    .context("writes are forwarded")?
                    .pwrite
                    .clone();
                f.call_async(&mut caller, (fd, iovs, iovs_len, offset, nwritten))
                    .await
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// WASI reads guest memory through the *calling* instance's `memory` export, so the original
/// write functions must be called from wasm. This shim imports the interpreter's memory,
/// re-exports it, and forwards to the originals.
const WRITE_SHIM_WAT: &str = r#"
(module
  (import "env" "memory" (memory 0))
  (import "wasi" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi" "fd_pwrite" (func $fd_pwrite (param i32 i32 i32 i64 i32) (result i32)))
  (export "memory" (memory 0))
  (func (export "fd_write") (param i32 i32 i32 i32) (result i32)
    (call $fd_write (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "fd_pwrite") (param i32 i32 i32 i64 i32) (result i32)
    (call $fd_pwrite (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4))))
"#;

/// What a store needs to forward writes past the quota check.
pub(crate) struct WriteForwarding {
    wasi: Linker<HostState>,
    shim: wasmtime::Module,
}

impl WriteForwarding {
    pub(crate) fn new(engine: &wasmtime::Engine) -> Result<WriteForwarding> {
        let mut wasi = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut wasi, |s: &mut HostState| &mut s.wasi)?;
        let shim = wasmtime::Module::new(engine, WRITE_SHIM_WAT)?;
        Ok(WriteForwarding { wasi, shim })
    }

    /// Instantiates the shim over `instance`'s memory in `store`; returns that memory.
    pub(crate) async fn bind(
        &self,
        store: &mut wasmtime::Store<HostState>,
        instance: wasmtime::Instance,
    ) -> Result<Memory> {
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| format_err!("the guest exports no memory"))?;
        let mut linker = Linker::new(store.engine());
        linker.define(&mut *store, "env", "memory", memory)?;
        for name in ["fd_write", "fd_pwrite"] {
            let original = self.wasi.get(&mut *store, "wasi_snapshot_preview1", name)?;
            linker.define(&mut *store, "wasi", name, original)?;
        }
        let shim = linker.instantiate_async(&mut *store, &self.shim).await?;
        let write = shim.get_typed_func(&mut *store, "fd_write")?;
        let pwrite = shim.get_typed_func(&mut *store, "fd_pwrite")?;
        store.data_mut().forward = Some(Forward { write, pwrite });
        Ok(memory)
    }
}

/// The shim's exports, bound to one store.
pub(crate) struct Forward {
    write: TypedFunc<(i32, i32, i32, i32), i32>,
    pwrite: TypedFunc<(i32, i32, i32, i64, i32), i32>,
}

fn guest_memory(caller: &mut Caller<'_, HostState>) -> Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(format_err!("the guest exports no memory")),
    }
}

/// Sums the lengths of a ciovec array and asks the quota for that many bytes. Malformed
/// arrays are left to WASI, which reports them to the guest as errors.
fn admit_iovs(caller: &mut Caller<'_, HostState>, iovs: i32, iovs_len: i32) -> Result<bool> {
    let memory = guest_memory(caller)?;
    let data = memory.data(&caller);
    let mut total = 0u64;
    for i in 0..(iovs_len as u32 as usize).min(1024) {
        let at = iovs as u32 as usize + i * 8 + 4;
        let Some(bytes) = data.get(at..at + 4) else {
            break;
        };
        total += u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as u64;
    }
    Ok(caller.data_mut().quota.admit(total))
}

/// `host.call(req_ptr, req_len, out_ptr_ptr, out_len_ptr) -> i32`: the guest sends a request
/// and gets the answer in memory it allocates with its `host_alloc` export.
async fn door_call(
    caller: &mut Caller<'_, HostState>,
    (ptr, len, out_ptr_ptr, out_len_ptr): (i32, i32, i32, i32),
) -> Result<i32> {
    let memory = guest_memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let (out_ptr_ptr, out_len_ptr) = (out_ptr_ptr as u32 as usize, out_len_ptr as u32 as usize);
    let size = memory.data_size(&caller);
    if ptr.saturating_add(len) > size || out_ptr_ptr + 4 > size || out_len_ptr + 4 > size {
        return Ok(DOOR_FAULT);
    }
    if len > MAX_DOOR_REQUEST {
        caller.data_mut().door.fault = Some(format!(
            "a report of {len} bytes is over the {MAX_DOOR_REQUEST}-byte limit"
        ));
        return Ok(DOOR_FAULT);
    }
    let answer = {
        let request = &memory.data(&caller)[ptr..ptr + len];
        let request = request.to_vec();
        caller.data_mut().door.handle(&request)
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(fault) => {
            caller.data_mut().door.fault = Some(fault);
            return Ok(DOOR_FAULT);
        }
    };
    let mut at = 0usize;
    if !answer.is_empty() {
        let alloc = match caller.get_export("host_alloc") {
            Some(Extern::Func(f)) => f.typed::<i32, i32>(&caller)?,
            _ => return Ok(DOOR_FAULT),
        };
        at = alloc.call_async(&mut *caller, answer.len() as i32).await? as u32 as usize;
        if at == 0 || at.saturating_add(answer.len()) > memory.data_size(&caller) {
            return Ok(DOOR_FAULT);
        }
        memory.write(&mut *caller, at, &answer)?;
    }
    memory.write(&mut *caller, out_ptr_ptr, &(at as u32).to_le_bytes())?;
    memory.write(
        &mut *caller,
        out_len_ptr,
        &(answer.len() as u32).to_le_bytes(),
    )?;
    Ok(DOOR_OK)
}
