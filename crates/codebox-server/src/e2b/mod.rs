//! The E2B-compatible API, for the unmodified E2B SDKs in debug mode.
//!
//! An E2B client reaches one sandbox through a URL prefix that carries the sandbox's secret
//! access token: `E2B_SANDBOX_URL=http://HOST:PORT/e2b/{accessToken}` (the native
//! `POST /sandboxes` answers with it as `e2bPath`). Debug mode sends no credentials, so the
//! token is the credential: it is unguessable, and a wrong one is a plain 404. The code
//! interpreter's routes answer errors as `http::error` does (the SDK reads the status);
//! envd's Connect routes (`filesystem`) answer Connect errors.

mod filesystem;
mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use codebox::Execution;
use serde::{Deserialize, Serialize};

use self::wire::{Context, Empty, Event, ResultEvent, WrittenFile};
use crate::http::App;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::stream::{self, EventShape};
use crate::http::upload::receive_upload;
use crate::sandbox::{RunRequest, Sandbox, SandboxError, parse_language};

type AppState = State<Arc<App>>;

pub(crate) fn routes(app: Arc<App>) -> Router {
    let body_limit = app.registry.config.max_body_bytes;
    let json_routes = Router::new()
        .route("/e2b/{token}/execute", post(execute))
        .route(
            "/e2b/{token}/contexts",
            post(create_context).get(list_contexts),
        )
        .route("/e2b/{token}/contexts/{cid}", delete(remove_context))
        .route("/e2b/{token}/contexts/{cid}/restart", post(restart_context))
        .route(
            "/e2b/{token}/filesystem.Filesystem/{method}",
            post(filesystem::call),
        )
        .layer(DefaultBodyLimit::max(body_limit));
    let file_routes = Router::new()
        .route("/e2b/{token}/files", get(download).post(upload))
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/e2b/{token}/health", get(health))
        .merge(json_routes)
        .merge(file_routes)
        .with_state(app)
}

/// The sandbox whose access token is `token`.
fn sandbox(app: &App, token: &str) -> ApiResult<Arc<Sandbox>> {
    Ok(app.registry.by_token(token)?)
}

async fn health(State(app): AppState, Path(token): Path<String>) -> ApiResult<&'static str> {
    sandbox(&app, &token)?;
    Ok("OK")
}

#[derive(Deserialize)]
struct Execute {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
    /// Not sent by the SDKs (their timeouts are client-side); accepted for other clients.
    timeout: Option<f64>,
}

async fn execute(
    State(app): AppState,
    Path(token): Path<String>,
    ApiJson(body): ApiJson<Execute>,
) -> ApiResult<Response> {
    let sandbox = sandbox(&app, &token)?;
    let request = RunRequest {
        code: body.code,
        context_id: body.context_id,
        language: body.language,
        env: body.env_vars.unwrap_or_default(),
        timeout: body.timeout,
    };
    let (entry, request) = request.resolve(&app.registry, &sandbox).await?;
    Ok(stream::ndjson::<E2bEvents>(sandbox, entry, request))
}

/// E2B's stream: output chunks, the execution count, `result`s, the first `error`, then
/// `end_of_execution`.
struct E2bEvents;

impl EventShape for E2bEvents {
    fn finished(execution: &Execution) -> Vec<impl Serialize + '_> {
        let mut events = vec![Event::NumberOfExecutions {
            execution_count: execution.execution_count,
        }];
        events.extend(
            execution
                .results
                .iter()
                .map(|r| Event::Result(ResultEvent::from(r))),
        );
        if let Some(error) = &execution.error {
            events.push(Event::Error {
                name: &error.name,
                value: (&error.value).into(),
                traceback: &error.traceback,
            });
        }
        events.push(Event::EndOfExecution);
        events
    }

    fn failed(error: SandboxError) -> Vec<impl Serialize> {
        let error = ApiError::from(error);
        vec![
            Event::Error {
                name: error.code,
                value: error.message.into(),
                traceback: "",
            },
            Event::EndOfExecution,
        ]
    }
}

#[derive(Deserialize)]
struct CreateContext {
    language: Option<String>,
    cwd: Option<String>,
}

async fn create_context(
    State(app): AppState,
    Path(token): Path<String>,
    ApiJson(body): ApiJson<CreateContext>,
) -> ApiResult<Json<Context>> {
    let sandbox = sandbox(&app, &token)?;
    let language = parse_language(body.language.as_deref())?;
    let entry = app
        .registry
        .add_context(&sandbox, language, body.cwd.as_deref(), None)
        .await?;
    Ok(Json(Context::from(&*entry)))
}

async fn list_contexts(
    State(app): AppState,
    Path(token): Path<String>,
) -> ApiResult<Json<Vec<Context>>> {
    let contexts = sandbox(&app, &token)?.contexts();
    Ok(Json(contexts.iter().map(|c| Context::from(&**c)).collect()))
}

async fn restart_context(
    State(app): AppState,
    Path((token, cid)): Path<(String, String)>,
) -> ApiResult<Json<Context>> {
    let entry = sandbox(&app, &token)?.context(&cid)?;
    entry.restart().await?;
    Ok(Json(Context::from(&*entry)))
}

async fn remove_context(
    State(app): AppState,
    Path((token, cid)): Path<(String, String)>,
) -> ApiResult<Json<Empty>> {
    sandbox(&app, &token)?.remove_context(&cid)?;
    Ok(Json(Empty {}))
}

#[derive(Deserialize)]
struct FileQuery {
    path: Option<String>,
    #[allow(dead_code)] // E2B sends the guest user; there is one.
    username: Option<String>,
}

async fn download(
    State(app): AppState,
    Path(token): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
) -> ApiResult<Response> {
    let path = q
        .path
        .ok_or_else(|| ApiError::bad_request("invalid_query", "missing ?path="))?;
    let bytes = sandbox(&app, &token)?.read_file(&path).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}

async fn upload(
    State(app): AppState,
    Path(token): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<Json<Vec<WrittenFile>>> {
    let sandbox = sandbox(&app, &token)?;
    let written = receive_upload(&app, &sandbox, q.path, &headers, request).await?;
    Ok(Json(written.iter().map(|p| WrittenFile::new(p)).collect()))
}
