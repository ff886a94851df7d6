//! Templates: the built-in `stdlib` and `data` templates, custom templates, the build gate,
//! the cache, and engines without templates.
//!
//! Building a template takes about a minute, so the built-in ones are built once (by the
//! first test that needs them, into the shared cache) and one test takes a custom template
//! through its whole life. Most other tests run on the `stdlib` template (see `common`).

use std::sync::{Arc, Mutex};

use codebox::{
    Context, ContextOptions, Engine, Error, ErrorKind, ExecuteRequest, Stream, TemplateRecipe,
};

use crate::common::{engine, ok};

/// A context from the `data` template (built on first use).
async fn data_context(options: ContextOptions) -> Context {
    engine()
        .create_context(options.template("data"))
        .await
        .expect("a data context starts")
}

#[tokio::test]
async fn a_data_context_has_pandas_and_pyplot_without_importing() {
    let ctx = data_context(ContextOptions::new()).await;
    let run = ok(
        &ctx,
        "import sys\nsorted(m for m in ('numpy', 'pandas', 'matplotlib.pyplot') if m in sys.modules)",
    )
    .await;
    assert_eq!(run.text(), Some("['matplotlib.pyplot', 'numpy', 'pandas']"));

    let run = ok(
        &ctx,
        "df = pd.DataFrame({'city': ['Oslo', 'Lima', 'Oslo'], 'sales': [3, 5, 4]})\n\
         df.groupby('city').sales.sum().to_dict()",
    )
    .await;
    assert_eq!(run.text(), Some("{'Lima': 5, 'Oslo': 7}"));

    let run = ok(
        &ctx,
        "plt.plot([1, 2, 3], [2, 1, 3])\nplt.title('sales')\nplt.show()",
    )
    .await;
    let png = run
        .results
        .iter()
        .find_map(|r| r.data.get("image/png"))
        .expect("the chart comes back as a PNG");
    assert!(png.as_str().is_some_and(|s| s.len() > 1000), "{png}");
    assert_eq!(run.execution_count, 3, "the build's cells are not counted");
}

#[tokio::test]
async fn contexts_from_one_template_share_no_state_or_files() {
    let a = data_context(ContextOptions::new()).await;
    let b = data_context(ContextOptions::new()).await;
    ok(&a, "secret = 41\nopen('mine.txt', 'w').write('a')").await;
    let run = b.execute("secret").await.unwrap();
    assert_eq!(
        run.error.as_ref().map(|e| e.name.as_str()),
        Some("NameError")
    );
    let run = ok(&b, "import os\nos.path.exists('mine.txt')").await;
    assert_eq!(run.text(), Some("False"));

    // Randomness is per context, for `random` and for numpy's legacy global generator.
    let draw = "import random\n(random.random(), float(np.random.random()))";
    let from_a = ok(&a, draw).await.text().map(str::to_string);
    let from_b = ok(&b, draw).await.text().map(str::to_string);
    assert_ne!(from_a, from_b);
    // Names the warm-up made are gone; the setup's stay.
    let run = ok(
        &a,
        "[n in globals() for n in ('frame', 'figure', 'np', 'pd', 'plt')]",
    )
    .await;
    assert_eq!(run.text(), Some("[False, False, True, True, True]"));
}

