//! Request extractors whose failures are JSON errors: bodies, query strings, the caller's key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::App;
use super::auth::bearer;
use super::error::ApiError;
use crate::sandbox::Owner;

/// A JSON body; malformed JSON, unknown fields, wrong types and oversized bodies are 4xx.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is too large",
                )
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("could not read the request body: {e}"),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON request body, with a 400 that says what is wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid request body: {e}")))
}

/// A query string.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("invalid query string: {}", e.body_text()),
                )
            })
    }
}

/// The owner of the API key in `Authorization: Bearer KEY`.
pub(crate) struct Caller(pub Owner);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or("");
        // Always hash and compare, so a missing key costs what a wrong one does.
        app.keys
            .check(presented)
            .map(Caller)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// Whether the client asked for one JSON object rather than a stream.
pub(crate) fn wants_json(parts: &axum::http::HeaderMap) -> bool {
    parts
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|a| a.trim().starts_with("application/json"))
        })
}
