//! The native API's JSON, serde-derived: what each route answers and each streamed event
//! says. Field names are camelCase. An execution is the engine's own serialisation of
//! `codebox::Execution` plus `contextId`; the `end` event carries its accounting fields under
//! the same names.

use std::collections::BTreeMap;

use codebox::{DisplayData, ExecutionError};
use serde::Serialize;

use crate::sandbox::{ContextEntry, ProcessOutput, Sandbox};
use crate::util::rfc3339;

/// `GET /health`.
#[derive(Serialize)]
pub(crate) struct Health {
    pub status: &'static str,
}

/// A sandbox.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxInfo {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    started_at: String,
    end_at: String,
    metadata: BTreeMap<String, String>,
    env_vars: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    contexts: usize,
    /// Path prefix for E2B clients: set `E2B_SANDBOX_URL` to the server's address + this.
    e2b_path: String,
}

impl From<&Sandbox> for SandboxInfo {
    fn from(s: &Sandbox) -> SandboxInfo {
        SandboxInfo {
            sandbox_id: s.id.clone(),
            started_at: rfc3339(s.started_at),
            end_at: rfc3339(s.end_at()),
            metadata: s.metadata.clone(),
            env_vars: s.env_vars.clone(),
            template: s.template.clone(),
            contexts: s.context_count(),
            e2b_path: format!("/e2b/{}", s.access_token),
        }
    }
}

/// A context.
#[derive(Serialize)]
pub(crate) struct ContextInfo {
    id: String,
    language: &'static str,
    cwd: String,
    /// The template a Python context started from.
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
}

impl From<&ContextEntry> for ContextInfo {
    fn from(c: &ContextEntry) -> ContextInfo {
        ContextInfo {
            id: c.id.clone(),
            language: c.language.name(),
            cwd: c.cwd.clone(),
            template: c.template().map(str::to_string),
        }
    }
}

/// A whole execution (`Accept: application/json`): the engine's serialisation plus the
/// context it ran in.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Execution<'a> {
    pub context_id: &'a str,
    #[serde(flatten)]
    pub execution: &'a codebox::Execution,
}

/// The accounting fields of an execution, named as the engine serialises them (a test holds
/// the two together): what the `end` event carries.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Summary {
    execution_count: u64,
    duration_ms: f64,
    fuel_consumed: Option<u64>,
    stdout_truncated: bool,
    stderr_truncated: bool,
    exit_status: Option<i32>,
    context_restarted: bool,
}

impl From<&codebox::Execution> for Summary {
    fn from(e: &codebox::Execution) -> Summary {
        Summary {
            execution_count: e.execution_count,
            duration_ms: e.duration.as_secs_f64() * 1e3,
            fuel_consumed: e.fuel_consumed,
            stdout_truncated: e.stdout_truncated,
            stderr_truncated: e.stderr_truncated,
            exit_status: e.exit_status,
            context_restarted: e.context_restarted,
        }
    }
}

/// A streamed event after the output: `result`s, an `error`, then `end`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event<'a> {
    Result(&'a DisplayData),
    /// The error the execution ended with.
    Error(&'a ExecutionError),
    /// The execution could not run to its end: `name` is the error code, `value` the sentence.
    #[serde(rename = "error")]
    Failed {
        name: &'static str,
        value: String,
        traceback: &'static str,
    },
    /// Always last; with the accounting when the execution ran to its end.
    End {
        #[serde(flatten)]
        summary: Option<Summary>,
    },
}

/// A finished process.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Process {
    stdout: String,
    stderr: String,
    exit_code: i32,
}

impl From<ProcessOutput> for Process {
    fn from(p: ProcessOutput) -> Process {
        Process {
            stdout: p.stdout,
            stderr: p.stderr,
            exit_code: p.exit_code,
        }
    }
}

/// The paths an upload wrote.
#[derive(Serialize)]
pub(crate) struct Written {
    pub written: Vec<String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_end_event_carries_the_executions_own_fields_and_values() {
        let execution = codebox::Execution {
            execution_count: 7,
            duration: Duration::from_micros(1500),
            fuel_consumed: Some(99),
            stdout_truncated: true,
            exit_status: Some(3),
            context_restarted: true,
            ..Default::default()
        };
        let whole = serde_json::to_value(Execution {
            context_id: "ctx_1",
            execution: &execution,
        })
        .unwrap();
        assert_eq!(whole["contextId"], "ctx_1");
        assert_eq!(whole["durationMs"], 1.5);
        let end = serde_json::to_value(Event::End {
            summary: Some(Summary::from(&execution)),
        })
        .unwrap();
        let end = end.as_object().unwrap();
        assert_eq!(end.len(), 8, "{end:?}");
        for (key, value) in end {
            match key.as_str() {
                "type" => assert_eq!(value, "end"),
                _ => assert_eq!(&whole[key], value, "{key}"),
            }
        }
    }
}
