//! Running an execution for an HTTP client: streamed as NDJSON events while it runs, or
//! returned whole. A client that disconnects cancels its execution; a killed sandbox stops it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use codebox::{DisplayData, ExecuteRequest, Execution, Stream};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::error::{ApiError, ApiResult};
use crate::sandbox::ContextEntry;
use crate::util::rfc3339;

/// A silent execution sends a keepalive line this often, which also reveals a gone client.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Which wire format the events use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Native,
    E2b,
}

/// What to run.
pub(crate) struct RunSpec {
    pub code: String,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
}

impl RunSpec {
    pub(crate) fn request(self) -> ExecuteRequest {
        let mut request = ExecuteRequest::new(self.code);
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        for (key, value) in self.env {
            request = request.env(key, value);
        }
        request
    }
}

fn line(value: Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn output_event(stream: Stream, text: &str) -> Value {
    let kind = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    json!({"type": kind, "text": text, "timestamp": rfc3339(SystemTime::now())})
}

/// Streams the execution as NDJSON: output chunks as they are written, then results, the
/// error (if any) and a final event.
pub(crate) fn stream(
    entry: Arc<ContextEntry>,
    spec: RunSpec,
    flavor: Flavor,
    mut killed: watch::Receiver<bool>,
) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(
        async move {
            let output_tx = tx.clone();
            let request = spec.request().on_output(move |stream, text| {
                let _ = output_tx.send(line(output_event(stream, text)));
            });
            let execution = entry.execute(request);
            tokio::pin!(execution);
            let mut keepalive =
                tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
            let events = loop {
                tokio::select! {
                    outcome = &mut execution => break final_events(outcome, flavor),
                    // The client went away: dropping the execution cancels it.
                    _ = tx.closed() => return,
                    _ = killed.wait_for(|k| *k) => break error_events(killed_error(), flavor),
                    _ = keepalive.tick() => {
                        let _ = tx.send(line(json!({"type": "keepalive"})));
                    }
                }
            };
            for event in events {
                let _ = tx.send(line(event));
            }
        }
        // The execution's log line carries the request's id.
        .instrument(tracing::Span::current()),
    );
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Runs the execution to the end and returns it as one JSON object (native API).
pub(crate) async fn whole(
    entry: Arc<ContextEntry>,
    spec: RunSpec,
    mut killed: watch::Receiver<bool>,
) -> ApiResult<Value> {
    tokio::select! {
        outcome = entry.execute(spec.request()) => Ok(native_execution(&outcome?, &entry.id)),
        _ = killed.wait_for(|k| *k) => Err(killed_error()),
    }
}

fn killed_error() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "sandbox_killed",
        "the sandbox was killed while the code ran (by a request, its lifetime, or server shutdown)",
    )
}

/// The last events of an execution the server could not run to its end.
fn error_events(e: ApiError, flavor: Flavor) -> Vec<Value> {
    vec![
        json!({"type": "error", "name": e.code, "value": e.message, "traceback": ""}),
        end_event(flavor, None),
    ]
}

fn final_events(outcome: Result<Execution, codebox::Error>, flavor: Flavor) -> Vec<Value> {
    let execution = match outcome {
        Ok(execution) => execution,
        Err(e) => return error_events(ApiError::from(e), flavor),
    };
    let mut events = Vec::new();
    if flavor == Flavor::E2b {
        events.push(
            json!({"type": "number_of_executions", "execution_count": execution.execution_count}),
        );
    }
    for result in &execution.results {
        events.push(match flavor {
            Flavor::Native => json!({"type": "result", "isMainResult": result.is_main_result, "data": result.data}),
            Flavor::E2b => e2b_result(result),
        });
    }
    if let Some(error) = &execution.error {
        let mut event = json!({"type": "error", "name": error.name, "value": error.value, "traceback": error.traceback});
        if flavor == Flavor::Native {
            event["kind"] = json!(error.kind);
        }
        events.push(event);
    }
    events.push(end_event(flavor, Some(&execution)));
    events
}

fn end_event(flavor: Flavor, execution: Option<&Execution>) -> Value {
    match (flavor, execution) {
        (Flavor::E2b, _) => json!({"type": "end_of_execution"}),
        (Flavor::Native, None) => json!({"type": "end"}),
        (Flavor::Native, Some(e)) => {
            let mut event = summary(e);
            event["type"] = json!("end");
            event
        }
    }
}

/// The accounting part of an execution, shared by the `end` event and the whole answer.
fn summary(e: &Execution) -> Value {
    json!({
        "executionCount": e.execution_count,
        "durationMs": e.duration.as_secs_f64() * 1e3,
        "fuelConsumed": e.fuel_consumed,
        "stdoutTruncated": e.stdout_truncated,
        "stderrTruncated": e.stderr_truncated,
        "exitStatus": e.exit_status,
        "contextRestarted": e.context_restarted,
    })
}

/// The whole execution in the native API's shape.
pub(crate) fn native_execution(e: &Execution, context_id: &str) -> Value {
    let mut out = summary(e);
    out["contextId"] = json!(context_id);
    out["stdout"] = json!(e.stdout);
    out["stderr"] = json!(e.stderr);
    out["results"] = e
        .results
        .iter()
        .map(|r| json!({"isMainResult": r.is_main_result, "data": r.data}))
        .collect();
    out["error"] = json!(e.error.as_ref().map(|err| json!({
        "kind": err.kind, "name": err.name, "value": err.value, "traceback": err.traceback
    })));
    out
}

/// A MIME bundle in E2B's result shape: well-known types get their own fields, codebox's
/// `data` and `chart` map to E2B's, anything else goes to `extra`.
pub(crate) fn e2b_result(result: &DisplayData) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), json!("result"));
    let mut extra = serde_json::Map::new();
    for (mime, value) in &result.data {
        let field = match mime.as_str() {
            "text/plain" => "text",
            "text/html" => "html",
            "text/markdown" => "markdown",
            "image/svg+xml" => "svg",
            "image/png" => "png",
            "image/jpeg" => "jpeg",
            "application/pdf" => "pdf",
            "text/latex" => "latex",
            "application/json" => "json",
            "application/javascript" => "javascript",
            "codebox/data" => "data",
            "codebox/chart" => "chart",
            _ => {
                extra.insert(mime.clone(), value.clone());
                continue;
            }
        };
        out.insert(field.into(), value.clone());
    }
    out.insert("extra".into(), Value::Object(extra));
    out.insert("is_main_result".into(), json!(result.is_main_result));
    Value::Object(out)
}
