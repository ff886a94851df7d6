//! Python's snapshot recipe: templates.
//!
//! Templates: a Python interpreter's memory snapshotted after a setup script ran (for the
//! built-in `data` template: numpy, pandas and matplotlib imported), so a new context starts
//! with that work done, in milliseconds instead of seconds, sharing the snapshot's pages.
//! The built-in `stdlib` template is the same idea with nothing imported: the plain
//! interpreter with codebox's kernel loaded, which halves a context's start. While a
//! template is not built, contexts fall back to `stdlib`, and `stdlib` itself to booting the
//! plain runtime.
//!
//! A template is built once per runtime, engine configuration and recipe (see
//! [`build`](self::build)), checked by a build gate, and cached as a compiled module next to
//! the compiled runtimes. Custom templates keep their recipe in `<cache dir>/templates`.
//!
//! What a restored context sees: its own environment variables, argv, `/home/user`, `/tmp`,
//! working directory and streams; `random` and legacy `numpy.random` are reseeded on its first
//! turn (`os.urandom`, `secrets` and `numpy.random.default_rng()` always read fresh entropy);
//! `time.monotonic()` continues past the build's readings. `hash()` of `str` and `bytes` is
//! not randomised in this runtime, with or without templates: the same string hashes the same
//! in every context. Other state a setup script creates (seeded generators, caches, open
//! connections) is shared as it was at the snapshot: keep setup scripts to imports and pure
//! definitions.
//!
//! Building a template: run the recipe in the plain interpreter, snapshot its memory with
//! wizer, compile the snapshot, and check it with the build gate before it is stored.
//!
//! The interpreter is instantiated from the instrumented `python.wasm` with exactly the
//! store a context gets (same argv, environment, mounts and stdlib files, see
//! [`new_store`]), then:
//!
//! 1. `_initialize` and `wizer.initialize` start CPython; the reactor's turn flags are read
//!    right after (see [`wasm::inspect`] for how they are found);
//! 2. the kernel is loaded, the setup runs as a cell, the kernel records the names it made,
//!    the warm-up runs as a cell;
//! 3. a seal turn removes the warm-up's names and the build's cells, closes cached fonts,
//!    collects and freezes the heap, and lists the file descriptors still open: any beyond
//!    stdio and the mounts refuses the build, since a restored fd would name another file;
//! 4. the turn flags are put back to their values from step 1, so the first turn of a
//!    restored context re-reads argv and the environment, reseeds `random` and recreates
//!    the streams; wasi-libc's preopen table is reset and the unused stack zeroed;
//! 5. wizer writes the snapshot, which is compiled and must pass [`gate`].

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{ARGV, FIRST_FREE_FD, PythonInstance, PythonRuntime, TEMPLATE_BUILD_ENV};
use crate::core::Core;
use crate::error::Error;
use crate::limits::Limits;
use crate::module_cache;
use crate::output::SharedCapture;
use crate::runtimes::{Cell, ExecutionMode, Language};
use crate::snapshot::{BuildSandbox, Instrumented, WIZER_VERSION, wasm};

/// The longest a build's setup or warm-up may run.
const BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Names the reset functions are exported under in the instrumented module only.
const RESET_EXPORTS: [&str; 2] = ["codebox.reset_preopens", "codebox.clear_unused_stack"];

/// The plain interpreter, nothing imported: always available (a snapshot once built, else
/// booted from the runtime).
pub const STDLIB_TEMPLATE: &str = "stdlib";
/// The built-in template with numpy (`np`), pandas (`pd`), matplotlib and pyplot (`plt`)
/// imported and warmed up.
pub const DATA_TEMPLATE: &str = "data";

const DATA_SETUP: &str = "\
import numpy as np
import pandas as pd
import matplotlib
import matplotlib.pyplot as plt
";

