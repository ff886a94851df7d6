//! One execution context inside a sandbox: the engine's `Context` with the ids, language and
//! working directory the front ends report, its share of the memory budget, and the hook
//! that counts and logs every execution (sandbox, context, outcome, duration; never code or
//! output).

use std::sync::Arc;
use std::time::Instant;

use codebox::{Context, ExecuteRequest, Execution, Language};

use super::SandboxError;
use super::budget::Reservation;
use crate::metrics::{Metrics, Outcome};

/// A context of a sandbox.
#[derive(Debug)]
pub(crate) struct ContextEntry {
    pub id: String,
    pub sandbox_id: String,
    pub language: Language,
    /// The working directory, absolute.
    pub cwd: String,
    pub context: Context,
    pub(super) metrics: Arc<Metrics>,
    pub(super) _memory: Reservation,
}

impl ContextEntry {
    /// Runs one execution, counted in the metrics and logged. Dropping the future cancels it
    /// (and counts it as cancelled).
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

    /// Restarts the context: fresh interpreter state, same files.
    pub async fn restart(&self) -> Result<(), SandboxError> {
        Ok(self.context.restart().await?)
    }

    /// The template a Python context started from.
    pub fn template(&self) -> Option<&str> {
        self.context.template()
    }
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
