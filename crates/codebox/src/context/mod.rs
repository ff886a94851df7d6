//! A context: one live interpreter whose state persists between executions.
//!
//! The [`Context`] serialises executions on its instance. Each execution goes through the
//! same named steps: [`State::arm`] (deadline, fuel, output budget), [`State::run`] (the
//! runtime's cell runner, bounded by the deadline), [`State::collect`] (output and results),
//! [`outcome::classify`] (what the caller is told), and a restart when the instance cannot go
//! on (timeout, trap, exit).

mod options;
mod outcome;

pub use options::{ContextOptions, ExecuteRequest, MAX_CODE_BYTES};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::{ContextSlot, Core};
use crate::error::Error;
use crate::execution::{DisplayData, Execution};
use crate::files::{GUEST_HOME, HomeDir};
use crate::limits::Limits;
use crate::output;
use crate::output::{Capture, SharedCapture};
use crate::runtimes::python::Template;
use crate::runtimes::{Cell, CellReport, Instance, Runtime, StartSpec};
use crate::store::{self, StoreSpec};
use crate::workdir::WorkDir;
use outcome::{Outcome, Refusals};

/// A live interpreter. Variables, imports and files persist between executions; executions
/// on one context run one at a time, in the order they were called. Dropping the context
/// frees its instance (and its private directories).
///
/// Dropping an `execute` future before it completes abandons that execution; the context then
/// starts afresh (like a timeout) before its next execution.
pub struct Context {
    state: tokio::sync::Mutex<State>,
    template: Option<String>,
    home: HomeDir,
    limits: Limits,
}

