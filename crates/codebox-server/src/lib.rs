//! codebox over HTTP: sandboxes with streaming executions and files, through a native JSON API
//! and an E2B-compatible API so existing E2B clients work unchanged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = tokio::task::spawn_blocking(codebox::Engine::new).await??;
//! let config = codebox_server::ServerConfig::new(vec!["secret-key".into()]);
//! let server = codebox_server::Server::bind(engine, config, "127.0.0.1:8080").await?;
//! println!("listening on {}", server.local_addr());
//! server.run().await?;
//! # Ok(()) }
//! ```
//!
//! # Concept map
//!
//! One sandbox layer, several front ends over it:
//!
//! - `sandbox/`: the sandbox layer, with no HTTP in it. The registry of live sandboxes
//!   (ownership, lifetimes, caps, the memory budget), the contexts in them, the choice of the
//!   context an execution goes to (`RunRequest`), process emulation (`python3 -c`, `node -e`,
//!   scripts) as script-mode executions, streamed uploads, and the hook that counts and logs
//!   every execution. It fails with one typed error, `SandboxError`.
//! - `http/`: what the HTTP front ends share, none of it tied to one wire format: API keys,
//!   extractors, the `{"error", "message"}` answer and the status of each `SandboxError`,
//!   the request log, uploads, and NDJSON streaming driven by a front end's `EventShape`.
//! - Front ends, each routes plus serde wire structs over the sandbox layer: `native/` (the
//!   native API and its OpenAPI document; an execution is the engine's own serialisation of
//!   `codebox::Execution` plus `contextId`) and `e2b/` (the E2B code interpreter and envd
//!   filesystem routes under `/e2b/{accessToken}`).
//! - `metrics.rs` (counters and the Prometheus text) and `util.rs` (ids, timestamps, locks)
//!   are leaves every layer uses.
//!
//! # Adding a front end
//!
//! For example the OpenSandbox API in `opensandbox/`, or MCP in `mcp/`:
//!
//! 1. Make the folder: `mod.rs` with `routes(app: Arc<App>) -> Router` (a `//!` doc saying
//!    what clients it serves and how they authenticate) and `wire.rs` with its serde request
//!    and answer structs. Handlers parse a wire struct, call the sandbox layer (`Registry`,
//!    `Sandbox`, `RunRequest::resolve`, `Registry::run_process`) and answer wire structs built
//!    from its types (`From<&Sandbox>`, `From<&ContextEntry>`, a struct that flattens
//!    `codebox::Execution`); no `json!` for answers.
//! 2. Errors: map `SandboxError` to the front end's status and body. `http::error::ApiError`
//!    is the `{"error", "message"}` answer with the native table of statuses and codes; a
//!    front end with its own error body writes its own type with `From<SandboxError>` (as
//!    `e2b/filesystem.rs` does for Connect errors). The shared extractors (`ApiJson`,
//!    `ApiQuery`, `Caller`) reject with `ApiError`.
//! 3. Streaming: implement `http::stream::EventShape` (what the closing lines say; output
//!    chunks and keepalives have defaults) and answer `http::stream::ndjson::<YourShape>`.
//! 4. Mount it: `mod` it in `lib.rs` and merge its `routes` in `router()`. If its paths carry
//!    a credential, blank it in `http/request_log.rs`'s `loggable_path`.
//! 5. Tests: router tests through `oneshot` in `src/tests.rs`, and a module over a real
//!    socket (or the front end's own client) in `tests/all/`, listed in `tests/all/main.rs`.
//! 6. Docs: this list, the crate line in `crates/README.md`, and the README's API section.
//!
//! A front end that is not HTTP (MCP over stdio) uses `sandbox/` alone.
#![deny(missing_docs)]

mod config;
mod e2b;
mod http;
mod metrics;
mod native;
mod sandbox;
#[cfg(test)]
mod tests;
mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use codebox::Engine;

use crate::http::App;

pub use config::ServerConfig;

/// A server bound to a socket, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Arc<AppHandle>,
}

/// Keeps `App` out of the public `Debug` output.
struct AppHandle(Arc<App>);

impl std::fmt::Debug for AppHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

impl Server {
    /// Binds `addr` (e.g. `127.0.0.1:8080`; port 0 picks a free port).
    pub async fn bind(engine: Engine, config: ServerConfig, addr: &str) -> std::io::Result<Server> {
        std::fs::create_dir_all(&config.data_dir)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let app = Arc::new(App::new(engine, config));
        Ok(Server {
            listener,
            app: Arc::new(AppHandle(app)),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the process ends (or the future is dropped).
    pub async fn run(self) -> std::io::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: no new connections,
    /// requests in flight get [`ServerConfig::shutdown_grace`] to finish, then every sandbox
    /// is killed and the connections still open get one more second. Returns when done; a
    /// connection that is still open then is not waited for.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self.app.0.clone();
        let grace = app.registry.config.shutdown_grace;
        let reaper_app = Arc::downgrade(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match reaper_app.upgrade() {
                    Some(app) => app.registry.reap(),
                    None => return,
                }
            }
        });
        // Streamed events are small writes: without TCP_NODELAY, Nagle's algorithm holds each
        // one back for tens of milliseconds.
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
        let serve = axum::serve(listener, router(app.clone())).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        });
        let mut serve = std::pin::pin!(serve.into_future());
        tokio::select! {
            done = &mut serve => return done,
            _ = stopping.wait_for(|s| *s) => {}
        }
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: no new connections, waiting for requests in flight"
        );
        if let Ok(done) = tokio::time::timeout(grace, &mut serve).await {
            app.registry.kill_all();
            return done;
        }
        tracing::info!("grace period over: killing every sandbox");
        app.registry.kill_all();
        match tokio::time::timeout(Duration::from_secs(1), &mut serve).await {
            Ok(done) => done,
            Err(_) => {
                tracing::warn!("connections still open after shutdown; not waiting for them");
                Ok(())
            }
        }
    }
}

fn router(app: Arc<App>) -> axum::Router {
    native::routes(app.clone())
        .merge(e2b::routes(app.clone()))
        .layer(axum::middleware::from_fn_with_state(
            app,
            http::request_log::log_requests,
        ))
}
