//! The guest language runtimes, behind one driver interface.
//!
//! Each language has a folder that owns everything about it: its pinned manifest
//! (`wasm-runtimes/<name>.toml`, included here), its guest-side source, its store
//! [`Layout`](crate::store::Layout) (argv, environment, mounts), its snapshot recipe and its
//! cell runner. The rest of the engine sees only this module:
//!
//! - [`Language`]: the one list of languages, with the names, aliases, file extensions and
//!   commands the front ends accept;
//! - [`Runtime`]: a loaded runtime (installed, verified, compiled, snapshotted), with the
//!   layout of its guests;
//! - [`Instance`]: a live interpreter that runs one [`Cell`] at a time and returns a
//!   [`CellReport`].
//!
//! The `match` over the runtimes lives in this file only. Every runtime is loaded through
//! [`load_module`]: manifest → installed and verified files → compiled module, cached.
//!
//! # Adding a language
//!
//! 1. `wasm-runtimes/<name>.toml`: the pinned package, version and sha256 of each file (or
//!    the pinned sources a build script turns into the module), and the guest-side code in
//!    `wasm-runtimes/<name>/`.
//! 2. `runtimes/<name>/mod.rs`: `MANIFEST` (`include_str!`), a `<Name>Runtime` loaded with
//!    [`load_module`] that gives its [`Layout`](crate::store::Layout), and an instance type
//!    with `start` and `run_cell(&Cell) -> CellReport`; a `snapshot.rs` if it starts from a
//!    snapshot (through [`snapshot`](crate::snapshot)).
//! 3. This file: a [`Language`] variant (in [`Language::ALL`], with its name, aliases,
//!    extensions and commands), a [`RuntimeKind`] variant with its manifest, and one arm in
//!    each `match` of [`Runtime`] and [`Instance`]; the loaded runtime in [`Runtimes`].
//! 4. Tests: `tests/all/<name>.rs` (state across cells, errors with tracebacks, limits,
//!    files), and the server's language tests pick the new name up from [`Language::ALL`].
//!
//! The server, the CLI, the OpenAPI document and every error message take their language
//! lists from [`Language::ALL`]; nothing else needs an edit.

pub(crate) mod install;
pub(crate) mod javascript;
pub(crate) mod python;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime::{Module, Store};

use crate::core::Core;
use crate::error::Error;
use crate::execution::DisplayData;
use crate::host::{GuestError, HostState};
use crate::module_cache;
use crate::output::SharedCapture;
use crate::store::Layout;

pub use install::InstalledRuntime;
use install::Manifest;
pub(crate) use install::RuntimeFiles;

/// The languages a context can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Language {
    /// CPython 3.15 with the scientific stack.
    #[default]
    Python,
    /// JavaScript on QuickJS-NG.
    JavaScript,
    /// TypeScript, type-stripped on the host, then run as JavaScript.
    TypeScript,
}

impl Language {
    /// Every language, in the order the APIs list them.
    pub const ALL: [Language; 3] = [Language::Python, Language::JavaScript, Language::TypeScript];