#[tokio::test]
async fn a_restored_context_sees_its_own_environment_directory_files_and_clock() {
    let ctx = data_context(
        ContextOptions::new()
            .env("REGION", "eu-north")
            .cwd("/home/user/work"),
    )
    .await;
    ctx.files()
        .write("work/sales.csv", b"city,sales\nOslo,3\nLima,5\nOslo,4\n")
        .unwrap();
    let run = ok(
        &ctx,
        "import os, sys\n(os.environ.get('REGION'), os.getcwd(), sys.orig_argv, sys.argv, 'CODEBOX_TEMPLATE_BUILD' in os.environ)",
    )
    .await;
    assert_eq!(
        run.text(),
        Some("('eu-north', '/home/user/work', ['/usr/local/bin/python.wasm'], [''], False)")
    );
    let run = ok(
        &ctx,
        "pd.read_csv('sales.csv').groupby('city').sales.sum().to_dict()",
    )
    .await;
    assert_eq!(run.text(), Some("{'Lima': 5, 'Oslo': 7}"));

    // The monotonic clock moves forward between executions, and is anchored at the wall
    // clock when the context starts (so it always reads later than the build did).
    ok(&ctx, "import time\nt0 = time.monotonic()").await;
    let run = ok(
        &ctx,
        "(time.monotonic() > t0, abs(time.monotonic() - time.time()) < 60)",
    )
    .await;
    assert_eq!(run.text(), Some("(True, True)"));
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let guest_now: f64 = ok(&ctx, "time.time()")
        .await
        .text()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (guest_now - host_now).abs() < 60.0,
        "{guest_now} vs {host_now}"
    );

    // The streams the restored context gets are line-buffered: output arrives as it is
    // written, in order across stdout and stderr (block-buffered stdout would come last).
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let sink = chunks.clone();
    let request =
        ExecuteRequest::new("import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')")
            .on_output(move |stream, text| sink.lock().unwrap().push((stream, text.to_string())));
    ctx.execute(request).await.unwrap();
    let chunks = chunks.lock().unwrap().clone();
    assert_eq!(
        chunks,
        [
            (Stream::Stdout, "a\n".to_string()),
            (Stream::Stderr, "b\n".to_string()),
            (Stream::Stdout, "c\n".to_string()),
        ]
    );
}

/// Creating a context with `options` is refused as invalid input; returns the message.
async fn refused(engine: &Engine, options: ContextOptions) -> String {
    match engine.create_context(options).await {
        Err(Error::InvalidInput(message)) => message,
        Err(other) => panic!("expected InvalidInput, got {other}"),
        Ok(_) => panic!("expected InvalidInput, the context started"),
    }
}

/// Creating a context with `options` is refused because its template does not exist.
async fn unknown(engine: &Engine, options: ContextOptions, name: &str) {
    match engine.create_context(options).await {
        Err(Error::UnknownTemplate { name: asked }) => assert_eq!(asked, name),
        Err(other) => panic!("expected UnknownTemplate, got {other}"),
        Ok(_) => panic!("expected UnknownTemplate, the context started"),
    }
}

#[tokio::test]
async fn a_memory_limit_below_the_template_is_refused_by_name() {
    let limits = codebox::Limits {
        memory_bytes: 32 << 20,
        ..Default::default()
    };
    let message = refused(
        &engine(),
        ContextOptions::new().template("data").limits(limits),
    )
    .await;
    assert!(
        message.contains("data") && message.contains("memory"),
        "{message}"
    );
}

#[tokio::test]
async fn templates_are_only_for_python_and_must_exist() {
    let engine = engine();
    let js = ContextOptions::new().language(codebox::Language::JavaScript);
    refused(&engine, js.template("data")).await;
    let name = "no-such-template";
    unknown(&engine, ContextOptions::new().template(name), name).await;
    refused(&engine, ContextOptions::new().template("../../etc")).await;
}

#[tokio::test]
async fn a_failing_setup_returns_its_traceback_and_stores_nothing() {
    let engine = engine();
    let err = engine
        .build_template(
            "broken-setup",
            TemplateRecipe::new("import json\n\ndef load():\n    return 1 / 0\n\nload()\n"),
        )
        .await
        .unwrap_err();
    let Error::Template { name, message } = &err else {
        panic!("{err}");
    };
    assert_eq!(name, "broken-setup");
    assert!(message.contains("ZeroDivisionError"), "{message}");
    assert!(message.contains("line 4, in load"), "{message}");
    assert!(!engine.templates().iter().any(|t| t.name == "broken-setup"));
}

