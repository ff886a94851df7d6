//! The sandbox layer: what every front end serves, with no HTTP in it.
//!
//! A [`Sandbox`] is one `/home/user` and the execution contexts made in it, owned by one
//! caller ([`Owner`]), with a lifetime after which it is killed. The [`Registry`] holds them
//! all and enforces the server's caps (live sandboxes, contexts per sandbox, the memory
//! budget); [`RunRequest`] picks the context an execution goes to; [`Registry::run_process`]
//! emulates `python3 -c` and friends; every execution is counted and logged. Failures are a
//! typed [`SandboxError`] that each front end turns into its own answer.

mod budget;
mod context;
mod error;
mod process;
mod registry;
mod run;
mod upload;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use codebox::{ExecuteRequest, Execution, HomeDir};

pub(crate) use context::ContextEntry;
pub(crate) use error::SandboxError;
pub(crate) use process::{Command, ProcessOutput};
pub(crate) use registry::{NewSandbox, Registry};
pub(crate) use run::{RunRequest, parse_language};
pub(crate) use upload::write_stream;

use crate::util::lock;

/// Who owns a sandbox: an opaque 32-byte id. The HTTP front ends use the sha256 digest of
/// the caller's API key, so a sandbox is reachable only with the key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Owner(pub [u8; 32]);

/// One sandbox.
#[derive(Debug)]
pub(crate) struct Sandbox {
    pub id: String,
    pub owner: Owner,
    /// A second credential that reaches only this sandbox: E2B clients, which send no key,
    /// carry it in their URL prefix.
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

impl Sandbox {
    pub fn end_at(&self) -> SystemTime {
        *lock(&self.end_at)
    }

    fn set_end_at(&self, t: SystemTime) {
        *lock(&self.end_at) = t;
    }

    pub fn contexts(&self) -> Vec<Arc<ContextEntry>> {
        lock(&self.contexts).clone()
    }

    pub fn context_count(&self) -> usize {
        lock(&self.contexts).len()
    }

    pub fn context(&self, id: &str) -> Result<Arc<ContextEntry>, SandboxError> {
        self.contexts()
            .into_iter()
            .find(|c| c.id == id)
            .ok_or(SandboxError::ContextNotFound)
    }

    pub fn remove_context(&self, id: &str) -> Result<(), SandboxError> {
        let mut contexts = lock(&self.contexts);
        let before = contexts.len();
        contexts.retain(|c| c.id != id);
        if contexts.len() == before {
            return Err(SandboxError::ContextNotFound);
        }
        Ok(())
    }

    /// Runs `request` on `entry` unless the sandbox is killed first: then the execution is
    /// dropped (which cancels it) and the answer is [`SandboxError::Killed`].
    pub async fn execute(
        &self,
        entry: &ContextEntry,
        request: ExecuteRequest,
    ) -> Result<Execution, SandboxError> {
        let mut killed = self.killed.subscribe();
        tokio::select! {
            outcome = entry.execute(request) => Ok(outcome?),
            _ = killed.wait_for(|k| *k) => Err(SandboxError::Killed),
        }
    }

    /// The bytes of a file in the sandbox's home, read on a blocking thread.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let home = self.home.clone();
        let path = path.to_string();
        tokio::task::spawn_blocking(move || home.read(&path))
            .await
            .map_err(|e| SandboxError::Internal(e.to_string()))?
            .map_err(SandboxError::from)
    }
}
