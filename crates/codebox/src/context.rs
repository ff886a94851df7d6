//! A context: one live Python interpreter whose state persists between executions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::engine::{ContextSlot, Engine};
use crate::execution::{ErrorKind, Execution, ExecutionError};
use crate::files::{GUEST_HOME, HomeDir};
use serde::{Deserialize, Serialize};

use crate::host::{self, Boot, DiskQuota, Door, HostState, MemoryLimiter};
use crate::js::JsInstance;
use crate::output::{Capture, GuestStream, OutputCallback, SharedCapture};
use crate::python::PythonInstance;
use crate::template::Template;
use crate::workdir::WorkDir;
use crate::{Error, Limits, Stream};

/// matplotlib's config and cache directory inside the guest; a prebuilt font cache is copied
/// there so the first plot does not rebuild it.
pub(crate) const MPL_CONFIG_DIR: &str = "/tmp/.matplotlib";
/// [`MPL_CONFIG_DIR`]'s name inside `/tmp`: kept when a `/tmp` directory is recycled.
pub(crate) const MPL_CONFIG_NAME: &str = ".matplotlib";

/// Largest source accepted by [`Context::execute`].
pub const MAX_CODE_BYTES: usize = 16 << 20;

/// How a context is set up.
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Resource limits; see [`Limits`] for the defaults.
    pub limits: Limits,
    /// Environment variables the guest sees, on top of `HOME`, `TMPDIR` and a few the runtime
    /// needs. Nothing of the host's environment is passed through.
    pub env: BTreeMap<String, String>,
    /// The host directory mounted at `/home/user`. Default: a new private temporary directory
    /// removed with the context. Give the same [`HomeDir`] to several contexts to share files.
    pub home: Option<HomeDir>,
    /// The working directory, a path under `/home/user` (created if missing). Default
    /// `/home/user`.
    pub cwd: Option<String>,
    /// The language the context runs. Default Python.
    pub language: Language,
    /// Python only: the template the interpreter starts from. `None` (the default) takes the
    /// engine's default template, `data` unless configured otherwise (see
    /// [`EngineBuilder::default_template`](crate::EngineBuilder::default_template)), falling
    /// back to `stdlib` while it is not built yet or when `limits.memory_bytes` is below its
    /// size. `stdlib` is the plain interpreter with nothing imported, never waited for (its
    /// snapshot once built, else the runtime booted afresh); any other name is a built-in or
    /// custom template, built first if needed (and refused when the memory limit is below its
    /// size).
    pub template: Option<String>,
}

/// The languages a context can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Parses a language name as clients send it, case-insensitively: `python`/`py`,
    /// `javascript`/`js`/`node`, `typescript`/`ts`.
    pub fn parse(name: &str) -> Option<Language> {
        match name.trim().to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Language::Python),
            "javascript" | "js" | "node" | "nodejs" => Some(Language::JavaScript),
            "typescript" | "ts" => Some(Language::TypeScript),
            _ => None,
        }
    }

    /// The language's name as the APIs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
        }
    }
}

impl ContextOptions {
    /// Options with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory (a path under `/home/user`).
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Sets the language.
    pub fn language(mut self, language: Language) -> Self {
        self.language = language;
        self
    }

    /// Mounts `home` at `/home/user`.
    pub fn home(mut self, home: HomeDir) -> Self {
        self.home = Some(home);
        self
    }

    /// Starts from the named template (Python only); see [`ContextOptions::template`].
    pub fn template(mut self, name: impl Into<String>) -> Self {
        self.template = Some(name.into());
        self
    }
}

/// One execution request: the code plus optional per-execution settings.
#[derive(Clone)]
pub struct ExecuteRequest {
    code: String,
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
    on_output: Option<OutputCallback>,
}

impl ExecuteRequest {
    /// A request to run `code`.
    pub fn new(code: impl Into<String>) -> Self {
        ExecuteRequest {
            code: code.into(),
            timeout: None,
            env: BTreeMap::new(),
            on_output: None,
        }
    }

    /// Overrides the context's timeout for this execution.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets an environment variable for this execution only (the previous value, if any, is
    /// restored afterwards).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Streams stdout/stderr chunks to `f` as the guest writes them.
    pub fn on_output(mut self, f: impl Fn(Stream, &str) + Send + Sync + 'static) -> Self {
        self.on_output = Some(Arc::new(f));
        self
    }
}

