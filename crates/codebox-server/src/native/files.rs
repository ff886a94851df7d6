//! Native routes for the files of a sandbox's `/home/user`: download, upload (raw or
//! multipart), list, make a directory, move, remove. Paths are checked by the engine's
//! `HomeDir`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use codebox::FileEntry;
use serde::Deserialize;

use super::wire::Written;
use super::{AppState, sandbox};
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, ApiQuery, Caller};
use crate::http::upload::{receive_raw, receive_upload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PathQuery {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OptionalPathQuery {
    path: Option<String>,
}

pub(super) async fn download(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Response> {
    let bytes = sandbox(&app, &caller, &id)?.read_file(&q.path).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}

pub(super) async fn upload(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<OptionalPathQuery>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<Json<Written>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let written = receive_upload(&app, &sandbox, q.path, &headers, request).await?;
    Ok(Json(Written { written }))
}

pub(super) async fn upload_raw(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<Json<Written>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    receive_raw(&app, &sandbox, &q.path, &headers, request).await?;
    Ok(Json(Written {
        written: vec![q.path],
    }))
}

pub(super) async fn list(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<OptionalPathQuery>,
) -> ApiResult<Json<Vec<FileEntry>>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    Ok(Json(sandbox.home.list(q.path.as_deref().unwrap_or(""))?))
}

pub(super) async fn make_dir(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PathQuery>,
) -> ApiResult<StatusCode> {
    sandbox(&app, &caller, &id)?.home.make_dir(&body.path)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove(
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
pub(super) struct Move {
    from: String,
    to: String,
}

pub(super) async fn rename(
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
