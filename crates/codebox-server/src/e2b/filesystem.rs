//! envd's filesystem service as Connect RPC with the JSON codec
//! (`POST /filesystem.Filesystem/{Method}`): Stat, MakeDir, Move, ListDir, Remove. Errors are
//! Connect errors, `{"code", "message"}` with the matching HTTP status.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use codebox::{FileEntry, FileKind, HomeDir};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::wire::{Empty, Entries, Entry, EntryInfo, absolute};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::sandbox::{Sandbox, SandboxError};
use crate::util::clip;

/// A Connect RPC error.
pub(super) struct ConnectError(StatusCode, &'static str, String);

#[derive(Serialize)]
struct ConnectErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let body = ConnectErrorBody {
            code: self.1,
            message: &self.2,
        };
        (self.0, Json(body)).into_response()
    }
}

/// The Connect code for the status a plain route would answer.
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

impl From<SandboxError> for ConnectError {
    fn from(e: SandboxError) -> ConnectError {
        ApiError::from(e).into()
    }
}

impl From<codebox::Error> for ConnectError {
    fn from(e: codebox::Error) -> ConnectError {
        SandboxError::from(e).into()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathRequest {
    path: String,
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

fn parse<T: DeserializeOwned>(body: Value) -> Result<T, ConnectError> {
    serde_json::from_value(body)
        .map_err(|e| ConnectError(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string()))
}

/// One unary call.
pub(super) async fn call(
    State(app): AppState,
    Path((token, method)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ConnectError> {
    let sandbox = app.registry.by_token(&token)?;
    let home = &sandbox.home;
    let answer = match method.as_str() {
        "ListDir" => {
            let req: ListDirRequest = parse(body)?;
            let mut entries = Vec::new();
            list_recursive(home, &req.path, req.depth.max(1), &mut entries)?;
            Json(Entries { entries }).into_response()
        }
        "Stat" => {
            let req: PathRequest = parse(body)?;
            Json(entry(&sandbox, &req.path)?).into_response()
        }
        "MakeDir" => {
            let req: PathRequest = parse(body)?;
            if home.exists(&req.path)? {
                return Err(ConnectError(
                    StatusCode::CONFLICT,
                    "already_exists",
                    format!("{} already exists", req.path),
                ));
            }
            home.make_dir(&req.path)?;
            Json(entry(&sandbox, &req.path)?).into_response()
        }
        "Remove" => {
            let req: PathRequest = parse(body)?;
            home.remove(&req.path)?;
            Json(Empty {}).into_response()
        }
        "Move" => {
            let req: MoveRequest = parse(body)?;
            home.rename(&req.source, &req.destination)?;
            Json(entry(&sandbox, &req.destination)?).into_response()
        }
        other => {
            return Err(ConnectError(
                StatusCode::NOT_IMPLEMENTED,
                "unimplemented",
                format!("filesystem method {:?} is not supported", clip(other, 40)),
            ));
        }
    };
    Ok(answer)
}

/// The entry for `path` itself, from a listing of its parent.
fn entry(sandbox: &Sandbox, path: &str) -> Result<Entry, ConnectError> {
    let absolute = absolute(path);
    let (parent, _) = absolute.rsplit_once('/').unwrap_or(("", ""));
    let found: FileEntry = sandbox
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
        })?;
    Ok(Entry {
        entry: EntryInfo::from(&found),
    })
}

fn list_recursive(
    home: &HomeDir,
    path: &str,
    depth: u32,
    out: &mut Vec<EntryInfo>,
) -> Result<(), ConnectError> {
    for entry in home.list(path)? {
        out.push(EntryInfo::from(&entry));
        if depth > 1 && entry.kind == FileKind::Dir {
            list_recursive(home, &entry.path, depth - 1, out)?;
        }
    }
    Ok(())
}
