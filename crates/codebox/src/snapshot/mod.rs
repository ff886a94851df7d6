//! Snapshots of an initialised guest, made with wizer, shared by every runtime: instrument
//! the module, run the runtime's recipe in an instance of it, write the instance's memory and
//! globals out as a new module, compile it and cache it. Python templates (recipe in
//! `runtimes::python::template`, registry in `templates`) and the JavaScript snapshot
//! (`runtimes::javascript::snapshot`) are both made this way.
//!
//! A snapshot is only as good as its contract: what a context restored from it shares with
//! the build and what it gets afresh. Each recipe states that contract in its module docs.

pub(crate) mod wasm;

use std::sync::Arc;

use wasmtime::{Instance, Module, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use crate::core::Core;
use crate::error::Error;
use crate::files::HomeDir;
use crate::host::HostState;
use crate::limits::Limits;
use crate::module_cache;
use crate::output::{Capture, SharedCapture};
use crate::store::{self, Layout, StoreSpec};

/// The wasmtime-wizer release (pinned to wasmtime's in Cargo.toml); part of every snapshot's
/// cache key.
pub(crate) const WIZER_VERSION: &str = "48.0.8";

/// A module instrumented for a snapshot: run its instrumented form, then [`Self::write`].
pub(crate) struct Instrumented<'a> {
    wizer: Wizer,
    cx: wasmtime_wizer::ModuleContext<'a>,
    /// The instrumented module, to compile and instantiate.
    pub wasm: Vec<u8>,
}

impl<'a> Instrumented<'a> {
    /// Instruments `wasm`; `init_func` is the export wizer would otherwise call itself (the
    /// recipe calls it, or not).
    pub fn new(wasm: &'a [u8], init_func: &str) -> Result<Instrumented<'a>, wasmtime::Error> {
        let mut wizer = Wizer::new();
        wizer.init_func(init_func);
        let (cx, instrumented) = wizer.instrument(wasm)?;
        Ok(Instrumented {
            wizer,
            cx,
            wasm: instrumented,
        })
    }

    /// Writes `instance`'s memory and globals into a new module.
    pub async fn write(
        &self,
        store: &mut Store<HostState>,
        instance: Instance,
    ) -> Result<Vec<u8>, wasmtime::Error> {
        let mut state = SnapshotSource { store, instance };
        self.wizer.snapshot(&self.cx, &mut state).await
    }
}

/// Hands the instance's globals and memory to wizer.
struct SnapshotSource<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
}

impl InstanceState for SnapshotSource<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        // wizer asks only for the globals its instrumentation exported.
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("the instrumented module exports the global wizer asks for");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => unreachable!("wizer snapshots only numeric globals, not {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("the instrumented module exports the memory wizer asks for");
        contents(memory.data(&*self.store));
    }
}

/// Private directories and an output capture for a build's instance, removed afterwards.
pub(crate) struct BuildSandbox {
    pub tmp: tempfile::TempDir,
    _home_dir: tempfile::TempDir,
    pub home: HomeDir,
    pub capture: SharedCapture,
}

impl BuildSandbox {
    pub fn new() -> Result<BuildSandbox, Error> {
        let temp = |prefix| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .map_err(|e| Error::io(&std::env::temp_dir(), e))
        };
        let tmp = temp("codebox-build-tmp-")?;
        let home_dir = temp("codebox-build-home-")?;
        let home = HomeDir::new(home_dir.path(), Limits::default().disk_bytes)?;
        Ok(BuildSandbox {
            tmp,
            _home_dir: home_dir,
            home,
            capture: Arc::new(std::sync::Mutex::new(Capture::default())),
        })
    }

    /// A store over these directories, laid out as `layout` says (as a context's would be),
    /// with no caller environment.
    pub fn store(
        &self,
        core: &Core,
        layout: &Layout,
        limits: &Limits,
    ) -> Result<Store<HostState>, Error> {
        store::new_store(
            core,
            &StoreSpec {
                layout,
                limits,
                env: &store::guest_env(layout, &Default::default(), None),
                tmp: self.tmp.path(),
                home: &self.home,
                capture: &self.capture,
                may_supply_bytecode: false,
            },
        )
    }
}

/// Loads the cached snapshot `stem`, or makes its image with `make`, compiles it off the
/// async threads and caches it. Concurrent callers may both make the image; only one
/// compiles and stores it.
pub(crate) async fn load_or_make<F>(core: &Arc<Core>, stem: &str, make: F) -> Result<Module, Error>
where
    F: AsyncFnOnce() -> Result<Vec<u8>, Error>,
{
    if let Some(module) = module_cache::load_existing(core.wasm(), &core.compiled_dir(), stem) {
        return Ok(module);
    }
    let image = make().await?;
    let (core, stem) = (core.clone(), stem.to_string());
    tokio::task::spawn_blocking(move || {
        module_cache::load_or_create(core.wasm(), &core.compiled_dir(), &stem, || {
            Module::new(core.wasm(), &image)
                .map_err(|e| Error::internal_from("compiling a snapshot", e))
        })
    })
    .await
    .map_err(|e| Error::internal_from("compiling a snapshot", e))?
}
