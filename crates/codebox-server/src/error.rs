//! API errors: every failure becomes `{"error": code, "message": sentence}` with a 4xx/5xx
//! status. A user mistake is never a 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer KEY)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.code, "message": self.message});
        (self.status, Json(body)).into_response()
    }
}

impl From<codebox::Error> for ApiError {
    fn from(e: codebox::Error) -> ApiError {
        use codebox::Error as E;
        let message = e.to_string();
        match e {
            E::InvalidPath { .. } => ApiError::bad_request("invalid_path", message),
            E::InvalidInput(_) => ApiError::bad_request("invalid_input", message),
            E::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            E::DiskQuota { .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_quota", message)
            }
            E::TooManyContexts { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_contexts", message)
            }
            E::UnknownTemplate { .. } => ApiError::bad_request("invalid_input", message),
            E::Template { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "template_failed",
                message,
            ),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}
