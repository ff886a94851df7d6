//! Sandboxes: one `/home/user` plus its execution contexts, owned by an API key, with a
//! lifetime after which they are killed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use codebox::{
    Context, ContextOptions, Engine, ExecuteRequest, Execution, HomeDir, Language, Limits,
};
use serde::Serialize;

use crate::ServerConfig;
use crate::auth::Owner;
use crate::error::{ApiError, ApiResult};
use crate::metrics::{Metrics, Outcome};
use crate::util::{random_id, rfc3339};

/// Parses a language name as clients send it (trimmed, any case; `js`, `ts` accepted);
/// `None` means Python.
pub(crate) fn parse_language(name: Option<&str>) -> ApiResult<Language> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => Ok(Language::Python),
        Some(name) => Language::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                "unknown_language",
                format!(
                    "unknown language {:?}; this server runs: python, javascript, typescript",
                    name.chars().take(40).collect::<String>()
                ),
            )
        }),
    }
}

/// One execution context inside a sandbox.
pub(crate) struct ContextEntry {
    pub id: String,
    pub sandbox_id: String,
    pub language: Language,
    pub cwd: String,
    pub context: Context,
    metrics: Arc<Metrics>,
    _memory: Reservation,
}

/// One execution in progress; when it ends, or is dropped unfinished (cancelled), it is
/// counted and logged.
struct Running<'a> {
    entry: &'a ContextEntry,
    started: Instant,
    outcome: Outcome,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let entry = self.entry;
        entry.metrics.record_execution(self.outcome, elapsed);
        tracing::info!(
            sandbox = %entry.sandbox_id,
            context = %entry.id,
            language = entry.language.name(),
            outcome = self.outcome.label(),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "execution"
        );
    }
}

/// A context's share of the server's memory budget, given back when the context goes.
struct Reservation {
    budget: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// Takes `bytes` from the budget, or says why not.
fn reserve(budget: &Arc<AtomicU64>, bytes: u64) -> ApiResult<Reservation> {
    budget
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            left.checked_sub(bytes)
        })
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "memory_budget",
                "the server's memory budget is taken by live contexts; kill a sandbox or try later",
            )
        })?;
    Ok(Reservation {
        budget: budget.clone(),
        bytes,
    })
}

impl ContextEntry {
    /// Runs one execution, counted in the metrics and logged with its sandbox, context,
    /// outcome and duration (never its code or output). Dropping the future cancels it.
    pub async fn execute(&self, request: ExecuteRequest) -> Result<Execution, codebox::Error> {
        let mut running = Running {
            entry: self,
            started: Instant::now(),
            outcome: Outcome::Cancelled,
        };
        let result = self.context.execute(request).await;
        running.outcome = Outcome::of(&result);
        result
    }

    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            language: self.language.name(),
            cwd: self.cwd.clone(),
            template: self.context.template().map(str::to_string),
        }
    }
}

pub(crate) struct Sandbox {
    pub id: String,
    pub owner: Owner,
    /// Secret for the E2B-compatible URL prefix (`/e2b/{access_token}`).
    pub access_token: String,
    pub home: HomeDir,
    _dir: tempfile::TempDir,
    pub env_vars: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// Template for the sandbox's Python contexts; `None` for the engine's default.
    pub template: Option<String>,
    pub started_at: SystemTime,
    end_at: Mutex<SystemTime>,
    contexts: Mutex<Vec<Arc<ContextEntry>>>,
    /// Serialises creation of the default context.
    default_lock: tokio::sync::Mutex<()>,
    /// Becomes true when the sandbox is killed; running executions watch it.
    killed: tokio::sync::watch::Sender<bool>,
}

/// The public description of a sandbox.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxInfo {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    pub started_at: String,
    pub end_at: String,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub contexts: usize,
    /// Path prefix for E2B clients: set `E2B_SANDBOX_URL` to the server's address + this.
    pub e2b_path: String,
}

#[derive(Serialize, Clone)]
pub(crate) struct ContextInfo {
    pub id: String,
    pub language: &'static str,
    pub cwd: String,
    /// The template a Python context started from (`stdlib` for none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

impl Sandbox {
    pub fn info(&self) -> SandboxInfo {
        SandboxInfo {
            sandbox_id: self.id.clone(),
            started_at: rfc3339(self.started_at),
            end_at: rfc3339(self.end_at()),
            metadata: self.metadata.clone(),
            env_vars: self.env_vars.clone(),
            template: self.template.clone(),
            contexts: self
                .contexts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            e2b_path: format!("/e2b/{}", self.access_token),
        }
    }

