//! codebox runs untrusted code inside WebAssembly sandboxes and returns what a notebook would
//! show: stdout, stderr, the value of the last expression, rich results (tables, charts) and
//! full tracebacks.
//!
//! Python is CPython compiled to WASI with numpy, pandas, matplotlib and more built in;
//! JavaScript runs on QuickJS-NG; TypeScript is type-stripped on the host and run as
//! JavaScript. Everything runs in Wasmtime with host-enforced limits on time, memory, fuel,
//! output and disk. Each [`Context`] keeps one live interpreter, so variables and imports
//! persist between executions, and sees only its own `/home/user`, a private `/tmp` and the
//! read-only runtime.
//!
//! ```no_run
//! use codebox::{ContextOptions, Engine};
//!
//! # async fn demo() -> Result<(), codebox::Error> {
//! let engine = Engine::new()?; // installs and compiles the runtime on first use
//! let ctx = engine.create_context(ContextOptions::default()).await?;
//! ctx.files().write("data.csv", b"city,sales\nOslo,3\nLima,5\n")?;
//! ctx.execute("import pandas as pd\ndf = pd.read_csv('data.csv')").await?;
//! let run = ctx.execute("df.sales.sum()").await?;
//! assert_eq!(run.text(), Some("np.int64(8)"));
//! # Ok(()) }
//! ```
//!
//! How the crate is put together (crate-private below `Engine`):
//!
//! - [`Engine`] → the core (`core`: wasmtime engine, epoch ticker, cache, context slots,
//!   recycled directories) → runtime drivers (`runtimes`: one folder per language, one
//!   driver interface; `snapshot`: the wizer pipeline they share; `templates`: Python's
//!   templates) → [`Context`] (`context`: options, execution steps, outcome classification;
//!   `store`: every guest's WASI view, limits and deadline) → [`Execution`].
//! - The `runtimes` module docs hold the checklist for adding a language.
#![deny(missing_docs)]

mod context;
mod core;
mod digest;
mod engine;
mod error;
mod execution;
mod files;
mod fsutil;
mod host;
mod limits;
mod module_cache;
mod output;
mod progress;
mod runtimes;
mod snapshot;
mod store;
mod sync;
mod templates;
mod workdir;

pub use context::{Context, ContextOptions, ExecuteRequest, MAX_CODE_BYTES};
pub use engine::{Engine, EngineBuilder};
pub use error::Error;
pub use execution::{DisplayData, ErrorKind, Execution, ExecutionError, Stream};
pub use files::{FileEntry, FileKind, GUEST_HOME, HomeDir};
pub use limits::Limits;
pub use output::OutputCallback;
pub use progress::Progress;
pub use runtimes::python::template::{DATA_TEMPLATE, STDLIB_TEMPLATE, TemplateRecipe};
pub use runtimes::{
    ExecutionMode, InstalledRuntime, Language, install_runtimes, installed_runtimes,
};
pub use templates::TemplateInfo;

/// Prepares a JavaScript or TypeScript cell as a context would before running it (type
/// stripping, notebook bindings) and returns the JavaScript, or the syntax error's text.
/// Exposed for benchmarks; not a stable API.
#[doc(hidden)]
pub fn prepare_cell(source: &str, typescript: bool) -> Result<String, String> {
    runtimes::javascript::transform::prepare(source, typescript)
        .map(|p| p.code)
        .map_err(|e| e.traceback("<cell>"))
}