impl std::fmt::Debug for ExecuteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecuteRequest")
            .field("code_bytes", &self.code.len())
            .field("timeout", &self.timeout)
            .field("streaming", &self.on_output.is_some())
            .finish()
    }
}

impl From<&str> for ExecuteRequest {
    fn from(code: &str) -> Self {
        ExecuteRequest::new(code)
    }
}

impl From<String> for ExecuteRequest {
    fn from(code: String) -> Self {
        ExecuteRequest::new(code)
    }
}

/// A live Python interpreter. Variables, imports and files persist between executions;
/// executions on one context run one at a time, in the order they were called. Dropping the
/// context frees its instance (and its private directories).
///
/// Dropping an `execute` future before it completes abandons that execution; the context then
/// starts afresh (like a timeout) before its next execution.
pub struct Context {
    state: tokio::sync::Mutex<State>,
    template: Option<String>,
    home: HomeDir,
    tmp: std::path::PathBuf,
    limits: Limits,
}

struct State {
    engine: Engine,
    options: ContextOptions,
    home: HomeDir,
    /// Private `/tmp`; emptied for reuse on drop.
    tmp: WorkDir,
    /// The home directory, when the context made its own; emptied for reuse on drop.
    _own_home: Option<WorkDir>,
    capture: SharedCapture,
    /// The working directory as a guest path, when not `/home/user`.
    cwd: Option<String>,
    /// The template Python instances start from; `None` for the plain runtime.
    template: Option<Arc<Template>>,
    live: Option<Live>,
    /// An execution is running in `live`. Still true at the start of the next one means the
    /// previous call was cancelled (its future dropped) mid-turn: that instance is unusable.
    in_flight: bool,
    executions: u64,
    _slot: ContextSlot,
}

/// The running instance.
enum Live {
    Python(PythonInstance),
    Js(Box<JsInstance>),
}

impl Live {
    fn store(&mut self) -> &mut Store<HostState> {
        match self {
            Live::Python(p) => &mut p.store,
            Live::Js(j) => &mut j.store,
        }
    }

    /// Runs the cell waiting in the door; the guest's report lands in the door too. Returns
    /// the guest's status (0 normal, else an exit status).
    async fn run_cell(&mut self, execution_count: u64, typescript: bool) -> wasmtime::Result<i32> {
        match self {
            Live::Python(p) => p.run_cell().await,
            Live::Js(j) => j.run_cell(execution_count, typescript).await,
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("home", &self.home.host_path())
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) async fn create(engine: Engine, options: ContextOptions) -> Result<Context, Error> {
        // Everything is checked before a template is looked up (or built).
        options.limits.validate()?;
        if options.limits.fuel.is_some() && !engine.fuel_metering() {
            return Err(Error::InvalidInput(
                "limits.fuel needs an engine built with fuel_metering(true)".into(),
            ));
        }
        validate_env(&options.env)?;
        let template = engine.template_for(&options).await?;
        Context::create_from(engine, options, template).await
    }

    /// Creates a context whose Python instances start from `template`; `options` are valid.
    pub(crate) async fn create_from(
        engine: Engine,
        options: ContextOptions,
        template: Option<Arc<Template>>,
    ) -> Result<Context, Error> {
        let slot = engine.acquire_slot()?;
        let inner = &engine.inner;
        let tmp = inner
            .tmp_dirs
            .take()
            .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
        let (home, own_home) = match &options.home {
            Some(home) => (home.clone(), None),
            None => {
                let dir = inner
                    .home_dirs
                    .take()
                    .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
                (
                    HomeDir::new(dir.path(), options.limits.disk_bytes)?,
                    Some(dir),
                )
            }
        };
        let cwd = match options.cwd.as_deref() {
            None | Some("") | Some(GUEST_HOME) | Some("/home/user/") => None,
            Some(path) => Some(home.make_dir_guest_path(path)?),
        };
        let mut state = State {
            engine,
            options: options.clone(),
            home: home.clone(),
            tmp,
            _own_home: own_home,
            capture: Arc::new(Mutex::new(Capture::default())),
            cwd,
            template,
            live: None,
            in_flight: false,
            executions: 0,
            _slot: slot,
        };
        state.live = Some(state.start().await?);
        let tmp = state.tmp.path().to_path_buf();
        let template = (state.options.language == Language::Python).then(|| {
            state
                .template
                .as_ref()
                .map_or(crate::STDLIB_TEMPLATE, |t| t.name.as_str())
                .to_string()
        });
        Ok(Context {
            state: tokio::sync::Mutex::new(state),
            template,
            home,
            tmp,
            limits: options.limits,
        })
    }

    /// Runs `code` (or an [`ExecuteRequest`]) and returns what it produced.
    ///
    /// `Err` only for host-side problems; the guest's own failures (exceptions, timeouts,
    /// limits) are reported in [`Execution::error`] together with the output written so far.
    pub async fn execute(&self, request: impl Into<ExecuteRequest>) -> Result<Execution, Error> {
        let request = request.into();
        if request.code.len() > MAX_CODE_BYTES {
            return Err(Error::InvalidInput(format!(
                "the code is {} bytes; the limit is {MAX_CODE_BYTES}",
                request.code.len()
            )));
        }
        if request.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidInput(
                "timeout must be greater than zero".into(),
            ));
        }
        validate_env(&request.env)?;
        let mut state = self.state.lock().await;
        state.execute(request).await
    }

    /// The context's `/home/user`, for reading and writing files from the host.
    pub fn files(&self) -> &HomeDir {
        &self.home
    }

    /// The host directory behind the context's private `/tmp`.
    pub(crate) fn tmp_path(&self) -> &std::path::Path {
        &self.tmp
    }

    /// The template a Python context started from (`stdlib` for the plain interpreter);
    /// `None` for other languages.
    pub fn template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// The limits this context was created with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Closes the context and frees its instance (dropping it does the same).
    pub fn close(self) {}

    /// Throws away all interpreter state and starts afresh (files are kept).
    pub async fn restart(&self) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        state.live = None;
        state.executions = 0;
        state.live = Some(state.start().await?);
        Ok(())
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // The instance goes before its directories are emptied for another context.
        self.live = None;
    }
}