/// One small groupby and one PNG render, so the first real ones do not pay for lazy imports
/// and caches.
const DATA_WARMUP: &str = "\
import io
frame = pd.DataFrame({'k': ['a', 'b', 'a'], 'v': [1.0, 2.0, 3.0]})
frame.groupby('k').v.agg(['sum', 'mean'])
frame.describe()
figure, axes = plt.subplots()
axes.plot([1, 2, 3], [3, 1, 2], label='line')
axes.bar(['a', 'b'], [1, 2])
axes.set_title('warm-up')
axes.legend()
figure.savefig(io.BytesIO(), format='png')
plt.close('all')
";

/// Exercises what the first cells of any context use (an error's traceback, output, a
/// result) so those code paths are loaded in the snapshot; leaves no names behind.
const STDLIB_WARMUP: &str = "\
import traceback
traceback.format_exception(ZeroDivisionError('warm-up'))
print('warm-up', {'a': [1, 2.5, None]})
";

/// How a template is made: `setup` runs as a cell and everything it defines stays in the
/// template's `__main__`; `warmup` runs next, to exercise code paths, and its names are
/// dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRecipe {
    /// Python run first; its names (imports, definitions) are kept.
    pub setup: String,
    /// Python run after the setup to warm caches; its names are removed. Optional.
    #[serde(default)]
    pub warmup: Option<String>,
}

impl TemplateRecipe {
    /// A recipe with `setup` and no warm-up.
    pub fn new(setup: impl Into<String>) -> Self {
        TemplateRecipe {
            setup: setup.into(),
            warmup: None,
        }
    }

    /// Sets the warm-up code.
    pub fn warmup(mut self, code: impl Into<String>) -> Self {
        self.warmup = Some(code.into());
        self
    }

    /// The built-in `data` recipe.
    pub fn data() -> Self {
        TemplateRecipe::new(DATA_SETUP).warmup(DATA_WARMUP)
    }

    /// The built-in `stdlib` recipe: nothing imported into `__main__`.
    pub fn stdlib() -> Self {
        TemplateRecipe::new("").warmup(STDLIB_WARMUP)
    }
}

/// What the seal turn reported.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Sealed {
    leaked_fds: Vec<String>,
    monotonic_ns: u64,
}

/// Runs the recipe in an instrumented interpreter and returns the snapshot.
pub(crate) async fn snapshot(
    core: &Core,
    runtime: &PythonRuntime,
    recipe: &TemplateRecipe,
) -> Result<(Vec<u8>, Sealed), Error> {
    let files = runtime.files();
    let base = files.read_template_base()?;
    let facts = wasm::inspect(&base)?;
    let instrumented = Instrumented::new(&base, "wizer.initialize")
        .map_err(|e| Error::template_step(format!("instrumenting the runtime: {e:#}")))?;

    // Instrumenting is deterministic, so its compiled form is cached like a runtime.
    let (_, base_sha256) = files
        .template_base
        .as_ref()
        .expect("read_template_base checked it");
    let key = module_cache::cache_key(
        core.wasm(),
        &format!("{base_sha256} wizer {WIZER_VERSION} {RESET_EXPORTS:?}"),
    );
    let module = module_cache::load_or_compile(
        core.wasm(),
        &core.compiled_dir(),
        "python-instrumented",
        &key,
        core.progress(),
        || {
            let exports: Vec<_> = facts
                .reset_functions
                .iter()
                .copied()
                .zip(RESET_EXPORTS)
                .collect();
            wasm::with_exports(&instrumented.wasm, &exports).map_err(Error::template_step)
        },
    )?;
    let pre = crate::host::instance_pre(core.wasm(), &module)
        .map_err(|e| Error::internal_from("linking the instrumented runtime", e))?;

    // Exactly the store a context gets, with the build's marker in argv and the environment.
    let sandbox = BuildSandbox::new()?;
    let limits = Limits {
        memory_bytes: crate::limits::MAX_MEMORY_BYTES,
        ..Limits::default()
    };
    let mut store = sandbox.store(core, &runtime.build_layout(), &limits)?;
    store.data_mut().deadline = Instant::now() + BUILD_TIMEOUT;
    let mut py = PythonInstance::instantiate(core, &pre, store, true).await?;
    call(&mut py, "wizer.initialize").await?;
    let initial_flags = read_flags(&mut py, &facts.turn_flags)?;

    py.boot(&sandbox.capture).await?;
    run_cell(&mut py, &sandbox.capture, "setup", &recipe.setup).await?;
    raw_turn(
        &mut py,
        &sandbox.capture,
        "__import__('_codebox_kernel')._template_mark()",
    )
    .await?;
    if let Some(warmup) = &recipe.warmup {
        run_cell(&mut py, &sandbox.capture, "warm-up", warmup).await?;
    }
    let seal = format!("__import__('_codebox_kernel')._template_seal({FIRST_FREE_FD})");
    let report = raw_turn(&mut py, &sandbox.capture, &seal).await?;
    let sealed: Sealed = report
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| Error::template_step(format!("the seal turn reported nothing: {report}")))?;
    if !sealed.leaked_fds.is_empty() {
        return Err(Error::template_step(format!(
            "files are still open at the end of the build and cannot be snapshotted: {}; \
             close them in the setup (e.g. use `with open(...)`)",
            sealed.leaked_fds.join(", ")
        )));
    }

    // Back to the state right after `wizer.initialize`, checked byte by byte.
    read_flags(&mut py, &facts.turn_flags)?;
    let memory = py.memory();
    for (&address, &value) in facts.turn_flags.iter().zip(&initial_flags) {
        memory
            .write(py.store(), address as usize, &[value])
            .map_err(|e| Error::internal_from("restoring the turn flags", e))?;
    }
    for export in RESET_EXPORTS {
        call(&mut py, export).await?;
    }

    let instance = py.instance();
    let wasm = instrumented
        .write(py.store(), instance)
        .await
        .map_err(|e| Error::template_step(format!("writing the snapshot: {e:#}")))?;
    Ok((wasm, sealed))
}