struct State {
    core: Arc<Core>,
    runtime: Runtime,
    /// The template Python instances start from; `None` for the plain runtime.
    template: Option<Arc<Template>>,
    options: ContextOptions,
    home: HomeDir,
    /// Private `/tmp`; emptied for reuse on drop.
    tmp: WorkDir,
    /// The home directory, when the context made its own; emptied for reuse on drop.
    _own_home: Option<WorkDir>,
    capture: SharedCapture,
    /// The working directory as a guest path, when not `/home/user`.
    cwd: Option<String>,
    live: Option<Instance>,
    /// An execution is running in `live`. Still true at the start of the next one means the
    /// previous call was cancelled (its future dropped) mid-turn: that instance is unusable.
    in_flight: bool,
    executions: u64,
    _slot: ContextSlot,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("home", &self.home.host_path())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Starts a context of `runtime` from `template` (Python) with `options`, which the
    /// caller has validated.
    pub(crate) async fn create(
        core: Arc<Core>,
        runtime: Runtime,
        options: ContextOptions,
        template: Option<Arc<Template>>,
    ) -> Result<Context, Error> {
        let slot = core.acquire_slot()?;
        let tmp = core.take_tmp_dir()?;
        let (home, own_home) = match &options.home {
            Some(home) => (home.clone(), None),
            None => {
                let dir = core.take_home_dir()?;
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
        let template_name = options.language.has_templates().then(|| {
            template
                .as_ref()
                .map_or(crate::runtimes::python::template::STDLIB_TEMPLATE, |t| {
                    t.name.as_str()
                })
                .to_string()
        });
        let mut state = State {
            core,
            runtime,
            template,
            options,
            home: home.clone(),
            tmp,
            _own_home: own_home,
            capture: Arc::new(Mutex::new(Capture::default())),
            cwd,
            live: None,
            in_flight: false,
            executions: 0,
            _slot: slot,
        };
        state.live = Some(state.start().await?);
        Ok(Context {
            limits: state.options.limits.clone(),
            state: tokio::sync::Mutex::new(state),
            template: template_name,
            home,
        })
    }

    /// Runs `code` (or an [`ExecuteRequest`]) and returns what it produced.
    ///
    /// `Err` only for host-side problems; the guest's own failures (exceptions, timeouts,
    /// limits) are reported in [`Execution::error`] together with the output written so far.
    pub async fn execute(&self, request: impl Into<ExecuteRequest>) -> Result<Execution, Error> {
        let request = request.into();
        request.validate()?;
        let mut state = self.state.lock().await;
        state.execute(request).await
    }

    /// The context's `/home/user`, for reading and writing files from the host.
    pub fn files(&self) -> &HomeDir {
        &self.home
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

/// One execution's settings, fixed when it is armed.
struct Armed {
    started: Instant,
    deadline: Instant,
    timeout: Duration,
}

impl State {
    /// A new instance: a store with this context's view, the runtime started in it.
    async fn start(&mut self) -> Result<Instance, Error> {
        let layout = self.runtime.layout();
        let env = store::guest_env(&layout, &self.options.env, self.cwd.as_deref());
        let store = store::new_store(
            &self.core,
            &StoreSpec {
                layout: &layout,
                limits: &self.options.limits,
                env: &env,
                tmp: self.tmp.path(),
                home: &self.home,
                capture: &self.capture,
                may_supply_bytecode: self.options.env.is_empty(),
            },
        )?;
        let spec = StartSpec {
            capture: &self.capture,
            env: &env,
            memory_limit: self.options.limits.memory_bytes,
            template: self.template.as_deref(),
        };
        self.runtime.start(&self.core, store, &spec).await
    }

    async fn execute(&mut self, request: ExecuteRequest) -> Result<Execution, Error> {
        self.ensure_live().await?;
        let armed = self.arm(&request)?;
        self.executions += 1;
        let cell = Cell {
            code: request.code,
            env: request.env,
            mode: request.mode,
            number: self.executions,
            language: self.options.language,
        };
        let mut ran = self.run(cell, armed.deadline).await;
        let results = match &mut ran {
            Some(Ok(report)) => std::mem::take(&mut report.results),
            _ => Vec::new(),
        };
        let (mut execution, refused) = self.collect(results);
        let fuel = self.options.limits.fuel;
        let Outcome {
            error,
            exit_status,
            restart,
        } = outcome::classify(ran.as_ref(), armed.timeout, fuel, refused);
        execution.error = error;
        execution.exit_status = exit_status;
        if restart {
            execution.context_restarted = true;
            // Start the replacement now so the next execution does not wait; if that fails
            // the next execution tries again.
            self.live = None;
            self.executions = 0;
            self.live = self.start().await.ok();
        }
        execution.duration = armed.started.elapsed();
        Ok(execution)
    }

    /// Makes sure an instance is ready: the last restart may have failed, or the last
    /// execution may have been cancelled mid-turn.
    async fn ensure_live(&mut self) -> Result<(), Error> {
        if std::mem::take(&mut self.in_flight) {
            self.live = None;
        }
        if self.live.is_none() {
            self.executions = 0;
            self.live = Some(self.start().await?);
        }
        Ok(())
    }

    /// Sets this execution's deadline, fuel and output budget (the store also forgets the
    /// refusals the limits recorded last time).
    fn arm(&mut self, request: &ExecuteRequest) -> Result<Armed, Error> {
        let limits = &self.options.limits;
        let timeout = request.timeout.unwrap_or(limits.timeout);
        let started = Instant::now();
        let deadline = started + timeout;
        let live = self.live.as_mut().expect("ensure_live started one");
        store::arm(
            live.store(),
            deadline,
            limits.fuel,
            self.core.fuel_metering(),
        )?;
        output::start_streaming(
            &self.capture,
            limits.output_bytes,
            request.on_output.clone(),
        );
        Ok(Armed {
            started,
            deadline,
            timeout,
        })
    }

    /// Runs the cell until it ends or the deadline passes; `None` when the deadline passed
    /// while the guest waited in a host call (the epoch cannot interrupt it there).
    async fn run(&mut self, cell: Cell, deadline: Instant) -> Option<wasmtime::Result<CellReport>> {
        let live = self.live.as_mut().expect("ensure_live started one");
        self.in_flight = true;
        let ran = tokio::time::timeout_at(deadline.into(), live.run_cell(cell))
            .await
            .ok();
        self.in_flight = false;
        ran
    }

    /// What the execution produced, whatever happened, and what the limits refused.
    fn collect(&mut self, results: Vec<DisplayData>) -> (Execution, Refusals) {
        let output = output::finish(&self.capture);
        let live = self.live.as_mut().expect("ensure_live started one");
        let metered = self.core.fuel_metering();
        let store = live.store();
        let fuel_left = if metered { store.get_fuel().ok() } else { None };
        let data = store.data();
        let refused = Refusals {
            memory: data.memory.refused,
            disk: data.quota.refused,
        };
        let budget = self.options.limits.fuel.unwrap_or(u64::MAX);
        let execution = Execution {
            stdout: output.stdout,
            stderr: output.stderr,
            stdout_truncated: output.stdout_truncated,
            stderr_truncated: output.stderr_truncated,
            results,
            execution_count: self.executions,
            fuel_consumed: fuel_left.map(|left| budget - left),
            ..Execution::default()
        };
        (execution, refused)
    }
}