    pub fn end_at(&self) -> SystemTime {
        *self.end_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_end_at(&self, t: SystemTime) {
        *self.end_at.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    pub fn killed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.killed.subscribe()
    }

    pub fn contexts(&self) -> Vec<Arc<ContextEntry>> {
        self.contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn context_infos(&self) -> Vec<ContextInfo> {
        self.contexts().iter().map(|c| c.info()).collect()
    }

    pub fn context(&self, id: &str) -> ApiResult<Arc<ContextEntry>> {
        self.contexts()
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| ApiError::not_found("context"))
    }

    pub fn remove_context(&self, id: &str) -> ApiResult<()> {
        let mut contexts = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        let before = contexts.len();
        contexts.retain(|c| c.id != id);
        if contexts.len() == before {
            return Err(ApiError::not_found("context"));
        }
        Ok(())
    }
}

/// All live sandboxes.
pub(crate) struct Registry {
    pub engine: Engine,
    pub config: ServerConfig,
    pub metrics: Arc<Metrics>,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    /// Bytes of the memory budget not reserved by a live context.
    memory_left: Arc<AtomicU64>,
}

/// What a client may set when creating a sandbox.
pub(crate) struct NewSandbox {
    pub timeout: Option<u64>,
    /// Template for the sandbox's Python contexts; `None` for the engine's default.
    pub template: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

impl Registry {
    pub fn new(engine: Engine, config: ServerConfig) -> Registry {
        let memory_left = Arc::new(AtomicU64::new(config.memory_budget_bytes));
        Registry {
            engine,
            config,
            metrics: Arc::default(),
            sandboxes: Mutex::new(HashMap::new()),
            memory_left,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.sandboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lifetime(&self, timeout: Option<u64>) -> ApiResult<Duration> {
        let secs = timeout.unwrap_or(self.config.sandbox_timeout.as_secs());
        let max = self.config.max_sandbox_timeout.as_secs();
        if secs == 0 || secs > max {
            return Err(ApiError::bad_request(
                "invalid_timeout",
                format!("timeout must be between 1 and {max} seconds"),
            ));
        }
        Ok(Duration::from_secs(secs))
    }

    pub fn create(&self, owner: Owner, new: NewSandbox) -> ApiResult<Arc<Sandbox>> {
        let lifetime = self.lifetime(new.timeout)?;
        check_map("envVars", &new.env_vars, true)?;
        check_map("metadata", &new.metadata, false)?;
        let dir = tempfile::Builder::new()
            .prefix("codebox-sandbox-")
            .tempdir_in(&self.config.data_dir)
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
        let home = HomeDir::new(dir.path(), self.config.limits.disk_bytes)?;
        let now = SystemTime::now();
        let (killed, _) = tokio::sync::watch::channel(false);
        let sandbox = Arc::new(Sandbox {
            id: random_id("sbx_"),
            owner,
            access_token: random_id("tok_"),
            home,
            _dir: dir,
            env_vars: new.env_vars,
            metadata: new.metadata,
            template: new.template,
            started_at: now,
            end_at: Mutex::new(now + lifetime),
            contexts: Mutex::new(Vec::new()),
            default_lock: tokio::sync::Mutex::new(()),
            killed,
        });
        let mut sandboxes = self.lock();
        if sandboxes.len() >= self.config.max_sandboxes {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sandboxes",
                format!(
                    "the server already runs its maximum of {} sandboxes; kill one or try later",
                    self.config.max_sandboxes
                ),
            ));
        }
        sandboxes.insert(sandbox.id.clone(), sandbox.clone());
        tracing::info!(sandbox = %sandbox.id, lifetime_s = lifetime.as_secs(), "sandbox created");
        Ok(sandbox)
    }

    /// The caller's sandbox `id`; someone else's is reported as missing.
    pub fn get(&self, owner: &Owner, id: &str) -> ApiResult<Arc<Sandbox>> {
        match self.lock().get(id) {
            Some(s) if &s.owner == owner && s.end_at() > SystemTime::now() => Ok(s.clone()),
            _ => Err(ApiError::not_found("sandbox")),
        }
    }

    /// The sandbox whose E2B access token is `token`.
    pub fn by_token(&self, token: &str) -> ApiResult<Arc<Sandbox>> {
        let now = SystemTime::now();
        self.lock()
            .values()
            .find(|s| {
                constant_time_eq(s.access_token.as_bytes(), token.as_bytes()) && s.end_at() > now
            })
            .cloned()
            .ok_or_else(|| ApiError::not_found("sandbox"))
    }

    pub fn list(&self, owner: &Owner) -> Vec<Arc<Sandbox>> {
        let mut list: Vec<_> = self
            .lock()
            .values()
            .filter(|s| &s.owner == owner)
            .cloned()
            .collect();
        list.sort_by_key(|s| s.started_at);
        list
    }