/// Reads the turn flags; each must be a boolean byte, or this is not the runtime the method
/// was verified on.
fn read_flags(py: &mut PythonInstance, addresses: &[u32]) -> Result<Vec<u8>, Error> {
    let memory = py.memory();
    let data = memory.data(py.store());
    addresses
        .iter()
        .map(|&address| match data.get(address as usize) {
            Some(&value) if value <= 1 => Ok(value),
            other => Err(Error::template_step(format!(
                "the runtime's turn flag at {address} holds {other:?}, not 0 or 1; this \
                 runtime build is not the one templates were verified with"
            ))),
        })
        .collect()
}

async fn call(py: &mut PythonInstance, export: &str) -> Result<(), Error> {
    let func = py
        .instance()
        .get_typed_func::<(), ()>(py.store(), export)
        .map_err(|e| Error::template_step(format!("{export}: {e:#}")))?;
    func.call_async(py.store(), ())
        .await
        .map_err(|e| Error::template_step(format!("{export} failed: {e:#}")))
}

/// Runs `code` as a cell; an exception becomes the error, with its traceback.
async fn run_cell(
    py: &mut PythonInstance,
    capture: &SharedCapture,
    what: &str,
    code: &str,
) -> Result<(), Error> {
    crate::output::start(capture, 1 << 20);
    let cell = Cell {
        code: code.to_string(),
        env: Default::default(),
        mode: ExecutionMode::Cell,
        number: 0,
        language: Language::Python,
    };
    let report = py.run_cell(cell).await;
    let output = crate::output::finish(capture);
    let report = report.map_err(|e| Error::template_step(format!("the {what} crashed: {e:#}")))?;
    if let Some(error) = report.error {
        let traceback = if error.traceback.is_empty() {
            format!("{}: {}", error.name, error.value)
        } else {
            error.traceback
        };
        return Err(Error::template_step(format!(
            "the {what} raised an exception:\n{}",
            traceback.trim_end()
        )));
    }
    match report.status {
        0 => Ok(()),
        status => Err(Error::template_step(format!(
            "the {what} exited (status {status}); {}",
            output.stderr.trim()
        ))),
    }
}

