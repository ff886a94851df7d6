use std::sync::OnceLock;

use codebox::{Context, ContextOptions, Engine, Execution, Limits};

/// One engine for the whole test binary (the runtime is installed and compiled on first use).
/// Contexts start from `stdlib` unless a test names a template, so tests do not depend on
/// whether the `data` template happens to be built yet.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::builder()
                .max_contexts(200)
                .default_template(None)
                .build()
                .expect("engine builds")
        })
        .clone()
}

/// An engine that meters fuel (a separately compiled module).
pub fn metered_engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::builder()
                .max_contexts(8)
                .default_template(None)
                .fuel_metering(true)
                .build()
                .expect("engine builds")
        })
        .clone()
}

pub async fn context() -> Context {
    context_with(Limits::default()).await
}

pub async fn context_with(limits: Limits) -> Context {
    engine()
        .create_context(ContextOptions::new().limits(limits))
        .await
        .expect("context starts")
}

/// Runs code that must succeed and returns the execution.
pub async fn ok(ctx: &Context, code: &str) -> Execution {
    let run = ctx.execute(code).await.expect("execute");
    assert!(
        run.error.is_none(),
        "unexpected error running {code:?}: {:?}",
        run.error
    );
    run
}
