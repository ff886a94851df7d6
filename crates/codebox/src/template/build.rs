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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Instance, Module, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use super::{
    Template, TemplateRecipe, compiled_dir, compiled_stem, remove_compiled, template_error, wasm,
};
use crate::context::{
    Context, ContextOptions, PYTHON_ARGV, PYTHON_FIRST_FREE_FD, StoreSpec, TEMPLATE_BUILD_ENV,
    new_store,
};
use crate::engine::Engine;
use crate::files::HomeDir;
use crate::host::{Door, HostState};
use crate::output::{Capture, SharedCapture};
use crate::python::PythonInstance;
use crate::{Error, Limits, module_cache};

/// The wasmtime-wizer release (pinned to wasmtime's in Cargo.toml); part of the cache key.
pub(crate) const WIZER_VERSION: &str = "48.0.8";

/// The longest a build's setup or warm-up may run.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Names the reset functions are exported under in the instrumented module only.
const RESET_EXPORTS: [&str; 2] = ["codebox.reset_preopens", "codebox.clear_unused_stack"];

/// Loads the template from the cache or builds, gates and stores it. Blocking: run it on a
/// thread of its own.
pub(crate) fn build(
    engine: &Engine,
    name: &str,
    recipe: &TemplateRecipe,
) -> Result<Arc<Template>, Error> {
    // One build at a time in a process: each needs 2–3 GB and both cores while it compiles.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let inner = &engine.inner;
    let stem = compiled_stem(inner, name, recipe);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("starting the template build's runtime: {e}")))?;
    let module = module_cache::load_or_create(&inner.wasm, &compiled_dir(inner), &stem, || {
        let progress = &inner.progress;
        progress.step(&format!(
            "building the {name} template (one time, about a minute)"
        ));
        let (wasm, sealed) = runtime.block_on(snapshot(engine, recipe))?;
        let module = progress
            .long_task(&format!("compiling the {name} template"), || {
                Module::new(&inner.wasm, &wasm)
            })
            .map_err(|e| template_error(format!("compiling the snapshot: {e:#}")))?;
        drop(wasm);
        let template = Arc::new(Template::new(&inner.wasm, name, &module)?);
        runtime
            .block_on(gate(engine, template, sealed))
            .map_err(|reason| template_error(format!("the build gate refused it: {reason}")))?;
        Ok(module)
    })
    .map_err(|error| match error {
        // The steps above say what failed; the template's name is filled in once, here.
        Error::Template { message, .. } => Error::Template {
            name: name.into(),
            message,
        },
        other => other,
    })?;
    // Builds for an earlier runtime, kernel or recipe are never loaded again (~300 MB each).
    remove_compiled(inner, name, Some(&stem));
    Ok(Arc::new(Template::new(&inner.wasm, name, &module)?))
}

/// What the seal turn reported.
#[derive(Debug, serde::Deserialize)]
struct Sealed {
    leaked_fds: Vec<String>,
    monotonic_ns: u64,
}