    /// The language's name as the APIs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
        }
    }

    /// Other names clients use for it.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Language::Python => &["python3", "py"],
            Language::JavaScript => &["js", "node", "nodejs"],
            Language::TypeScript => &["ts"],
        }
    }

    /// File extensions of its scripts, without the dot.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Language::Python => &["py"],
            Language::JavaScript => &["js", "mjs", "cjs"],
            Language::TypeScript => &["ts", "mts"],
        }
    }

    /// The commands that run it as a process (`python3 -c CODE`, `node script.js`).
    pub fn commands(self) -> &'static [&'static str] {
        match self {
            Language::Python => &["python", "python3"],
            Language::JavaScript => &["node"],
            Language::TypeScript => &[],
        }
    }

    /// The flag its commands take for inline code: `-c` for Python, `-e` otherwise.
    pub fn inline_flag(self) -> &'static str {
        match self {
            Language::Python => "-c",
            Language::JavaScript | Language::TypeScript => "-e",
        }
    }

    /// Parses a language name or alias as clients send it, trimmed, in any case.
    pub fn parse(name: &str) -> Option<Language> {
        let name = name.trim().to_ascii_lowercase();
        Language::ALL
            .into_iter()
            .find(|l| l.name() == name || l.aliases().contains(&name.as_str()))
    }

    /// The language of a script with this extension (without the dot, any case).
    pub fn from_extension(extension: &str) -> Option<Language> {
        let extension = extension.to_ascii_lowercase();
        Language::ALL
            .into_iter()
            .find(|l| l.extensions().contains(&extension.as_str()))
    }

    /// The language a command runs, by the program's file name (`/usr/bin/python3` works).
    pub fn from_command(program: &str) -> Option<Language> {
        let program = program.rsplit('/').next().unwrap_or(program);
        Language::ALL
            .into_iter()
            .find(|l| l.commands().contains(&program))
    }

    /// The names of all languages, comma-separated, for messages.
    pub fn list() -> String {
        Language::ALL.map(Language::name).join(", ")
    }

    /// Whether its contexts start from templates (named snapshots made from a recipe).
    pub(crate) fn has_templates(self) -> bool {
        self.runtime() == RuntimeKind::Python
    }

    /// The runtime that runs this language.
    pub(crate) fn runtime(self) -> RuntimeKind {
        match self {
            Language::Python => RuntimeKind::Python,
            Language::JavaScript | Language::TypeScript => RuntimeKind::JavaScript,
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The guest runtimes (one may serve several languages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuntimeKind {
    Python,
    JavaScript,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Python, RuntimeKind::JavaScript];

    fn manifest(self) -> Manifest {
        let (file, text) = match self {
            RuntimeKind::Python => ("python.toml", python::MANIFEST),
            RuntimeKind::JavaScript => ("javascript.toml", javascript::MANIFEST),
        };
        Manifest::parse(text).unwrap_or_else(|e| panic!("wasm-runtimes/{file} is invalid: {e}"))
    }
}

/// How a cell's code is run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ExecutionMode {
    /// As a notebook cell: the value of a final expression is the main result.
    #[default]
    Cell,
    /// As a script run by `python3 -c` or `node -e`: no value is shown, and Python's
    /// tracebacks name the file `<string>`.
    Script,
}

/// One cell to run.
#[derive(Debug)]
pub(crate) struct Cell {
    pub code: String,
    /// Environment variables for this execution only.
    pub env: BTreeMap<String, String>,
    pub mode: ExecutionMode,
    /// Its number in the context, from 1.
    pub number: u64,
    pub language: Language,
}

/// What the guest reported about one cell.
#[derive(Debug, Default)]
pub(crate) struct CellReport {
    /// 0 when the cell ran to its end (with or without an exception); an exit status
    /// (`sys.exit(n)`, `exit()`) otherwise; negative when the interpreter is unusable.
    pub status: i32,
    pub results: Vec<DisplayData>,
    pub error: Option<GuestError>,
    /// A malformed or oversized report; the execution's error says so.
    pub fault: Option<String>,
}

/// What an instance's start needs besides its store.
pub(crate) struct StartSpec<'a> {
    pub capture: &'a SharedCapture,
    /// The guest's whole environment, as its store was given it.
    pub env: &'a [(String, String)],
    pub memory_limit: u64,
    /// Python only: the template to restore; `None` boots the plain runtime.
    pub template: Option<&'a python::Template>,
}

/// A loaded runtime.
#[derive(Clone)]
pub(crate) enum Runtime {
    Python(Arc<python::PythonRuntime>),
    JavaScript(Arc<javascript::JsRuntime>),
}

impl Runtime {
    /// What the guests of this runtime see, apart from their context's own directories.
    pub fn layout(&self) -> Layout {
        match self {
            Runtime::Python(python) => python.layout(),
            Runtime::JavaScript(js) => js.layout(),
        }
    }

    /// Instantiates the runtime in `store` and runs its start-up.
    pub async fn start(
        &self,
        core: &Core,
        store: Store<HostState>,
        spec: &StartSpec<'_>,
    ) -> Result<Instance, Error> {
        Ok(match self {
            Runtime::Python(python) => {
                Instance::Python(python::PythonInstance::start(core, python, store, spec).await?)
            }
            Runtime::JavaScript(js) => Instance::JavaScript(Box::new(
                javascript::JsInstance::start(core, js, store, spec).await?,
            )),
        })
    }
}

/// A live interpreter.
pub(crate) enum Instance {
    Python(python::PythonInstance),
    JavaScript(Box<javascript::JsInstance>),
}

impl Instance {
    pub fn store(&mut self) -> &mut Store<HostState> {
        match self {
            Instance::Python(p) => p.store(),
            Instance::JavaScript(j) => j.store(),
        }
    }

    /// Runs one cell. `Err` is a trap: the instance is unusable afterwards.
    pub async fn run_cell(&mut self, cell: Cell) -> wasmtime::Result<CellReport> {
        match self {
            Instance::Python(p) => p.run_cell(cell).await,
            Instance::JavaScript(j) => j.run_cell(cell).await,
        }
    }
}

