//! The native API: sandboxes, contexts, executions, files and processes as JSON over HTTP,
//! every route but `/health` and `/openapi.json` behind an API key. Handlers parse their
//! wire structs, call the sandbox layer and answer its results in the shapes of `wire`;
//! sandbox-layer errors become `{"error", "message"}` answers (`http::error`).

mod execute;
mod files;
mod openapi;
mod sandboxes;
pub(crate) mod wire;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use crate::http::App;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Caller;
use crate::sandbox::Sandbox;

type AppState = State<Arc<App>>;

pub(crate) fn routes(app: Arc<App>) -> Router {
    let body_limit = app.registry.config.max_body_bytes;
    let json_routes = Router::new()
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::describe).delete(sandboxes::kill),
        )
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route(
            "/sandboxes/{id}/contexts",
            post(sandboxes::create_context).get(sandboxes::list_contexts),
        )
        .route(
            "/sandboxes/{id}/contexts/{cid}",
            delete(sandboxes::delete_context),
        )
        .route(
            "/sandboxes/{id}/contexts/{cid}/restart",
            post(sandboxes::restart_context),
        )
        .route("/sandboxes/{id}/execute", post(execute::execute))
        .route("/sandboxes/{id}/files/list", get(files::list))
        .route("/sandboxes/{id}/files/mkdir", post(files::make_dir))
        .route("/sandboxes/{id}/files/move", post(files::rename))
        .route("/sandboxes/{id}/processes", post(execute::process))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit));
    // Uploads stream with their own limit.
    let file_routes = Router::new()
        .route(
            "/sandboxes/{id}/files",
            get(files::download)
                .put(files::upload_raw)
                .post(files::upload)
                .delete(files::remove),
        )
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route(
            "/health",
            get(|| async { Json(wire::Health { status: "ok" }) }),
        )
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .merge(json_routes)
        .merge(file_routes)
        .fallback(|| async { ApiError::no_route() })
        .with_state(app)
}

/// The caller's sandbox `id`.
fn sandbox(app: &App, caller: &Caller, id: &str) -> ApiResult<Arc<Sandbox>> {
    Ok(app.registry.get(&caller.0, id)?)
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
