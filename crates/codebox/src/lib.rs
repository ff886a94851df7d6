//! codebox runs untrusted Python inside WebAssembly sandboxes and returns what a notebook
//! would show: stdout, stderr, the value of the last expression, and full tracebacks.
//!
//! CPython (compiled to WASI, with numpy, pandas, matplotlib and more built in) runs in
//! Wasmtime with host-enforced limits on time, memory, fuel, output and disk. Each
//! [`Context`] keeps one live interpreter, so variables and imports persist between
//! executions, and sees only its own `/home/user`, a private `/tmp` and the read-only runtime.
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
#![deny(missing_docs)]

mod context;
mod engine;
mod error;
mod execution;
mod files;
mod font_cache;
mod fsutil;
mod host;
mod js;
mod limits;
mod module_cache;
mod output;
mod progress;
mod python;
mod runtime;
mod template;
mod transform;
mod workdir;

pub use context::{Context, ContextOptions, ExecuteRequest, Language, MAX_CODE_BYTES};
pub use engine::{Engine, EngineBuilder};
pub use error::Error;
pub use execution::{DisplayData, ErrorKind, Execution, ExecutionError, Stream};
pub use files::{FileEntry, FileKind, GUEST_HOME, HomeDir};
pub use limits::Limits;
pub use output::OutputCallback;
pub use progress::Progress;
pub use runtime::{InstalledRuntime, install_runtimes, installed_runtimes};
pub use template::{DATA_TEMPLATE, STDLIB_TEMPLATE, TemplateInfo, TemplateRecipe};

/// Prepares a JavaScript or TypeScript cell as a context would before running it (type
/// stripping, notebook bindings) and returns the JavaScript, or the syntax error's text.
/// Exposed for benchmarks; not a stable API.
#[doc(hidden)]
pub fn prepare_cell(source: &str, typescript: bool) -> Result<String, String> {
    transform::prepare(source, typescript)
        .map(|p| p.code)
        .map_err(|e| e.traceback("<cell>"))
}
