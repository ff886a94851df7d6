//! Uploads as HTTP clients send them: a raw body for one path, or `multipart/form-data` with
//! one or more `file` parts. Each is streamed into the sandbox (see `sandbox::write_stream`),
//! never held in memory.

use axum::extract::{FromRequest as _, Multipart, Request};
use axum::http::{HeaderMap, header};
use futures_util::TryStreamExt as _;

use super::App;
use super::error::{ApiError, ApiResult};
use crate::sandbox::{Sandbox, write_stream};

/// Writes an upload (raw body, or multipart with one or more `file` parts) and returns the
/// written paths.
pub(crate) async fn receive_upload(
    app: &App,
    sandbox: &Sandbox,
    path: Option<String>,
    headers: &HeaderMap,
    request: Request,
) -> ApiResult<Vec<String>> {
    if !is_multipart(headers) {
        let path = path
            .ok_or_else(|| ApiError::bad_request("invalid_query", "a raw upload needs ?path="))?;
        receive_raw(app, sandbox, &path, headers, request).await?;
        return Ok(vec![path]);
    }
    let limit = app.registry.config.max_upload_bytes;
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
        write_stream(sandbox.home.clone(), target.clone(), stream, 0, limit).await?;
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

/// Writes the raw body of `request` to `path`.
pub(crate) async fn receive_raw(
    app: &App,
    sandbox: &Sandbox,
    path: &str,
    headers: &HeaderMap,
    request: Request,
) -> ApiResult<()> {
    let body = request.into_body().into_data_stream();
    let limit = app.registry.config.max_upload_bytes;
    write_stream(
        sandbox.home.clone(),
        path.to_string(),
        body,
        content_length(headers),
        limit,
    )
    .await?;
    Ok(())
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
