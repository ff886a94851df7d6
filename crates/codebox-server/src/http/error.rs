//! The HTTP error answer: every failure becomes `{"error": code, "message": sentence}` with a
//! 4xx/5xx status, and a user mistake is never a 500. This is the native API's error shape,
//! also what E2B's plain routes answer (its SDK reads only the status), and the rejection of
//! the shared extractors. The table below gives each sandbox-layer error its status and code;
//! a front end with another error shape maps [`SandboxError`] itself, as E2B's Connect routes
//! do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::sandbox::SandboxError;

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

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer KEY)",
        )
    }

    /// No route matches the request.
    pub fn no_route() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "route not found")
    }
}

/// The body of an error answer.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> ApiError {
        use SandboxError as S;
        let (status, code) = match &e {
            S::SandboxNotFound | S::ContextNotFound => (StatusCode::NOT_FOUND, "not_found"),
            S::UnknownLanguage { .. } => (StatusCode::BAD_REQUEST, "unknown_language"),
            S::UnknownTemplate { .. } => (StatusCode::BAD_REQUEST, "unknown_template"),
            S::InvalidLifetime { .. } | S::InvalidTimeout { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_timeout")
            }
            S::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            S::UnknownCommand { .. } => (StatusCode::BAD_REQUEST, "unknown_command"),
            S::TooManySandboxes { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_sandboxes"),
            S::TooManyContexts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_contexts"),
            S::MemoryBudget => (StatusCode::TOO_MANY_REQUESTS, "memory_budget"),
            S::UploadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large"),
            S::Killed => (StatusCode::GONE, "sandbox_killed"),
            S::Engine(e) => engine_status(e),
            S::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<codebox::Error> for ApiError {
    fn from(e: codebox::Error) -> ApiError {
        SandboxError::from(e).into()
    }
}

/// The status and code of an engine error.
fn engine_status(e: &codebox::Error) -> (StatusCode, &'static str) {
    use codebox::Error as E;
    match e {
        E::InvalidPath { .. } => (StatusCode::BAD_REQUEST, "invalid_path"),
        E::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
        E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        E::DiskQuota { .. } => (StatusCode::INSUFFICIENT_STORAGE, "disk_quota"),
        E::TooManyContexts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_contexts"),
        // An unknown template was `InvalidInput` before the engine named it; the code stays.
        E::UnknownTemplate { .. } => (StatusCode::BAD_REQUEST, "invalid_input"),
        E::Template { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "template_failed"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_errors_keep_their_statuses_codes_and_sentences() {
        let cases = [
            (
                SandboxError::SandboxNotFound,
                404,
                "not_found",
                "sandbox not found",
            ),
            (
                SandboxError::ContextNotFound,
                404,
                "not_found",
                "context not found",
            ),
            (
                SandboxError::InvalidLifetime { max_secs: 3600 },
                400,
                "invalid_timeout",
                "timeout must be between 1 and 3600 seconds",
            ),
            (
                SandboxError::TooManyContexts { max: 16 },
                429,
                "too_many_contexts",
                "a sandbox may have at most 16 contexts",
            ),
            (
                SandboxError::MemoryBudget,
                429,
                "memory_budget",
                "the server's memory budget",
            ),
            (
                SandboxError::Killed,
                410,
                "sandbox_killed",
                "the sandbox was killed",
            ),
            (
                SandboxError::Engine(codebox::Error::NotFound("a.txt".into())),
                404,
                "not_found",
                "no such file or directory: a.txt",
            ),
            (
                codebox::Error::DiskQuota {
                    path: "a".into(),
                    quota_bytes: 1,
                }
                .into(),
                507,
                "disk_quota",
                "disk quota exceeded",
            ),
        ];
        for (error, status, code, message) in cases {
            let answer = ApiError::from(error);
            assert_eq!(answer.status.as_u16(), status, "{answer:?}");
            assert_eq!(answer.code, code, "{answer:?}");
            assert!(answer.message.starts_with(message), "{answer:?}");
        }
    }
}
