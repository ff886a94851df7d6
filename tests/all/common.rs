use std::sync::OnceLock;

use codebox::{Context, ContextOptions, Engine, Execution, Limits};

/// One engine for the whole test binary (the runtime is installed and compiled on first use).
/// Contexts start from the `stdlib` template, built here once if the cache has none, unless
/// a test names another, so tests do not depend on what happens to be built.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let engine = Engine::builder()
                .max_contexts(200)
                .default_template(None)
                .build_default_template(false)
                .build()
                .expect("engine builds");
            prepare(&engine, codebox::STDLIB_TEMPLATE);
            engine
        })
        .clone()
}

/// Builds template `name` unless it is built, blocking; callable from inside a test's runtime.
pub fn prepare(engine: &Engine, name: &'static str) {
    let engine = engine.clone();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(engine.prepare_template(name))
    })
    .join()
    .expect("template build thread")
    .expect("template builds");
}

/// An engine that meters fuel (a separately compiled module); no templates, so its contexts
/// boot the plain runtime.
pub fn metered_engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::builder()
                .max_contexts(8)
                .templates(false)
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