impl State {
    /// A new store with this context's WASI view, limits and host state.
    fn new_store(&self) -> Result<Store<HostState>, Error> {
        new_store(&StoreSpec {
            engine: &self.engine,
            options: &self.options,
            tmp: self.tmp.path(),
            home: &self.home,
            cwd: self.cwd.as_deref(),
            capture: &self.capture,
            template_build: false,
        })
    }

    /// Instantiates the runtime and loads the guest-side kernel or prelude.
    async fn start(&mut self) -> Result<Live, Error> {
        let store = self.new_store()?;
        let inner = self.engine.inner.clone();
        match self.options.language {
            Language::Python => {
                PythonInstance::start(&inner, store, &self.capture, self.template.as_deref())
                    .await
                    .map(Live::Python)
            }
            Language::JavaScript | Language::TypeScript => {
                let runtime = self.engine.javascript().await?;
                let env = guest_env(&self.options, self.cwd.as_deref(), false);
                let memory_limit = self.options.limits.memory_bytes;
                JsInstance::start(&inner, &runtime, store, &self.capture, memory_limit, &env)
                    .await
                    .map(|js| Live::Js(Box::new(js)))
            }
        }
    }

    async fn execute(&mut self, request: ExecuteRequest) -> Result<Execution, Error> {
        if std::mem::take(&mut self.in_flight) {
            self.live = None;
        }
        if self.live.is_none() {
            // The last restart failed or the last execution was cancelled; start afresh.
            self.executions = 0;
            self.live = Some(self.start().await?);
        }
        let limits = &self.options.limits;
        let timeout = request.timeout.unwrap_or(limits.timeout);
        let fuel_budget = limits.fuel;
        let metered = self.engine.inner.fuel_metering;
        let typescript = self.options.language == Language::TypeScript;
        let live = self.live.as_mut().expect("started above");

        let started = Instant::now();
        let deadline = started + timeout;
        {
            let data = live.store().data_mut();
            data.deadline = deadline;
            data.door = Door {
                code: request.code,
                env: request.env,
                ..Door::default()
            };
            data.memory.refused = false;
            data.quota.start_execution();
        }
        live.store().set_epoch_deadline(1);
        if metered {
            live.store()
                .set_fuel(fuel_budget.unwrap_or(u64::MAX))
                .map_err(Error::internal)?;
        }
        self.capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start(limits.output_bytes, request.on_output);
        self.executions += 1;

        self.in_flight = true;
        let outcome =
            tokio::time::timeout_at(deadline.into(), live.run_cell(self.executions, typescript))
                .await;
        self.in_flight = false;
        let fuel_left = if metered {
            live.store().get_fuel().ok()
        } else {
            None
        };
        let output = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish();
        let data = live.store().data_mut();
        let door = std::mem::take(&mut data.door);
        let memory_refused = data.memory.refused;
        let quota_refused = data.quota.refused;

        let mut execution = Execution {
            stdout: output.stdout,
            stderr: output.stderr,
            stdout_truncated: output.stdout_truncated,
            stderr_truncated: output.stderr_truncated,
            results: door.results,
            execution_count: self.executions,
            fuel_consumed: fuel_left.map(|left| fuel_budget.unwrap_or(u64::MAX) - left),
            ..Execution::default()
        };

        let mut restart = true;
        match outcome {
            Err(_elapsed) => execution.error = Some(timeout_error(timeout)),
            Ok(Ok(0)) => {
                restart = false;
                execution.error = door.error.map(|e| {
                    let kind = if e.name == "MemoryError" && memory_refused {
                        ErrorKind::MemoryLimit
                    } else if e.errno == Some(host::GUEST_ENOSPC) && quota_refused {
                        ErrorKind::DiskQuota
                    } else {
                        ErrorKind::Exception
                    };
                    ExecutionError {
                        kind,
                        name: e.name,
                        value: e.value,
                        traceback: e.traceback,
                    }
                });
                if let Some(fault) = door.fault {
                    execution.error = Some(ExecutionError {
                        kind: ErrorKind::InvalidResult,
                        name: "InvalidResult".into(),
                        value: fault,
                        traceback: String::new(),
                    });
                }
            }
            Ok(Ok(status)) if status > 0 => {
                // sys.exit(n) / exit(): low byte is the status; the session is over.
                execution.exit_status = Some(status & 0xFF);
            }
            Ok(Ok(status)) => {
                execution.error = Some(crashed(format!(
                    "the interpreter is unusable (status {status})"
                )));
            }
            Ok(Err(error)) => {
                if let Some(exit) = error.downcast_ref::<I32Exit>() {
                    execution.exit_status = Some(exit.0);
                } else {
                    execution.error =
                        Some(trap_error(&error, timeout, fuel_budget, memory_refused));
                }
            }
        }

        if restart {
            execution.context_restarted = true;
            self.live = None;
            self.executions = 0;
            // Start the replacement now so the next execution does not wait; if that fails
            // the next execution tries again.
            self.live = self.start().await.ok();
        }
        execution.duration = started.elapsed();
        Ok(execution)
    }
}