    pub fn kill(&self, owner: &Owner, id: &str) -> ApiResult<()> {
        let sandbox = self.get(owner, id)?;
        self.remove(&sandbox.id, "killed");
        Ok(())
    }

    /// Removes a sandbox and stops what runs in it; `why` is for the log.
    fn remove(&self, id: &str, why: &'static str) {
        let removed = self.lock().remove(id);
        if let Some(sandbox) = removed {
            let _ = sandbox.killed.send(true);
            tracing::info!(sandbox = %sandbox.id, reason = why, "sandbox ended");
        }
    }

    /// Kills every sandbox (at shutdown): running executions stop, streams end.
    pub fn kill_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            self.remove(&id, "shutdown");
        }
    }

    /// How many sandboxes are live.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn set_timeout(&self, owner: &Owner, id: &str, timeout: u64) -> ApiResult<Arc<Sandbox>> {
        let sandbox = self.get(owner, id)?;
        sandbox.set_end_at(SystemTime::now() + self.lifetime(Some(timeout))?);
        Ok(sandbox)
    }

    /// Kills the sandboxes whose time is up; called periodically.
    pub fn reap(&self) {
        let now = SystemTime::now();
        let expired: Vec<String> = self
            .lock()
            .values()
            .filter(|s| s.end_at() <= now)
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            self.remove(&id, "expired");
        }
    }

    pub fn new_context(
        &self,
        sandbox: &Sandbox,
        language: Language,
        cwd: Option<&str>,
        template: Option<&str>,
    ) -> impl Future<Output = ApiResult<Arc<ContextEntry>>> + Send + 'static {
        let engine = self.engine.clone();
        let limits: Limits = self.config.limits.clone();
        let mut options = ContextOptions::new()
            .limits(limits)
            .home(sandbox.home.clone())
            .language(language);
        options.env = sandbox.env_vars.clone();
        if language == Language::Python {
            options.template = template.map(str::to_string).or(sandbox.template.clone());
        } else if let Some(name) = template {
            // The engine refuses it with a clear message.
            options.template = Some(name.to_string());
        }
        let cwd = cwd.map(str::to_string).filter(|c| !c.is_empty());
        if let Some(cwd) = &cwd {
            options = options.cwd(cwd.clone());
        }
        let max_per_sandbox = self.config.max_contexts_per_sandbox;
        let count = sandbox.contexts().len();
        let budget = self.memory_left.clone();
        let metrics = self.metrics.clone();
        let sandbox_id = sandbox.id.clone();
        async move {
            if count >= max_per_sandbox {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_contexts",
                    format!("a sandbox may have at most {max_per_sandbox} contexts"),
                ));
            }
            let memory = reserve(&budget, options.limits.memory_bytes)?;
            let context = engine.create_context(options).await?;
            Ok(Arc::new(ContextEntry {
                id: random_id("ctx_"),
                sandbox_id,
                language,
                cwd: normalise_cwd(cwd.as_deref()),
                context,
                metrics,
                _memory: memory,
            }))
        }
    }

    pub async fn add_context(
        &self,
        sandbox: &Sandbox,
        language: Language,
        cwd: Option<&str>,
        template: Option<&str>,
    ) -> ApiResult<Arc<ContextEntry>> {
        let entry = self.new_context(sandbox, language, cwd, template).await?;
        sandbox
            .contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry.clone());
        Ok(entry)
    }

    /// The sandbox's default context for `language`, created on first use.
    pub async fn default_context(
        &self,
        sandbox: &Sandbox,
        language: Language,
    ) -> ApiResult<Arc<ContextEntry>> {
        let _guard = sandbox.default_lock.lock().await;
        if let Some(entry) = sandbox
            .contexts()
            .into_iter()
            .find(|c| c.language == language)
        {
            return Ok(entry);
        }
        self.add_context(sandbox, language, None, None).await
    }
}

fn normalise_cwd(cwd: Option<&str>) -> String {
    match cwd {
        None => codebox::GUEST_HOME.to_string(),
        Some(c) if c.starts_with('/') => c.trim_end_matches('/').to_string(),
        Some(c) => format!("{}/{}", codebox::GUEST_HOME, c.trim_end_matches('/')),
    }
}

fn check_map(field: &str, map: &BTreeMap<String, String>, env: bool) -> ApiResult<()> {
    if map.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_input",
            format!("{field} has more than 256 entries"),
        ));
    }
    for (key, value) in map {
        let bad_key = key.is_empty() || key.len() > 256 || (env && key.contains(['=', '\0']));
        if bad_key || value.len() > 16 * 1024 || (env && value.contains('\0')) {
            return Err(ApiError::bad_request(
                "invalid_input",
                format!(
                    "{field} has an invalid entry {:?}",
                    key.chars().take(40).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
