//! Streaming an execution to an HTTP client as NDJSON: output chunks as the guest writes
//! them, a keepalive line after every silence (which also reveals a client that went away),
//! then the events that close the run. The plumbing is the same for every front end; what
//! each line says is the front end's [`EventShape`]. A client that disconnects cancels its
//! execution; a killed sandbox stops it and ends the stream with the front end's failure
//! events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use codebox::{ExecuteRequest, Execution, Stream};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::sandbox::{ContextEntry, Sandbox, SandboxError};
use crate::util::rfc3339;

/// A silent execution sends a keepalive line this often.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// How a front end spells the lines of a streamed execution. Each value is written as one
/// line of JSON.
pub(crate) trait EventShape: 'static {
    /// A chunk of output. Default: `{"type": "stdout"|"stderr", "text", "timestamp"}`.
    fn output(stream: Stream, text: &str) -> impl Serialize {
        OutputEvent {
            stream,
            text,
            timestamp: rfc3339(SystemTime::now()),
        }
    }

    /// The line sent after a silence. Default: `{"type": "keepalive"}`.
    fn keepalive() -> impl Serialize {
        Keepalive::Keepalive
    }

    /// The lines after the execution ended, the last one closing the stream.
    fn finished(execution: &Execution) -> Vec<impl Serialize + '_>;

    /// The lines when the execution could not run to its end (the engine refused it, the
    /// sandbox was killed), the last one closing the stream.
    fn failed(error: SandboxError) -> Vec<impl Serialize>;
}

#[derive(Serialize)]
struct OutputEvent<'a> {
    #[serde(rename = "type")]
    stream: Stream,
    text: &'a str,
    timestamp: String,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Keepalive {
    Keepalive,
}

/// One NDJSON line.
fn line(event: &impl Serialize) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("events are plain JSON");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

// The front end's event values are made and serialised in plain functions, so none is held
// across an await (the spawned task must be `Send` whatever the shape's types are).

fn keepalive_line<S: EventShape>() -> Bytes {
    line(&S::keepalive())
}

fn closing_lines<S: EventShape>(outcome: Result<Execution, SandboxError>) -> Vec<Bytes> {
    match outcome {
        Ok(execution) => S::finished(&execution).iter().map(line).collect(),
        Err(e) => S::failed(e).iter().map(line).collect(),
    }
}

/// Streams the execution of `request` on `entry` as NDJSON in shape `S`.
pub(crate) fn ndjson<S: EventShape>(
    sandbox: Arc<Sandbox>,
    entry: Arc<ContextEntry>,
    request: ExecuteRequest,
) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(
        async move {
            let output_tx = tx.clone();
            let request = request.on_output(move |stream, text| {
                let _ = output_tx.send(line(&S::output(stream, text)));
            });
            let execution = sandbox.execute(&entry, request);
            tokio::pin!(execution);
            let mut keepalive =
                tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
            let last = loop {
                tokio::select! {
                    outcome = &mut execution => break closing_lines::<S>(outcome),
                    // The client went away: dropping the execution cancels it.
                    _ = tx.closed() => return,
                    _ = keepalive.tick() => {
                        let _ = tx.send(keepalive_line::<S>());
                    }
                }
            };
            for bytes in last {
                let _ = tx.send(bytes);
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
