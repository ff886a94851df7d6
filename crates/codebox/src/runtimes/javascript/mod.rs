//! The JavaScript runtime: QuickJS-NG as a WASI reactor, driven through its exported C API.
//! TypeScript runs on it too, type-stripped on the host first.
//!
//! Each cell is prepared on the host (TypeScript stripped, notebook-style bindings, see
//! [`transform`]), evaluated as a global script with top-level await, and run until its
//! promise, microtasks and timers have settled. The prelude
//! (`wasm-runtimes/javascript/prelude.js`) turns the outcome into a JSON report that the host
//! reads back as a string and returns as the cell's report.
//!
//! Contexts start from a snapshot of the runtime taken right after QuickJS, its `std`/`os`
//! modules and the prelude were initialised (see [`snapshot`]); the prelude's `setup()` then
//! gives each its own environment, working directory, random seed and clock origin.

mod instance;
mod snapshot;
pub(crate) mod transform;

use std::sync::{Arc, OnceLock};

use wasmtime::InstancePre;

use super::RuntimeKind;
use crate::core::Core;
use crate::error::Error;
use crate::host::{self, HostState};
use crate::store::Layout;

pub(crate) use instance::JsInstance;

/// The pinned runtime package.
pub(crate) const MANIFEST: &str = include_str!("../../../../../wasm-runtimes/javascript.toml");

/// The guest-side prelude: console, `display`, `require('fs')`, the report.
const PRELUDE: &str = include_str!("../../../../../wasm-runtimes/javascript/prelude.js");

/// The compiled JavaScript runtime, loaded when the first JavaScript context starts.
pub(crate) struct JsRuntime {
    pre: InstancePre<HostState>,
    /// The runtime snapshotted right after its initialisation, which contexts are restored
    /// from; `None` when templates are off or the snapshot could not be made.
    snapshot: Option<InstancePre<HostState>>,
    /// The prelude as QuickJS bytecode, written by the first context that compiles it, so
    /// later contexts skip parsing it (most of a context's start).
    prelude_bytecode: OnceLock<Vec<u8>>,
    layout: Layout,
}

impl JsRuntime {
    /// Installs (if allowed and needed), verifies and compiles the runtime, then loads or
    /// makes its snapshot.
    pub async fn load(core: Arc<Core>) -> Result<Arc<JsRuntime>, Error> {
        let loading = core.clone();
        let (files, module) = tokio::task::spawn_blocking(move || {
            super::load_module(&loading, RuntimeKind::JavaScript)
        })
        .await
        .map_err(|e| Error::internal_from("loading JavaScript", e))??;
        let pre = host::instance_pre(core.wasm(), &module)
            .map_err(|e| Error::internal_from("linking the JavaScript runtime", e))?;
        let mut runtime = JsRuntime {
            pre,
            snapshot: None,
            prelude_bytecode: OnceLock::new(),
            layout: Layout {
                argv: vec!["qjs".into()],
                ..Layout::default()
            },
        };
        if core.templates_enabled() {
            // Without the snapshot contexts start the slow way; say why, once, and go on.
            match snapshot::load_or_make(&core, &runtime, &files).await {
                Ok(pre) => runtime.snapshot = Some(pre),
                Err(e) => core.progress().step(&format!(
                    "JavaScript contexts start without a snapshot: {e}"
                )),
            }
        }
        Ok(Arc::new(runtime))
    }

    /// What a context's interpreter sees: argv `qjs`, no mounts.
    pub fn layout(&self) -> Layout {
        self.layout.clone()
    }
}
