//! Native routes that run code: `execute` (streamed as NDJSON, or one JSON object with
//! `Accept: application/json`) and `processes` (a command line run as a script).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use codebox::Execution;
use serde::{Deserialize, Serialize};

use super::wire::{self, Event, Summary};
use super::{AppState, sandbox};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, Caller, wants_json};
use crate::http::stream::{self, EventShape};
use crate::sandbox::{Command, RunRequest, SandboxError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Execute {
    code: String,
    language: Option<String>,
    context_id: Option<String>,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    /// Seconds.
    timeout: Option<f64>,
}

pub(super) async fn execute(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Execute>,
) -> ApiResult<Response> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let request = RunRequest {
        code: body.code,
        context_id: body.context_id,
        language: body.language,
        env: body.env_vars,
        timeout: body.timeout,
    };
    let (entry, request) = request.resolve(&app.registry, &sandbox).await?;
    if wants_json(&headers) {
        let execution = sandbox.execute(&entry, request).await?;
        let answer = wire::Execution {
            context_id: &entry.id,
            execution: &execution,
        };
        return Ok(Json(answer).into_response());
    }
    Ok(stream::ndjson::<NativeEvents>(sandbox, entry, request))
}

/// The native stream: output chunks, `result`s, an `error`, then `end` with the accounting.
struct NativeEvents;

impl EventShape for NativeEvents {
    fn finished(execution: &Execution) -> Vec<impl Serialize + '_> {
        let mut events: Vec<Event> = execution.results.iter().map(Event::Result).collect();
        if let Some(error) = &execution.error {
            events.push(Event::Error(error));
        }
        events.push(Event::End {
            summary: Some(Summary::from(execution)),
        });
        events
    }

    fn failed(error: SandboxError) -> Vec<impl Serialize> {
        let error = ApiError::from(error);
        vec![
            Event::Failed {
                name: error.code,
                value: error.message,
                traceback: "",
            },
            Event::End { summary: None },
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Process {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    /// Seconds.
    timeout: Option<f64>,
}

/// `python3 -c CODE`, `python3 script.py`, `node -e CODE`, `node script.js`: runs in a fresh
/// context in the sandbox and answers like a finished process.
pub(super) async fn process(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Process>,
) -> ApiResult<Json<wire::Process>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let command = Command {
        program: body.cmd,
        args: body.args,
        timeout: body.timeout,
    };
    let output = app.registry.run_process(&sandbox, command).await?;
    Ok(Json(output.into()))
}
