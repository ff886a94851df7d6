//! The native API: sandboxes, contexts, executions, files and processes as JSON over HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, Caller, wants_json};
use crate::sandbox::{ContextEntry, NewSandbox, Sandbox, parse_language};
use crate::stream::{self, Flavor, RunSpec};
use crate::upload;
use codebox::Language;

type AppState = State<Arc<App>>;

pub(crate) fn routes(app: Arc<App>) -> Router {
    let body_limit = app.registry.config.max_body_bytes;
    let json_routes = Router::new()
        .route("/sandboxes", post(create_sandbox).get(list_sandboxes))
        .route("/sandboxes/{id}", get(get_sandbox).delete(kill_sandbox))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route(
            "/sandboxes/{id}/contexts",
            post(create_context).get(list_contexts),
        )
        .route(
            "/sandboxes/{id}/contexts/{cid}",
            axum::routing::delete(delete_context),
        )
        .route(
            "/sandboxes/{id}/contexts/{cid}/restart",
            post(restart_context),
        )
        .route("/sandboxes/{id}/execute", post(execute))
        .route("/sandboxes/{id}/files/list", get(list_files))
        .route("/sandboxes/{id}/files/mkdir", post(make_dir))
        .route("/sandboxes/{id}/files/move", post(move_file))
        .route("/sandboxes/{id}/processes", post(process))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit));
    // Uploads stream with their own limit.
    let file_routes = Router::new()
        .route(
            "/sandboxes/{id}/files",
            get(download)
                .put(upload_raw)
                .post(upload)
                .delete(remove_file),
        )
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .merge(json_routes)
        .merge(file_routes)
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(app)
}

/// Prometheus text format; needs an API key like every route but `/health`.
async fn metrics(State(app): AppState, _caller: Caller) -> Response {
    let gauges = crate::metrics::Gauges {
        sandboxes: app.registry.count(),
        contexts: app.registry.engine.live_contexts(),
        resident_bytes: crate::metrics::resident_bytes(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.registry.metrics.render(&gauges),
    )
        .into_response()
}

fn sandbox(app: &App, caller: &Caller, id: &str) -> ApiResult<Arc<Sandbox>> {
    app.registry.get(&caller.0, id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateSandbox {
    timeout: Option<u64>,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Template for the sandbox's Python contexts.
    template: Option<String>,
}

async fn create_sandbox(
    State(app): AppState,
    caller: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // An empty body means all defaults.
    let body: CreateSandbox = if body.iter().all(u8::is_ascii_whitespace) {
        CreateSandbox {
            timeout: None,
            env_vars: BTreeMap::new(),
            metadata: BTreeMap::new(),
            template: None,
        }
    } else {
        crate::extract::parse_json(&body)?
    };
    if let Some(name) = &body.template {
        check_template(&app, name)?;
    }
    let new = NewSandbox {
        timeout: body.timeout,
        template: body.template,
        env_vars: body.env_vars,
        metadata: body.metadata,
    };
    let sandbox = app.registry.create(caller.0, new)?;
    Ok((StatusCode::CREATED, Json(sandbox.info())).into_response())
}

async fn list_sandboxes(State(app): AppState, caller: Caller) -> Json<Value> {
    let list: Vec<_> = app
        .registry
        .list(&caller.0)
        .iter()
        .map(|s| s.info())
        .collect();
    Json(json!(list))
}

async fn get_sandbox(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(sandbox(&app, &caller, &id)?.info())))
}

async fn kill_sandbox(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.registry.kill(&caller.0, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTimeout {
    timeout: u64,
}

async fn set_timeout(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetTimeout>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        app.registry
            .set_timeout(&caller.0, &id, body.timeout)?
            .info()
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateContext {
    language: Option<String>,
    cwd: Option<String>,
    template: Option<String>,
}

/// Refuses a template name that does not exist, before a sandbox is made for it.
fn check_template(app: &App, name: &str) -> ApiResult<()> {
    if app.registry.engine.has_template(name) {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "unknown_template",
        format!(
            "there is no template named {:?}; built-in: stdlib, data",
            name.chars().take(64).collect::<String>()
        ),
    ))
}

async fn create_context(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateContext>,
) -> ApiResult<Response> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let language = parse_language(body.language.as_deref())?;
    let entry = app
        .registry
        .add_context(
            &sandbox,
            language,
            body.cwd.as_deref(),
            body.template.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(entry.info())).into_response())
}

async fn list_contexts(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    Ok(Json(json!(sandbox.context_infos())))
}

async fn restart_context(
    State(app): AppState,
    caller: Caller,
    Path((id, cid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let entry = sandbox(&app, &caller, &id)?.context(&cid)?;
    entry.context.restart().await?;
    Ok(Json(json!(entry.info())))
}

async fn delete_context(
    State(app): AppState,
    caller: Caller,
    Path((id, cid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    sandbox(&app, &caller, &id)?.remove_context(&cid)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Execute {
    code: String,
    language: Option<String>,
    context_id: Option<String>,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    /// Seconds.
    timeout: Option<f64>,
}

/// The context an execution goes to: the named one, or the sandbox's default for the language.
pub(crate) async fn pick_context(
    app: &App,
    sandbox: &Sandbox,
    context_id: Option<&str>,
    language: Option<&str>,
) -> ApiResult<Arc<ContextEntry>> {
    match (context_id, language) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_input",
            "give either a context id or a language, not both",
        )),
        (Some(cid), None) => sandbox.context(cid),
        (None, language) => {
            let language = parse_language(language)?;
            app.registry.default_context(sandbox, language).await
        }
    }
}

/// An execution request as both APIs receive it.
pub(crate) struct RunRequest {
    pub code: String,
    pub context_id: Option<String>,
    pub language: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<f64>,
}

impl RunRequest {
    /// Checks the request and finds (or creates) the context it goes to.
    pub async fn resolve(
        self,
        app: &App,
        sandbox: &Sandbox,
    ) -> ApiResult<(Arc<ContextEntry>, RunSpec)> {
        let timeout = execution_timeout(app, self.timeout)?;
        let entry = pick_context(
            app,
            sandbox,
            self.context_id.as_deref(),
            self.language.as_deref(),
        )
        .await?;
        Ok((
            entry,
            RunSpec {
                code: self.code,
                timeout,
                env: self.env,
            },
        ))
    }
}

pub(crate) fn execution_timeout(app: &App, seconds: Option<f64>) -> ApiResult<Option<Duration>> {
    let max = app.registry.config.max_sandbox_timeout;
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= max.as_secs_f64() => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_timeout",
            format!(
                "timeout must be more than 0 and at most {} seconds",
                max.as_secs()
            ),
        )),
    }
}

