//! One log line per request, with a request id that also goes back in `x-request-id` and
//! tags every line logged while the request is handled (executions included). Paths are
//! logged without their query and with E2B access tokens blanked; bodies never are.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use super::App;
use crate::util::random_id;

const REQUEST_ID: &str = "x-request-id";

/// Longest path written to the log; hostile clients send long ones.
const MAX_LOGGED_PATH: usize = 200;

pub(crate) async fn log_requests(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable_id(v))
        .map_or_else(|| random_id("req_"), str::to_string);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %loggable_path(request.uri().path()),
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    app.registry.metrics.record_response(status);
    span.in_scope(|| {
        // For a stream this is the time to its first byte; the execution logs its own.
        tracing::info!(
            status,
            duration_ms = started.elapsed().as_secs_f64() * 1e3,
            "response"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// A client's own request id is kept if it is short and plain.
fn is_acceptable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The path as logged: the E2B access token (a credential) blanked, long paths cut.
fn loggable_path(path: &str) -> String {
    let mut out = match path.strip_prefix("/e2b/") {
        Some(rest) => match rest.split_once('/') {
            Some((_, tail)) => format!("/e2b/{{token}}/{tail}"),
            None => "/e2b/{token}".to_string(),
        },
        None => path.to_string(),
    };
    if out.len() > MAX_LOGGED_PATH {
        let mut cut = MAX_LOGGED_PATH;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_blanked_and_long_paths_cut() {
        assert_eq!(
            loggable_path("/e2b/tok_abc/execute"),
            "/e2b/{token}/execute"
        );
        assert_eq!(loggable_path("/e2b/tok_abc"), "/e2b/{token}");
        assert_eq!(loggable_path("/sandboxes/sbx_1"), "/sandboxes/sbx_1");
        let long = format!("/{}", "é".repeat(300));
        let logged = loggable_path(&long);
        assert!(logged.len() <= MAX_LOGGED_PATH + '…'.len_utf8());
        assert!(logged.ends_with('…'));
    }

    #[test]
    fn only_plain_client_ids_are_kept() {
        assert!(is_acceptable_id("abc-123_x.y"));
        assert!(!is_acceptable_id(""));
        assert!(!is_acceptable_id("a b"));
        assert!(!is_acceptable_id("x\n"));
        assert!(!is_acceptable_id(&"a".repeat(65)));
    }
}