/// Everything a guest store is made from.
pub(crate) struct StoreSpec<'a> {
    pub engine: &'a Engine,
    pub options: &'a ContextOptions,
    /// Host directory behind `/tmp`.
    pub tmp: &'a std::path::Path,
    pub home: &'a HomeDir,
    /// The working directory as a guest path, when not `/home/user`.
    pub cwd: Option<&'a str>,
    pub capture: &'a SharedCapture,
    /// While a template is built, argv and the environment carry a marker, so the build gate
    /// can see that a restored context reads its own.
    pub template_build: bool,
}

/// codebox's matplotlib backend (Agg, with figures reported as results).
const MPL_BACKEND: &str = "module://_codebox_mpl_backend";
/// Where the stdlib zip's directory is mounted.
const GUEST_LIB_DIR: &str = "/usr/local/lib";
/// Where matplotlib's data directory is mounted (inside the stdlib zip's path).
const GUEST_MPL_DATA_DIR: &str = "/usr/local/lib/python315.zip/matplotlib/mpl-data";
/// Python contexts have four preopened directories after stdin, stdout and stderr; a
/// descriptor from this number on was opened by the guest.
pub(crate) const PYTHON_FIRST_FREE_FD: u32 = 7;

/// The guest-side layout a Python context sees (argv, fixed environment, mounts), as text:
/// part of a template's cache key, since a template is only valid for the layout it was
/// built with.
pub(crate) fn python_guest_layout() -> String {
    format!(
        "argv={PYTHON_ARGV:?} HOME={GUEST_HOME} TMPDIR=/tmp PYTHONTZPATH= \
         MPLBACKEND={MPL_BACKEND} MPLCONFIGDIR={MPL_CONFIG_DIR} \
         mounts={GUEST_LIB_DIR},{GUEST_MPL_DATA_DIR},/tmp,{GUEST_HOME} \
         first_free_fd={PYTHON_FIRST_FREE_FD}"
    )
}