async fn execute(
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
    let (entry, spec) = request.resolve(&app, &sandbox).await?;
    if wants_json(&headers) {
        return Ok(Json(stream::whole(entry, spec, sandbox.killed()).await?).into_response());
    }
    Ok(stream::stream(
        entry,
        spec,
        Flavor::Native,
        sandbox.killed(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathQuery {
    pub path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionalPathQuery {
    path: Option<String>,
}

pub(crate) async fn download_file(sandbox: &Sandbox, path: &str) -> ApiResult<Response> {
    let home = sandbox.home.clone();
    let path = path.to_string();
    let bytes = tokio::task::spawn_blocking(move || home.read(&path))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}

async fn download(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Response> {
    download_file(&*sandbox(&app, &caller, &id)?, &q.path).await
}

fn content_length(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// Writes an upload (raw body, or multipart with one or more `file` parts) and returns the
/// written paths.
pub(crate) async fn receive_upload(
    app: &App,
    sandbox: &Sandbox,
    path: Option<String>,
    headers: &HeaderMap,
    request: axum::extract::Request,
) -> ApiResult<Vec<String>> {
    let limit = app.registry.config.max_upload_bytes;
    if !is_multipart(headers) {
        let path = path
            .ok_or_else(|| ApiError::bad_request("invalid_query", "a raw upload needs ?path="))?;
        let body = request.into_body().into_data_stream();
        upload::write_stream(
            sandbox.home.clone(),
            path.clone(),
            body,
            content_length(headers),
            limit,
        )
        .await?;
        return Ok(vec![path]);
    }
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
    let mut written = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?
    {
        if field.name() != Some("file") {
            continue;
        }
        // With ?path= the (single) part goes there; otherwise its filename is the path.
        let target = match (&path, field.file_name()) {
            (Some(p), _) if written.is_empty() => p.clone(),
            (_, Some(name)) => name.to_string(),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_multipart",
                    "a file part needs a filename or ?path=",
                ));
            }
        };
        let stream = field.map_err(|e| e.body_text());
        upload::write_stream(sandbox.home.clone(), target.clone(), stream, 0, limit).await?;
        written.push(target);
    }
    if written.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_multipart",
            "no `file` part in the upload",
        ));
    }
    Ok(written)
}

async fn upload(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<OptionalPathQuery>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> ApiResult<Json<Value>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let written = receive_upload(&app, &sandbox, q.path, &headers, request).await?;
    Ok(Json(json!({"written": written})))
}

async fn upload_raw(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> ApiResult<Json<Value>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let body = request.into_body().into_data_stream();
    let limit = app.registry.config.max_upload_bytes;
    upload::write_stream(
        sandbox.home.clone(),
        q.path.clone(),
        body,
        content_length(&headers),
        limit,
    )
    .await?;
    Ok(Json(json!({"written": [q.path]})))
}

async fn list_files(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<OptionalPathQuery>,
) -> ApiResult<Json<Value>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let entries = sandbox.home.list(q.path.as_deref().unwrap_or(""))?;
    Ok(Json(json!(entries)))
}

