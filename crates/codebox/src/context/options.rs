//! What a caller asks for: how a context is set up ([`ContextOptions`]) and what one
//! execution runs ([`ExecuteRequest`]), with the checks every request passes before anything
//! runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::execution::Stream;
use crate::files::HomeDir;
use crate::limits::Limits;
use crate::output::OutputCallback;
use crate::runtimes::{ExecutionMode, Language};

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
    pub(crate) code: String,
    pub(crate) timeout: Option<Duration>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) on_output: Option<OutputCallback>,
    pub(crate) mode: ExecutionMode,
}

impl ExecuteRequest {
    /// A request to run `code`.
    pub fn new(code: impl Into<String>) -> Self {
        ExecuteRequest {
            code: code.into(),
            timeout: None,
            env: BTreeMap::new(),
            on_output: None,
            mode: ExecutionMode::Cell,
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

    /// How the code runs: as a notebook cell (the default: a final expression's value is
    /// the main result) or as a script (see [`ExecutionMode::Script`]).
    pub fn mode(mut self, mode: ExecutionMode) -> Self {
        self.mode = mode;
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
            .field("mode", &self.mode)
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

pub(crate) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), Error> {
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

impl ContextOptions {
    /// Checks everything that needs no runtime or template: limits, fuel, environment.
    pub(crate) fn validate(&self, fuel_metering: bool) -> Result<(), Error> {
        self.limits.validate()?;
        if self.limits.fuel.is_some() && !fuel_metering {
            return Err(Error::InvalidInput(
                "limits.fuel needs an engine built with fuel_metering(true)".into(),
            ));
        }
        validate_env(&self.env)
    }
}

impl ExecuteRequest {
    /// Checks the request before it waits for its turn on the context.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.code.len() > MAX_CODE_BYTES {
            return Err(Error::InvalidInput(format!(
                "the code is {} bytes; the limit is {MAX_CODE_BYTES}",
                self.code.len()
            )));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidInput(
                "timeout must be greater than zero".into(),
            ));
        }
        validate_env(&self.env)
    }
}