/// The runtimes an engine has loaded: Python when the engine is built, JavaScript when its
/// first context starts.
pub(crate) struct Runtimes {
    python: Arc<python::PythonRuntime>,
    javascript: tokio::sync::OnceCell<Arc<javascript::JsRuntime>>,
}

impl Runtimes {
    /// Loads the Python runtime (installing and compiling it if needed). Blocking.
    pub fn load(core: &Core) -> Result<Runtimes, Error> {
        Ok(Runtimes {
            python: Arc::new(python::PythonRuntime::load(core)?),
            javascript: tokio::sync::OnceCell::new(),
        })
    }

    pub fn python(&self) -> &Arc<python::PythonRuntime> {
        &self.python
    }

    /// The runtime of `language` for a new context: loaded on first use, and ready for the
    /// context (a runtime may do one-time work for its first context).
    pub async fn get(&self, core: &Arc<Core>, language: Language) -> Result<Runtime, Error> {
        Ok(match language.runtime() {
            RuntimeKind::Python => {
                self.python.prepare_context(core).await;
                Runtime::Python(self.python.clone())
            }
            RuntimeKind::JavaScript => {
                let js = self
                    .javascript
                    .get_or_try_init(|| javascript::JsRuntime::load(core.clone()))
                    .await?;
                Runtime::JavaScript(js.clone())
            }
        })
    }
}

/// The one loading path of every runtime: its verified files (installed first when the
/// engine may install) and its compiled module, from the cache or compiled once (about a
/// minute for Python). Blocking.
pub(crate) fn load_module(core: &Core, kind: RuntimeKind) -> Result<(RuntimeFiles, Module), Error> {
    let manifest = kind.manifest();
    let root = core.runtimes_dir();
    let files = if core.may_install() {
        install::ensure_installed(&root, &manifest, core.progress())?
    } else {
        RuntimeFiles::open(&root, &manifest)?
    };
    let key = module_cache::cache_key(core.wasm(), &files.module_sha256);
    let module = module_cache::load_or_compile(
        core.wasm(),
        &core.compiled_dir(),
        &manifest.name,
        &key,
        core.progress(),
        || {
            files.verify_module()?;
            std::fs::read(&files.module_path).map_err(|e| Error::io(&files.module_path, e))
        },
    )?;
    Ok((files, module))
}

/// Installs every pinned runtime that is missing or fails verification, into
/// `CODEBOX_RUNTIMES_DIR` or `<cache_dir>/runtimes` (`cache_dir` defaults as in
/// [`EngineBuilder::cache_dir`](crate::EngineBuilder::cache_dir)). With `wheel`, that local
/// file is used for the runtime it belongs to instead of downloading (it must still match the
/// pinned sha256).
pub fn install_runtimes(
    cache_dir: Option<&std::path::Path>,
    wheel: Option<&std::path::Path>,
    progress: &crate::progress::Progress,
) -> Result<Vec<InstalledRuntime>, Error> {
    let manifests = RuntimeKind::ALL.map(RuntimeKind::manifest);
    install::install_all(cache_dir, &manifests, wheel, progress)
}

/// Every pinned runtime and whether it is installed and intact.
pub fn installed_runtimes(cache_dir: Option<&std::path::Path>) -> Vec<InstalledRuntime> {
    let manifests = RuntimeKind::ALL.map(RuntimeKind::manifest);
    install::describe_all(cache_dir, &manifests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_parse_by_name_alias_extension_and_command() {
        for language in Language::ALL {
            assert_eq!(Language::parse(language.name()), Some(language));
            assert_eq!(
                Language::parse(&format!(" {} ", language.name().to_uppercase())),
                Some(language)
            );
            for alias in language.aliases() {
                assert_eq!(Language::parse(alias), Some(language), "{alias}");
            }
            for extension in language.extensions() {
                assert_eq!(Language::from_extension(extension), Some(language));
            }
            for command in language.commands() {
                assert_eq!(Language::from_command(command), Some(language));
            }
            assert_eq!(serde_json::to_value(language).unwrap(), language.name());
        }
        assert_eq!(Language::parse("ruby"), None);
        assert_eq!(Language::from_extension("rb"), None);
        assert_eq!(
            Language::from_command("/usr/bin/python3"),
            Some(Language::Python)
        );
        assert_eq!(Language::list(), "python, javascript, typescript");
    }

    #[test]
    fn every_manifest_parses() {
        for kind in RuntimeKind::ALL {
            kind.manifest();
        }
    }
}
