//! The E2B-compatible API, for the unmodified E2B SDKs in debug mode.
//!
//! An E2B client reaches one sandbox through a URL prefix that carries the sandbox's secret
//! access token: `E2B_SANDBOX_URL=http://HOST:PORT/e2b/{accessToken}` (the native
//! `POST /sandboxes` answers with it as `e2bPath`). Debug mode sends no credentials, so the
//! token is the credential: it is unguessable, and a wrong one is a plain 404.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use codebox::{FileEntry, FileKind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::api::{PathQuery, RunRequest, download_file, receive_upload};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::sandbox::{Sandbox, parse_language};
use crate::stream::{self, Flavor};

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
            post(filesystem),
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

fn sandbox(app: &App, token: &str) -> ApiResult<Arc<Sandbox>> {
    app.registry.by_token(token)
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
    let (entry, spec) = request.resolve(&app, &sandbox).await?;
    Ok(stream::stream(entry, spec, Flavor::E2b, sandbox.killed()))
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
) -> ApiResult<Json<Value>> {
    let sandbox = sandbox(&app, &token)?;
    let language = parse_language(body.language.as_deref())?;
    let entry = app
        .registry
        .add_context(&sandbox, language, body.cwd.as_deref(), None)
        .await?;
    Ok(Json(json!(entry.info())))
}

async fn list_contexts(State(app): AppState, Path(token): Path<String>) -> ApiResult<Json<Value>> {
    let sandbox = sandbox(&app, &token)?;
    Ok(Json(json!(sandbox.context_infos())))
}

async fn restart_context(
    State(app): AppState,
    Path((token, cid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let entry = sandbox(&app, &token)?.context(&cid)?;
    entry.context.restart().await?;
    Ok(Json(json!(entry.info())))
}

async fn remove_context(
    State(app): AppState,
    Path((token, cid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    sandbox(&app, &token)?.remove_context(&cid)?;
    Ok(Json(json!({})))
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
    download_file(&*sandbox(&app, &token)?, &path).await
}

async fn upload(
    State(app): AppState,
    Path(token): Path<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> ApiResult<Json<Value>> {
    let sandbox = sandbox(&app, &token)?;
    let written = receive_upload(&app, &sandbox, q.path, &headers, request).await?;
    let infos: Vec<Value> = written
        .iter()
        .map(|path| {
            let absolute = absolute(path);
            let name = absolute.rsplit('/').next().unwrap_or("").to_string();
            json!({"name": name, "type": "file", "path": absolute})
        })
        .collect();
    Ok(Json(json!(infos)))
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", codebox::GUEST_HOME, path)
    }
}

/// A Connect RPC error: `{"code", "message"}` with the matching HTTP status.
struct ConnectError(StatusCode, &'static str, String);

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"code": self.1, "message": self.2}))).into_response()
    }
}

impl From<ApiError> for ConnectError {
    fn from(e: ApiError) -> ConnectError {
        let code = match e.status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::BAD_REQUEST => "invalid_argument",
            StatusCode::CONFLICT => "already_exists",
            StatusCode::INSUFFICIENT_STORAGE | StatusCode::TOO_MANY_REQUESTS => {
                "resource_exhausted"
            }
            StatusCode::UNAUTHORIZED => "unauthenticated",
            _ => "internal",
        };
        ConnectError(e.status, code, e.message)
    }
}

impl From<codebox::Error> for ConnectError {
    fn from(e: codebox::Error) -> ConnectError {
        ApiError::from(e).into()
    }
}

fn entry_info(e: &FileEntry) -> Value {
    let kind = match e.kind {
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
    };
    let modified = e
        .modified
        .map(|s| crate::util::rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(s)))
        .unwrap_or_default();
    json!({
        "name": e.name,
        "type": kind,
        "path": e.path,
        "size": e.size.to_string(),
        "mode": if e.kind == FileKind::Dir { 0o755 } else { 0o644 },
        "permissions": if e.kind == FileKind::Dir { "drwxr-xr-x" } else { "-rw-r--r--" },
        "owner": "user",
        "group": "user",
        "modifiedTime": modified,
    })
}

/// The entry for `path` itself, from a listing of its parent.
fn stat(sandbox: &Sandbox, path: &str) -> Result<FileEntry, ConnectError> {
    let absolute = absolute(path);
    let (parent, _) = absolute.rsplit_once('/').unwrap_or(("", ""));
    sandbox
        .home
        .list(parent)?
        .into_iter()
        .find(|e| e.path == absolute.trim_end_matches('/'))
        .ok_or_else(|| {
            ConnectError(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{path} does not exist"),
            )
        })
}

#[derive(Deserialize)]
struct MoveRequest {
    source: String,
    destination: String,
}

#[derive(Deserialize)]
struct ListDirRequest {
    path: String,
    #[serde(default)]
    depth: u32,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Value) -> Result<T, ConnectError> {
    serde_json::from_value(body.clone())
        .map_err(|e| ConnectError(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string()))
}

/// Connect RPC (JSON codec) for the filesystem service.
async fn filesystem(
    State(app): AppState,
    Path((token, method)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ConnectError> {
    let sandbox = sandbox(&app, &token)?;
    let home = &sandbox.home;
    match method.as_str() {
        "ListDir" => {
            let req: ListDirRequest = parse(&body)?;
            let mut entries = Vec::new();
            list_recursive(home, &req.path, req.depth.max(1), &mut entries)?;
            Ok(Json(json!({"entries": entries})))
        }
        "Stat" => {
            let req: PathQuery = parse(&body)?;
            Ok(Json(
                json!({"entry": entry_info(&stat(&sandbox, &req.path)?)}),
            ))
        }
        "MakeDir" => {
            let req: PathQuery = parse(&body)?;
            if home.exists(&req.path)? {
                return Err(ConnectError(
                    StatusCode::CONFLICT,
                    "already_exists",
                    format!("{} already exists", req.path),
                ));
            }
            home.make_dir(&req.path)?;
            Ok(Json(
                json!({"entry": entry_info(&stat(&sandbox, &req.path)?)}),
            ))
        }
        "Remove" => {
            let req: PathQuery = parse(&body)?;
            home.remove(&req.path)?;
            Ok(Json(json!({})))
        }
        "Move" => {
            let req: MoveRequest = parse(&body)?;
            home.rename(&req.source, &req.destination)?;
            Ok(Json(
                json!({"entry": entry_info(&stat(&sandbox, &req.destination)?)}),
            ))
        }
        other => Err(ConnectError(
            StatusCode::NOT_IMPLEMENTED,
            "unimplemented",
            format!(
                "filesystem method {:?} is not supported",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

fn list_recursive(
    home: &codebox::HomeDir,
    path: &str,
    depth: u32,
    out: &mut Vec<Value>,
) -> Result<(), ConnectError> {
    for entry in home.list(path)? {
        out.push(entry_info(&entry));
        if depth > 1 && entry.kind == FileKind::Dir {
            list_recursive(home, &entry.path, depth - 1, out)?;
        }
    }
    Ok(())
}
