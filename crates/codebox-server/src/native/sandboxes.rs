//! Native routes for sandboxes and their contexts: create, list, describe, extend, kill.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::wire::{ContextInfo, SandboxInfo};
use super::{AppState, sandbox};
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, Caller, parse_json};
use crate::sandbox::{NewSandbox, parse_language};

#[derive(Deserialize, Default)]
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

pub(super) async fn create(
    State(app): AppState,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Response> {
    // An empty body means all defaults.
    let body: CreateSandbox = if body.iter().all(u8::is_ascii_whitespace) {
        CreateSandbox::default()
    } else {
        parse_json(&body)?
    };
    let new = NewSandbox {
        timeout: body.timeout,
        template: body.template,
        env_vars: body.env_vars,
        metadata: body.metadata,
    };
    let sandbox = app.registry.create(caller.0, new)?;
    Ok((StatusCode::CREATED, Json(SandboxInfo::from(&*sandbox))).into_response())
}

pub(super) async fn list(State(app): AppState, caller: Caller) -> Json<Vec<SandboxInfo>> {
    let list = app.registry.list(&caller.0);
    Json(list.iter().map(|s| SandboxInfo::from(&**s)).collect())
}

pub(super) async fn describe(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxInfo>> {
    Ok(Json(SandboxInfo::from(&*sandbox(&app, &caller, &id)?)))
}

pub(super) async fn kill(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.registry.kill(&caller.0, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetTimeout {
    timeout: u64,
}

pub(super) async fn set_timeout(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetTimeout>,
) -> ApiResult<Json<SandboxInfo>> {
    let sandbox = app.registry.set_timeout(&caller.0, &id, body.timeout)?;
    Ok(Json(SandboxInfo::from(&*sandbox)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateContext {
    language: Option<String>,
    cwd: Option<String>,
    template: Option<String>,
}

pub(super) async fn create_context(
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
    Ok((StatusCode::CREATED, Json(ContextInfo::from(&*entry))).into_response())
}

pub(super) async fn list_contexts(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ContextInfo>>> {
    let sandbox = sandbox(&app, &caller, &id)?;
    let contexts = sandbox.contexts();
    Ok(Json(
        contexts.iter().map(|c| ContextInfo::from(&**c)).collect(),
    ))
}

pub(super) async fn restart_context(
    State(app): AppState,
    caller: Caller,
    Path((id, cid)): Path<(String, String)>,
) -> ApiResult<Json<ContextInfo>> {
    let entry = sandbox(&app, &caller, &id)?.context(&cid)?;
    entry.restart().await?;
    Ok(Json(ContextInfo::from(&*entry)))
}

pub(super) async fn delete_context(
    State(app): AppState,
    caller: Caller,
    Path((id, cid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    sandbox(&app, &caller, &id)?.remove_context(&cid)?;
    Ok(StatusCode::NO_CONTENT)
}