/// Runs `source` as a bare turn and returns its stdout.
async fn raw_turn(
    py: &mut PythonInstance,
    capture: &SharedCapture,
    source: &str,
) -> Result<String, Error> {
    crate::output::start(capture, 1 << 20);
    let status = py.turn(source).await;
    let output = crate::output::finish(capture);
    match status {
        Ok(0) if output.stderr.is_empty() => Ok(output.stdout),
        other => Err(Error::template_step(format!(
            "a build step failed ({other:?}): {}",
            output.stderr.trim()
        ))),
    }
}

/// Guest side of the gate: what a freshly restored context sees, as one JSON line.
pub(crate) const GATE_PROBE: &str = r#"
def _codebox_gate():
    import io, json, os, random, sys, time
    out = {
        "argv": sys.orig_argv,
        "token": os.environ.get("CODEBOX_GATE_TOKEN"),
        "build_env": os.environ.get("CODEBOX_TEMPLATE_BUILD"),
        "cwd": os.getcwd(),
        "random": random.random(),
        "monotonic_ns": time.monotonic_ns(),
    }
    numpy = sys.modules.get("numpy")
    out["numpy_random"] = float(numpy.random.random()) if numpy else None
    with open("/home/user/gate-in.txt") as f:
        out["read"] = f.read()
    with open("/home/user/gate-out.txt", "w") as f:
        f.write(out["read"][::-1])
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        figure = pyplot.figure(figsize=(2, 1))
        figure.text(0.1, 0.5, "codebox 123")
        png = io.BytesIO()
        figure.savefig(png, format="png")
        pyplot.close(figure)
        out["png_bytes"] = len(png.getvalue())
    print(json.dumps(out))
_codebox_gate()
del _codebox_gate
"#;

/// What [`GATE_PROBE`] printed.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Probe {
    argv: Vec<String>,
    token: Option<String>,
    build_env: Option<String>,
    cwd: String,
    random: f64,
    monotonic_ns: u64,
    numpy_random: Option<f64>,
    read: String,
    #[serde(default)]
    png_bytes: Option<u64>,
}

/// Checks one restored context's probe: its own argv, environment, working directory and
/// files, and clocks past the build's.
pub(crate) fn check_probe(
    probe: &Probe,
    token: &str,
    written: &[u8],
    sealed: &Sealed,
) -> Result<(), String> {
    let checks = [
        (
            probe.argv == [ARGV],
            format!("sys.orig_argv is {:?}", probe.argv),
        ),
        (
            probe.token.as_deref() == Some(token),
            format!(
                "the environment is stale: the token reads {:?}",
                probe.token
            ),
        ),
        (
            probe.build_env.is_none(),
            format!("{TEMPLATE_BUILD_ENV} from the build is still set"),
        ),
        (
            probe.cwd == crate::files::GUEST_HOME,
            format!("the working directory is {:?}", probe.cwd),
        ),
        (
            probe.read == token && written == token.chars().rev().collect::<String>().as_bytes(),
            "a file written after the restore did not read back".into(),
        ),
        (
            probe.monotonic_ns > sealed.monotonic_ns,
            "the monotonic clock reads earlier than during the build".into(),
        ),
        (
            probe.png_bytes.is_none_or(|n| n > 0),
            "matplotlib rendered an empty PNG".into(),
        ),
    ];
    if let Some((_, why)) = checks.into_iter().find(|(ok, _)| !ok) {
        return Err(why);
    }
    Ok(())
}

/// Checks that two restored contexts draw different random numbers.
pub(crate) fn check_probes_differ(probes: &[Probe; 2]) -> Result<(), String> {
    if probes[0].random == probes[1].random {
        return Err("`random` gives the same numbers in two contexts".into());
    }
    if probes[0].numpy_random.is_some() && probes[0].numpy_random == probes[1].numpy_random {
        return Err("`numpy.random` gives the same numbers in two contexts".into());
    }
    Ok(())
}