/// Runs the recipe in an instrumented interpreter and returns the snapshot.
async fn snapshot(engine: &Engine, recipe: &TemplateRecipe) -> Result<(Vec<u8>, Sealed), Error> {
    let inner = &engine.inner;
    let base = inner.files.read_template_base()?;
    let facts = wasm::inspect(&base)?;
    let mut wizer = Wizer::new();
    wizer.init_func("wizer.initialize");
    let (cx, instrumented) = wizer
        .instrument(&base)
        .map_err(|e| template_error(format!("instrumenting the runtime: {e:#}")))?;

    // Instrumenting is deterministic, so its compiled form is cached like a runtime.
    let (_, base_sha256) = inner
        .files
        .template_base
        .as_ref()
        .expect("read_template_base checked it");
    let key = module_cache::cache_key(
        &inner.wasm,
        &format!("{base_sha256} wizer {WIZER_VERSION} {RESET_EXPORTS:?}"),
    );
    let module = module_cache::load_or_compile(
        &inner.wasm,
        &compiled_dir(inner),
        "python-instrumented",
        &key,
        &inner.progress,
        || {
            let exports: Vec<_> = facts
                .reset_functions
                .iter()
                .copied()
                .zip(RESET_EXPORTS)
                .collect();
            wasm::with_exports(&instrumented, &exports).map_err(template_error)
        },
    )?;
    drop(instrumented);
    let pre = crate::host::instance_pre(&inner.wasm, &module).map_err(Error::internal)?;

    let sandbox = BuildSandbox::new()?;
    let options = ContextOptions::new().limits(Limits {
        memory_bytes: crate::limits::MAX_MEMORY_BYTES,
        ..Limits::default()
    });
    let mut store = new_store(&StoreSpec {
        engine,
        options: &options,
        tmp: sandbox.tmp.path(),
        home: &sandbox.home,
        cwd: None,
        capture: &sandbox.capture,
        template_build: true,
    })?;
    store.data_mut().deadline = Instant::now() + BUILD_TIMEOUT;
    let mut py = PythonInstance::instantiate(inner, &pre, store, true).await?;
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
    let seal = format!("__import__('_codebox_kernel')._template_seal({PYTHON_FIRST_FREE_FD})");
    let report = raw_turn(&mut py, &sandbox.capture, &seal).await?;
    let sealed: Sealed = report
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| template_error(format!("the seal turn reported nothing: {report}")))?;
    if !sealed.leaked_fds.is_empty() {
        return Err(template_error(format!(
            "files are still open at the end of the build and cannot be snapshotted: {}; \
             close them in the setup (e.g. use `with open(...)`)",
            sealed.leaked_fds.join(", ")
        )));
    }

    // Back to the state right after `wizer.initialize`, checked byte by byte.
    read_flags(&mut py, &facts.turn_flags)?;
    for (&address, &value) in facts.turn_flags.iter().zip(&initial_flags) {
        py.memory
            .write(&mut py.store, address as usize, &[value])
            .map_err(Error::internal)?;
    }
    for export in RESET_EXPORTS {
        call(&mut py, export).await?;
    }

    let mut state = SnapshotSource {
        store: &mut py.store,
        instance: py.instance,
    };
    let wasm = wizer
        .snapshot(&cx, &mut state)
        .await
        .map_err(|e| template_error(format!("writing the snapshot: {e:#}")))?;
    Ok((wasm, sealed))
}

/// Reads the turn flags; each must be a boolean byte, or this is not the runtime the method
/// was verified on.
fn read_flags(py: &mut PythonInstance, addresses: &[u32]) -> Result<Vec<u8>, Error> {
    let data = py.memory.data(&py.store);
    addresses
        .iter()
        .map(|&address| match data.get(address as usize) {
            Some(&value) if value <= 1 => Ok(value),
            other => Err(template_error(format!(
                "the runtime's turn flag at {address} holds {other:?}, not 0 or 1; this \
                 runtime build is not the one templates were verified with"
            ))),
        })
        .collect()
}

async fn call(py: &mut PythonInstance, export: &str) -> Result<(), Error> {
    let func = py
        .instance
        .get_typed_func::<(), ()>(&mut py.store, export)
        .map_err(|e| template_error(format!("{export}: {e:#}")))?;
    func.call_async(&mut py.store, ())
        .await
        .map_err(|e| template_error(format!("{export} failed: {e:#}")))
}

/// Runs `code` as a cell; an exception becomes the error, with its traceback.
async fn run_cell(
    py: &mut PythonInstance,
    capture: &SharedCapture,
    what: &str,
    code: &str,
) -> Result<(), Error> {
    py.store.data_mut().door = Door {
        code: code.to_string(),
        ..Door::default()
    };
    start_capture(capture);
    let status = py.run_cell().await;
    let output = capture.lock().unwrap_or_else(|e| e.into_inner()).finish();
    let door = std::mem::take(&mut py.store.data_mut().door);
    if let Some(error) = door.error {
        let traceback = if error.traceback.is_empty() {
            format!("{}: {}", error.name, error.value)
        } else {
            error.traceback
        };
        return Err(template_error(format!(
            "the {what} raised an exception:\n{}",
            traceback.trim_end()
        )));
    }
    match status {
        Ok(0) => Ok(()),
        Ok(status) => Err(template_error(format!(
            "the {what} exited (status {status}); {}",
            output.stderr.trim()
        ))),
        Err(e) => Err(template_error(format!("the {what} crashed: {e:#}"))),
    }
}

