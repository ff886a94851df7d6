//! All live sandboxes: creation within the server's caps, lookup by owner or access token,
//! lifetimes (given, extended, reaped when up), and the contexts made in them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use codebox::{ContextOptions, Engine, HomeDir, Language};

use super::budget::MemoryBudget;
use super::{ContextEntry, Owner, Sandbox, SandboxError};
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::util::{clip, lock, random_id};

/// All live sandboxes.
#[derive(Debug)]
pub(crate) struct Registry {
    pub engine: Engine,
    pub config: ServerConfig,
    pub metrics: Arc<Metrics>,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    memory: MemoryBudget,
}

/// What a client may set when creating a sandbox.
#[derive(Debug, Default)]
pub(crate) struct NewSandbox {
    /// Lifetime in seconds; `None` for the server's default.
    pub timeout: Option<u64>,
    /// Template for the sandbox's Python contexts; `None` for the engine's default.
    pub template: Option<String>,
    pub env_vars: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

impl Registry {
    pub fn new(engine: Engine, config: ServerConfig) -> Registry {
        let memory = MemoryBudget::new(config.memory_budget_bytes);
        Registry {
            engine,
            config,
            metrics: Arc::default(),
            sandboxes: Mutex::new(HashMap::new()),
            memory,
        }
    }

    fn lifetime(&self, timeout: Option<u64>) -> Result<Duration, SandboxError> {
        let secs = timeout.unwrap_or(self.config.sandbox_timeout.as_secs());
        let max_secs = self.config.max_sandbox_timeout.as_secs();
        if secs == 0 || secs > max_secs {
            return Err(SandboxError::InvalidLifetime { max_secs });
        }
        Ok(Duration::from_secs(secs))
    }

    /// Refuses a template name that does not exist, before a sandbox is made for it.
    fn check_template(&self, name: &str) -> Result<(), SandboxError> {
        if self.engine.has_template(name) {
            return Ok(());
        }
        Err(SandboxError::UnknownTemplate {
            name: clip(name, 64),
        })
    }

    pub fn create(&self, owner: Owner, new: NewSandbox) -> Result<Arc<Sandbox>, SandboxError> {
        if let Some(name) = &new.template {
            self.check_template(name)?;
        }
        let lifetime = self.lifetime(new.timeout)?;
        check_map("envVars", &new.env_vars, true)?;
        check_map("metadata", &new.metadata, false)?;
        let dir = tempfile::Builder::new()
            .prefix("codebox-sandbox-")
            .tempdir_in(&self.config.data_dir)
            .map_err(|e| SandboxError::Internal(e.to_string()))?;
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
        let mut sandboxes = lock(&self.sandboxes);
        if sandboxes.len() >= self.config.max_sandboxes {
            return Err(SandboxError::TooManySandboxes {
                max: self.config.max_sandboxes,
            });
        }
        sandboxes.insert(sandbox.id.clone(), sandbox.clone());
        tracing::info!(sandbox = %sandbox.id, lifetime_s = lifetime.as_secs(), "sandbox created");
        Ok(sandbox)
    }

    /// The caller's sandbox `id`; someone else's is reported as missing.
    pub fn get(&self, owner: &Owner, id: &str) -> Result<Arc<Sandbox>, SandboxError> {
        match lock(&self.sandboxes).get(id) {
            Some(s) if &s.owner == owner && s.end_at() > SystemTime::now() => Ok(s.clone()),
            _ => Err(SandboxError::SandboxNotFound),
        }
    }

    /// The sandbox whose access token is `token`.
    pub fn by_token(&self, token: &str) -> Result<Arc<Sandbox>, SandboxError> {
        let now = SystemTime::now();
        lock(&self.sandboxes)
            .values()
            .find(|s| {
                constant_time_eq(s.access_token.as_bytes(), token.as_bytes()) && s.end_at() > now
            })
            .cloned()
            .ok_or(SandboxError::SandboxNotFound)
    }

    /// The caller's sandboxes, oldest first.
    pub fn list(&self, owner: &Owner) -> Vec<Arc<Sandbox>> {
        let mut list: Vec<_> = lock(&self.sandboxes)
            .values()
            .filter(|s| &s.owner == owner)
            .cloned()
            .collect();
        list.sort_by_key(|s| s.started_at);
        list
    }