/// Python's argv in every context.
pub(crate) const PYTHON_ARGV: &[&str] = &["/usr/local/bin/python.wasm"];

/// Set in the environment of a template build only.
pub(crate) const TEMPLATE_BUILD_ENV: &str = "CODEBOX_TEMPLATE_BUILD";

/// A store with a guest's WASI view (args, environment, preopens, clocks), limits and host
/// state, laid out exactly the same for contexts and for template builds.
pub(crate) fn new_store(spec: &StoreSpec) -> Result<Store<HostState>, Error> {
    let inner = &spec.engine.inner;
    let files = &inner.files;
    let limits = &spec.options.limits;
    let language = spec.options.language;

    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(GuestStream::new(spec.capture.clone(), Stream::Stdout))
        .stderr(GuestStream::new(spec.capture.clone(), Stream::Stderr))
        .allow_blocking_current_thread(true);
    if language == Language::Python {
        wasi.args(PYTHON_ARGV);
        if spec.template_build {
            wasi.arg(TEMPLATE_BUILD_ENV);
        }
    } else {
        wasi.args(&["qjs"]);
    }
    // Both runtimes may start from a snapshot: the clock must read later than at the build.
    wasi.monotonic_clock(AnchoredMonotonicClock::new());
    for (key, value) in guest_env(spec.options, spec.cwd, spec.template_build) {
        wasi.env(key, value);
    }
    let preopen = |wasi: &mut WasiCtxBuilder, host: &std::path::Path, guest: &str, write: bool| {
        let perms = if write {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(host, guest, perms)
            .map(|_| ())
            .map_err(|e| Error::internal(format!("mounting {} at {guest}: {e:#}", host.display())))
    };
    if language == Language::Python {
        // The order matters to the runtime: stdlib, matplotlib data, /tmp, then home.
        preopen(&mut wasi, &files.python_lib_dir(), GUEST_LIB_DIR, false)?;
        preopen(&mut wasi, &files.mpl_data_dir(), GUEST_MPL_DATA_DIR, false)?;
        if let Some(Some(fonts)) = inner.mpl_font_cache.get() {
            copy_font_cache(fonts, spec.tmp)?;
        }
    }
    preopen(&mut wasi, spec.tmp, "/tmp", true)?;
    preopen(&mut wasi, spec.home.host_path(), GUEST_HOME, true)?;

    let state = HostState {
        wasi: wasi.build_p1(),
        memory: MemoryLimiter {
            limit: limits.memory_bytes as usize,
            refused: false,
        },
        door: Door {
            boot: Some(Boot {
                kernel: inner.kernel.clone(),
                may_supply_bytecode: spec.options.env.is_empty() && !spec.template_build,
            }),
            ..Door::default()
        },
        quota: DiskQuota::new(
            limits.disk_bytes,
            vec![spec.home.host_path().to_path_buf(), spec.tmp.to_path_buf()],
        ),
        deadline: Instant::now() + Duration::from_secs(60),
        forward: None,
    };
    let mut store = Store::new(&inner.wasm, state);
    store.limiter(|s| &mut s.memory);
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline {
            Err(Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);
    if inner.fuel_metering {
        store.set_fuel(u64::MAX).map_err(Error::internal)?;
    }
    Ok(store)
}

/// The guest's monotonic clock: nanoseconds since the Unix epoch when the store was made, then
/// advancing with the host's monotonic clock. A context restored from a template therefore
/// reads later times than its build did (`time.monotonic()` never goes backwards across the
/// snapshot), as long as the host's wall clock was not set back in between.
struct AnchoredMonotonicClock {
    anchor_ns: u64,
    started: Instant,
}

impl AnchoredMonotonicClock {
    fn new() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        AnchoredMonotonicClock {
            anchor_ns: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX / 2),
            started: Instant::now(),
        }
    }
}

impl wasmtime_wasi::HostMonotonicClock for AnchoredMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX / 2);
        self.anchor_ns.saturating_add(elapsed)
    }
}