#[tokio::test]
async fn a_template_with_an_open_file_is_refused_naming_it() {
    let engine = engine();
    let err = engine
        .build_template(
            "leaky",
            TemplateRecipe::new("log = open('/tmp/build.log', 'w')\nlog.write('x')\n"),
        )
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("/tmp/build.log"), "{message}");
    assert!(message.contains("fd "), "{message}");
    assert!(!engine.templates().iter().any(|t| t.name == "leaky"));
}

const CUSTOM_SETUP: &str = "\
import json, statistics
GREETING = 'hello from the template'

def mean_of(values):
    return statistics.mean(values)
";

#[tokio::test]
async fn a_custom_template_round_trips_is_rebuilt_when_corrupt_and_can_be_removed() {
    let engine = engine();
    let info = engine
        .build_template(
            "test-custom",
            TemplateRecipe::new(CUSTOM_SETUP).warmup("scratch = mean_of([1, 2, 3])"),
        )
        .await
        .expect("the custom template builds");
    assert!(info.built);
    let listed = engine.templates();
    let info = listed
        .iter()
        .find(|t| t.name == "test-custom")
        .expect("listed");
    assert!(info.built && !info.builtin);
    assert_eq!(info.recipe.setup, CUSTOM_SETUP);
    assert!(listed.iter().any(|t| t.name == "stdlib" && t.built));

    let ctx = engine
        .create_context(ContextOptions::new().template("test-custom"))
        .await
        .unwrap();
    let run = ok(
        &ctx,
        "(GREETING, mean_of([2, 4]), 'scratch' in globals(), json.dumps([1]))",
    )
    .await;
    assert_eq!(
        run.text(),
        Some("('hello from the template', 3, False, '[1]')")
    );

    // Damage the cached module: a fresh engine (nothing loaded in memory) detects it and
    // rebuilds from the stored recipe.
    let cache = codebox_cache_dir();
    let compiled: Vec<_> = std::fs::read_dir(cache.join("compiled"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("template-test-custom-")
        })
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");
    let bytes = std::fs::read(&compiled[0]).unwrap();
    std::fs::write(&compiled[0], &bytes[..bytes.len() / 3]).unwrap();
    drop(bytes);
    let fresh = Engine::builder()
        .max_contexts(4)
        .default_template(None)
        .progress(codebox::Progress::silent())
        .build()
        .unwrap();
    let ctx = fresh
        .create_context(ContextOptions::new().template("test-custom"))
        .await
        .expect("rebuilt");
    let run = ok(&ctx, "GREETING").await;
    assert_eq!(run.text(), Some("'hello from the template'"));
    assert!(std::fs::metadata(&compiled[0]).unwrap().len() > (1 << 20));

    // Removed: a live context keeps working; new ones cannot start from it.
    fresh.remove_template("test-custom").unwrap();
    assert!(!fresh.templates().iter().any(|t| t.name == "test-custom"));
    assert!(!compiled[0].exists());
    assert_eq!(ok(&ctx, "mean_of([1, 3])").await.text(), Some("2"));
    unknown(
        &fresh,
        ContextOptions::new().template("test-custom"),
        "test-custom",
    )
    .await;
}

#[tokio::test]
async fn builtin_templates_are_protected() {
    let engine = engine();
    let err = engine
        .build_template("data", TemplateRecipe::new("x = 1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = engine
        .build_template("stdlib", TemplateRecipe::new("x = 1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(matches!(
        engine.remove_template("never-built"),
        Err(Error::UnknownTemplate { name }) if name == "never-built"
    ));
}

#[tokio::test]
async fn the_default_template_is_used_once_built_and_stdlib_stays_selectable() {
    // Make sure `data` is built, then an engine with the default settings uses it.
    drop(data_context(ContextOptions::new()).await);
    let defaults = Engine::builder()
        .max_contexts(4)
        .progress(codebox::Progress::silent())
        .build()
        .unwrap();
    let ctx = defaults
        .create_context(ContextOptions::new())
        .await
        .unwrap();
    assert_eq!(ok(&ctx, "pd.__name__").await.text(), Some("'pandas'"));
    let plain = defaults
        .create_context(ContextOptions::new().template("stdlib"))
        .await
        .unwrap();
    let run = plain.execute("pd").await.unwrap();
    assert_eq!(run.error.map(|e| e.kind), Some(ErrorKind::Exception));
}

fn codebox_cache_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CODEBOX_CACHE_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return std::path::PathBuf::from(dir).join("codebox");
    }
    std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/codebox")
}