    pub fn kill(&self, owner: &Owner, id: &str) -> Result<(), SandboxError> {
        let sandbox = self.get(owner, id)?;
        self.remove(&sandbox.id, "killed");
        Ok(())
    }

    /// Removes a sandbox and stops what runs in it; `why` is for the log.
    fn remove(&self, id: &str, why: &'static str) {
        let removed = lock(&self.sandboxes).remove(id);
        if let Some(sandbox) = removed {
            let _ = sandbox.killed.send(true);
            tracing::info!(sandbox = %sandbox.id, reason = why, "sandbox ended");
        }
    }

    /// Kills every sandbox (at shutdown): running executions stop, streams end.
    pub fn kill_all(&self) {
        let ids: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        for id in ids {
            self.remove(&id, "shutdown");
        }
    }

    /// How many sandboxes are live.
    pub fn count(&self) -> usize {
        lock(&self.sandboxes).len()
    }

    /// Gives the caller's sandbox `timeout` more seconds from now.
    pub fn set_timeout(
        &self,
        owner: &Owner,
        id: &str,
        timeout: u64,
    ) -> Result<Arc<Sandbox>, SandboxError> {
        let sandbox = self.get(owner, id)?;
        sandbox.set_end_at(SystemTime::now() + self.lifetime(Some(timeout))?);
        Ok(sandbox)
    }

    /// Kills the sandboxes whose time is up; called periodically.
    pub fn reap(&self) {
        let now = SystemTime::now();
        let expired: Vec<String> = lock(&self.sandboxes)
            .values()
            .filter(|s| s.end_at() <= now)
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            self.remove(&id, "expired");
        }
    }

    /// Makes a context in `sandbox` without listing it there (a process's context is its
    /// own). The future borrows nothing, so it can be awaited anywhere.
    pub fn new_context(
        &self,
        sandbox: &Sandbox,
        language: Language,
        cwd: Option<&str>,
        template: Option<&str>,
    ) -> impl Future<Output = Result<Arc<ContextEntry>, SandboxError>> + Send + 'static {
        let engine = self.engine.clone();
        let mut options = ContextOptions::new()
            .limits(self.config.limits.clone())
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
        let max = self.config.max_contexts_per_sandbox;
        let count = sandbox.context_count();
        let memory = self.memory.clone();
        let metrics = self.metrics.clone();
        let sandbox_id = sandbox.id.clone();
        async move {
            if count >= max {
                return Err(SandboxError::TooManyContexts { max });
            }
            let reservation = memory.reserve(options.limits.memory_bytes)?;
            let context = engine.create_context(options).await?;
            Ok(Arc::new(ContextEntry {
                id: random_id("ctx_"),
                sandbox_id,
                language,
                cwd: normalise_cwd(cwd.as_deref()),
                context,
                metrics,
                _memory: reservation,
            }))
        }
    }

    /// Makes a context in `sandbox` and lists it there.
    pub async fn add_context(
        &self,
        sandbox: &Sandbox,
        language: Language,
        cwd: Option<&str>,
        template: Option<&str>,
    ) -> Result<Arc<ContextEntry>, SandboxError> {
        let entry = self.new_context(sandbox, language, cwd, template).await?;
        lock(&sandbox.contexts).push(entry.clone());
        Ok(entry)
    }

    /// The sandbox's default context for `language`, created on first use.
    pub async fn default_context(
        &self,
        sandbox: &Sandbox,
        language: Language,
    ) -> Result<Arc<ContextEntry>, SandboxError> {
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

/// Environment variables and metadata: bounded in count and size; environment names
/// without `=` or NUL.
fn check_map(field: &str, map: &BTreeMap<String, String>, env: bool) -> Result<(), SandboxError> {
    if map.len() > 256 {
        return Err(SandboxError::InvalidInput(format!(
            "{field} has more than 256 entries"
        )));
    }
    for (key, value) in map {
        let bad_key = key.is_empty() || key.len() > 256 || (env && key.contains(['=', '\0']));
        if bad_key || value.len() > 16 * 1024 || (env && value.contains('\0')) {
            return Err(SandboxError::InvalidInput(format!(
                "{field} has an invalid entry {:?}",
                clip(key, 40)
            )));
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