async fn make_dir(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PathQuery>,
) -> ApiResult<StatusCode> {
    sandbox(&app, &caller, &id)?.home.make_dir(&body.path)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_file(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<StatusCode> {
    sandbox(&app, &caller, &id)?.home.remove(&q.path)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Move {
    from: String,
    to: String,
}

async fn move_file(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Move>,
) -> ApiResult<StatusCode> {
    sandbox(&app, &caller, &id)?
        .home
        .rename(&body.from, &body.to)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Process {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    /// Seconds.
    timeout: Option<f64>,
}

/// `python3 -c CODE`, `python3 script.py`, `node -e CODE`, `node script.js`: runs in a fresh
/// context in the sandbox and answers like a finished process.
async fn process(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Process>,
) -> ApiResult<Json<Value>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let timeout = execution_timeout(&app, body.timeout)?;
    let program = body.cmd.rsplit('/').next().unwrap_or("");
    let (language, inline_flag) = match program {
        "python" | "python3" => (Language::Python, "-c"),
        "node" => (Language::JavaScript, "-e"),
        _ => {
            return Err(ApiError::bad_request(
                "unknown_command",
                format!(
                    "cannot run {:?}: the commands available are python3 (or python) with -c CODE or \
                     a script path, and node with -e CODE or a script path",
                    body.cmd.chars().take(60).collect::<String>()
                ),
            ));
        }
    };
    let source = match body.args.as_slice() {
        [flag, code, ..] if flag == inline_flag => code.clone(),
        [script, ..] if !script.starts_with('-') => {
            let bytes = sandbox.home.read(script)?;
            String::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("invalid_input", "the script is not UTF-8"))?
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_input",
                format!("give {inline_flag} CODE or a script path"),
            ));
        }
    };
    // A process does not echo its last value.
    let code = match language {
        Language::Python => {
            format!(
                "exec(compile({}, '<string>', 'exec'))",
                python_string_literal(&source)
            )
        }
        _ => format!("{source}\n;undefined"),
    };
    let entry = app
        .registry
        .new_context(&sandbox, language, None, None)
        .await?;
    let run = entry
        .execute(
            RunSpec {
                code,
                timeout,
                env: BTreeMap::new(),
            }
            .request(),
        )
        .await?;
    let mut stderr = run.stderr.clone();
    if let Some(error) = &run.error {
        stderr.push_str(&error.to_string());
        stderr.push('\n');
    }
    let exit_code = match (run.exit_status, &run.error) {
        (Some(status), _) => status,
        (None, Some(_)) => 1,
        (None, None) => 0,
    };
    Ok(Json(
        json!({"stdout": run.stdout, "stderr": stderr, "exitCode": exit_code}),
    ))
}

/// `s` as a Python string literal (JSON string syntax is valid Python for these escapes).
fn python_string_literal(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}