#[tokio::test]
async fn the_http_api_selects_templates_per_sandbox_and_per_context() {
    use serde_json::{Value, json};
    drop(data_context(ContextOptions::new()).await);
    let server = crate::server::start(|_| {}).await;

    let sandbox = server.sandbox(json!({"template": "data"})).await;
    assert_eq!(sandbox["template"], "data");
    let id = sandbox["sandboxID"].as_str().unwrap();
    let out = server.run(id, "pd.DataFrame({'a': [1, 2]}).sum().a").await;
    assert_eq!(
        out["results"][0]["data"]["text/plain"], "np.int64(3)",
        "{out}"
    );

    let ctx = server
        .post_json(
            &format!("/sandboxes/{id}/contexts"),
            json!({"language": "python", "template": "stdlib"}),
        )
        .await;
    assert_eq!(ctx["template"], "stdlib", "{ctx}");

    for (body, code) in [
        (json!({"template": "no-such"}), "unknown_template"),
        (json!({"template": 7}), "invalid_json"),
    ] {
        let response = server
            .post("/sandboxes", "key-a")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], code, "{error}");
    }
    let response = server
        .post(&format!("/sandboxes/{id}/contexts"), "key-a")
        .json(&json!({"language": "javascript", "template": "data"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_stdlib_context_is_a_clean_interpreter_with_the_kernel_warm() {
    let engine = engine();
    assert!(
        engine
            .templates()
            .iter()
            .any(|t| t.name == "stdlib" && t.builtin && t.built)
    );
    let ctx = engine.create_context(ContextOptions::new()).await.unwrap();
    assert_eq!(ctx.template(), Some("stdlib"));
    // Nothing of the build is left in `__main__`, and the count starts at 1.
    let run = ok(&ctx, "sorted(n for n in dir() if not n.startswith('__'))").await;
    assert_eq!(run.text(), Some("[]"));
    assert_eq!(run.execution_count, 1);
    // The warm-up loaded traceback, so the first error costs no import.
    let run = ctx
        .execute(
            "import sys
assert 'traceback' in sys.modules
1 / 0",
        )
        .await
        .unwrap();
    let error = run.error.expect("an error");
    assert_eq!(error.name, "ZeroDivisionError");
    assert!(error.traceback.contains("<cell 2>"), "{}", error.traceback);
}

#[tokio::test]
async fn an_engine_without_templates_boots_the_plain_runtime() {
    let plain = Engine::builder()
        .max_contexts(4)
        .templates(false)
        .progress(codebox::Progress::silent())
        .build()
        .unwrap();
    let ctx = plain.create_context(ContextOptions::new()).await.unwrap();
    assert_eq!(ctx.template(), Some("stdlib"));
    ok(&ctx, "x = 41").await;
    assert_eq!(ok(&ctx, "x + 1").await.text(), Some("42"));
    let run = ctx
        .execute(
            "print('out')
undefined_name",
        )
        .await
        .unwrap();
    assert_eq!(run.stdout, "out\n");
    assert_eq!(run.error.expect("an error").name, "NameError");
    plain
        .create_context(ContextOptions::new().template("stdlib"))
        .await
        .expect("stdlib is always available");
    refused(&plain, ContextOptions::new().template("data")).await;
    let err = plain.prepare_template("data").await.unwrap_err();
    assert!(err.to_string().contains("turned off"), "{err}");
}