/// Runs `source` as a bare turn and returns its stdout.
async fn raw_turn(
    py: &mut PythonInstance,
    capture: &SharedCapture,
    source: &str,
) -> Result<String, Error> {
    start_capture(capture);
    let status = py.turn(source).await;
    let output = capture.lock().unwrap_or_else(|e| e.into_inner()).finish();
    match status {
        Ok(0) if output.stderr.is_empty() => Ok(output.stdout),
        other => Err(template_error(format!(
            "a build step failed ({other:?}): {}",
            output.stderr.trim()
        ))),
    }
}

fn start_capture(capture: &SharedCapture) {
    capture
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .start(1 << 20, None);
}

/// Private directories for the build's `/tmp` and `/home/user`.
pub(crate) struct BuildSandbox {
    pub tmp: tempfile::TempDir,
    _home_dir: tempfile::TempDir,
    pub home: HomeDir,
    pub capture: SharedCapture,
}

impl BuildSandbox {
    pub(crate) fn new() -> Result<BuildSandbox, Error> {
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
}

/// Hands the instance's globals and memory to wizer.
pub(crate) struct SnapshotSource<'a> {
    pub store: &'a mut Store<HostState>,
    pub instance: Instance,
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

/// Guest side of the gate: what a freshly restored context sees, as one JSON line.
const GATE_PROBE: &str = r#"
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

#[derive(Debug, serde::Deserialize)]
struct Probe {
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

/// The build gate: two fresh contexts from the template must each see their own argv,
/// environment and files, draw different random numbers, read clocks past the build's, and
/// (when pyplot is loaded) render text to PNG.
async fn gate(engine: &Engine, template: Arc<Template>, sealed: Sealed) -> Result<(), String> {
    let mut probes: Vec<Probe> = Vec::new();
    for i in 0..2 {
        let token = format!("gate-{i}-{}", random_token());
        let options = ContextOptions::new().env("CODEBOX_GATE_TOKEN", &token);
        let ctx = Context::create_from(engine.clone(), options, Some(template.clone()))
            .await
            .map_err(|e| format!("a context cannot start from it: {e}"))?;
        ctx.files()
            .write("gate-in.txt", token.as_bytes())
            .map_err(|e| e.to_string())?;
        let run = ctx.execute(GATE_PROBE).await.map_err(|e| e.to_string())?;
        if let Some(error) = &run.error {
            return Err(format!(
                "the probe failed in a restored context: {}: {}\n{}",
                error.name, error.value, error.traceback
            ));
        }
        let probe: Probe = serde_json::from_str(run.stdout.trim())
            .map_err(|e| format!("unreadable probe output ({e}): {}", run.stdout))?;
        let written = ctx
            .files()
            .read("gate-out.txt")
            .map_err(|e| e.to_string())?;

        let expected_argv: Vec<String> = PYTHON_ARGV.iter().map(|s| s.to_string()).collect();
        let checks = [
            (
                probe.argv == expected_argv,
                format!("sys.orig_argv is {:?}", probe.argv),
            ),
            (
                probe.token.as_deref() == Some(token.as_str()),
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
                probe.cwd == crate::GUEST_HOME,
                format!("the working directory is {:?}", probe.cwd),
            ),
            (
                probe.read == token
                    && written == token.chars().rev().collect::<String>().as_bytes(),
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
        probes.push(probe);
    }
    if probes[0].random == probes[1].random {
        return Err("`random` gives the same numbers in two contexts".into());
    }
    if probes[0].numpy_random.is_some() && probes[0].numpy_random == probes[1].numpy_random {
        return Err("`numpy.random` gives the same numbers in two contexts".into());
    }
    Ok(())
}

/// Entropy for the gate's tokens, without another dependency.
fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}