/// The guest's environment variables: codebox's own, then the caller's, then `PWD` for a
/// working directory other than `/home/user`.
pub(crate) fn guest_env(
    options: &ContextOptions,
    cwd: Option<&str>,
    template_build: bool,
) -> Vec<(String, String)> {
    let mut env = vec![("HOME", GUEST_HOME), ("TMPDIR", "/tmp")];
    if options.language == Language::Python {
        env.extend([
            ("PYTHONTZPATH", ""),
            ("MPLBACKEND", MPL_BACKEND),
            ("MPLCONFIGDIR", MPL_CONFIG_DIR),
        ]);
        if template_build {
            env.push((TEMPLATE_BUILD_ENV, "1"));
        }
    }
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(options.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(cwd) = cwd {
        env.push(("PWD".into(), cwd.to_string()));
    }
    env
}

/// Puts the prebuilt matplotlib font cache into a context's private `/tmp`. A copy, not a
/// link: the guest may write there. A recycled `/tmp` keeps its copy only if it is exactly
/// the prebuilt one.
fn copy_font_cache(from: &std::path::Path, tmp: &std::path::Path) -> Result<(), Error> {
    let target = tmp.join(MPL_CONFIG_NAME);
    if target.exists() {
        if same_files(from, &target) {
            return Ok(());
        }
        std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    }
    std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    for entry in std::fs::read_dir(from)
        .map_err(|e| Error::io(from, e))?
        .flatten()
    {
        let dest = target.join(entry.file_name());
        std::fs::copy(entry.path(), &dest).map_err(|e| Error::io(&dest, e))?;
    }
    Ok(())
}

/// Whether directory `copy` holds exactly the regular files of `original`, byte for byte.
fn same_files(original: &std::path::Path, copy: &std::path::Path) -> bool {
    let names = |dir: &std::path::Path| -> Option<Vec<std::ffi::OsString>> {
        let mut names = std::fs::read_dir(dir)
            .ok()?
            .map(|e| e.ok().map(|e| e.file_name()))
            .collect::<Option<Vec<_>>>()?;
        names.sort();
        Some(names)
    };
    let Some(wanted) = names(original) else {
        return false;
    };
    if names(copy).as_ref() != Some(&wanted) {
        return false;
    }
    wanted.iter().all(|name| {
        let path = copy.join(name);
        let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        regular && std::fs::read(&path).ok() == std::fs::read(original.join(name)).ok()
    })
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), Error> {
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            let shown: String = key.chars().take(100).collect();
            return Err(Error::InvalidInput(format!(
                "invalid environment variable {shown:?}"
            )));
        }
    }
    Ok(())
}

fn timeout_error(timeout: Duration) -> ExecutionError {
    ExecutionError {
        kind: ErrorKind::Timeout,
        name: "TimeoutError".into(),
        value: format!(
            "the execution was stopped after the {} time limit; the context was restarted and \
             its variables were lost (files are kept)",
            human_duration(timeout)
        ),
        traceback: String::new(),
    }
}

fn crashed(message: String) -> ExecutionError {
    ExecutionError {
        kind: ErrorKind::Crashed,
        name: "Crashed".into(),
        value: format!("{message}; the context was restarted and its variables were lost"),
        traceback: String::new(),
    }
}

/// Classifies a trap by its code (never by its message).
fn trap_error(
    error: &wasmtime::Error,
    timeout: Duration,
    fuel: Option<u64>,
    memory_refused: bool,
) -> ExecutionError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => timeout_error(timeout),
        Some(Trap::OutOfFuel) => ExecutionError {
            kind: ErrorKind::OutOfFuel,
            name: "OutOfFuel".into(),
            value: format!(
                "the execution used up its fuel budget of {}; the context was restarted and its \
                 variables were lost",
                fuel.unwrap_or(0)
            ),
            traceback: String::new(),
        },
        _ if memory_refused => ExecutionError {
            kind: ErrorKind::MemoryLimit,
            name: "MemoryLimit".into(),
            value: "the interpreter crashed after reaching the memory limit; the context was \
                    restarted and its variables were lost"
                .into(),
            traceback: String::new(),
        },
        Some(Trap::StackOverflow) => crashed("the interpreter overflowed its stack".into()),
        Some(trap) => crashed(format!("the interpreter crashed ({trap})")),
        None => crashed(format!("the interpreter failed: {}", first_line(error))),
    }
}

/// The error and its causes on one line, without the wasm backtrace.
fn first_line(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines().next().unwrap_or("").to_string()
}

fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{secs:.3} s").replace(".000", "")
    }
}
