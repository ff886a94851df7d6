//! Criterion benches of Python contexts, grouped like the engine's hot paths: `create`,
//! `templates`, `execute_warm`, `imports`, `data`, `http`, `throughput`. Contexts start from
//! `stdlib` except in `templates`.
//!
//! Run: `cargo bench --bench python` (`-- --quick` for a smoke run, `-- create` for one
//! group). Memory per context and timeout precision are in `cargo bench --bench compare`.

use std::time::Duration;

use codebox::{Context, ContextOptions, Engine};
use codebox_server::{Server, ServerConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

/// Contexts start from the `stdlib` template (built here if needed) unless a bench names
/// another.
fn engine() -> Engine {
    let engine = Engine::builder()
        .max_contexts(64)
        .default_template(None)
        .build_default_template(false)
        .build()
        .expect("engine");
    runtime()
        .block_on(engine.prepare_template(codebox::STDLIB_TEMPLATE))
        .expect("the stdlib template");
    engine
}

fn context(rt: &Runtime, engine: &Engine, setup: &str) -> Context {
    let ctx = rt
        .block_on(engine.create_context(ContextOptions::default()))
        .unwrap();
    let run = rt.block_on(ctx.execute(setup)).unwrap();
    assert!(run.error.is_none(), "{setup}: {:?}", run.error);
    ctx
}

fn create(c: &mut Criterion) {
    let (rt, engine) = (runtime(), engine());
    let mut group = c.benchmark_group("create");
    let no_templates = Engine::builder()
        .max_contexts(8)
        .templates(false)
        .build()
        .expect("engine");
    for (name, engine) in [
        ("python_context_to_first_result", &engine),
        ("python_plain_runtime_to_first_result", &no_templates),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let ctx = engine
                    .create_context(ContextOptions::default())
                    .await
                    .unwrap();
                assert_eq!(ctx.execute("1+1").await.unwrap().text(), Some("2"));
            })
        });
    }
    group.finish();
}

/// New contexts from the `data` template (numpy, pandas, pyplot already imported).
fn templates(c: &mut Criterion) {
    let (rt, engine) = (runtime(), engine());
    let data = || ContextOptions::new().template("data");
    drop(
        rt.block_on(engine.create_context(data()))
            .expect("the data template"),
    );
    let mut group = c.benchmark_group("templates");
    for (name, code, expected) in [
        ("data_context_to_first_1plus1", "1+1", "2"),
        (
            "data_context_to_first_pandas_result",
            "pd.DataFrame({'a':[1,2]}).sum().a",
            "np.int64(3)",
        ),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let ctx = engine.create_context(data()).await.unwrap();
                assert_eq!(ctx.execute(code).await.unwrap().text(), Some(expected));
            })
        });
    }
    group.finish();
}

fn execute_warm(c: &mut Criterion) {
    let (rt, engine) = (runtime(), engine());
    let ctx = context(&rt, &engine, "x = 1");
    let mut group = c.benchmark_group("execute_warm");
    for (name, code) in [
        ("python_tiny", "x + 1"),
        ("python_no_result", "y = x"),
        ("python_print", "print('hello')"),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { ctx.execute(code).await.unwrap() })
        });
    }
    group.finish();
}

fn imports(c: &mut Criterion) {
    let (rt, engine) = (runtime(), engine());
    let mut group = c.benchmark_group("imports");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for module in ["numpy", "pandas"] {
        group.bench_function(BenchmarkId::new("fresh_context", module), |b| {
            b.to_async(&rt).iter(|| async {
                let ctx = engine
                    .create_context(ContextOptions::default())
                    .await
                    .unwrap();
                assert!(
                    ctx.execute(format!("import {module}"))
                        .await
                        .unwrap()
                        .error
                        .is_none()
                );
            })
        });
    }
    group.finish();
}

fn data(c: &mut Criterion) {
    let (rt, engine) = (runtime(), engine());
    let ctx = context(
        &rt,
        &engine,
        "import numpy as np, pandas as pd, matplotlib.pyplot as plt\n\
         df = pd.DataFrame({'k': np.random.default_rng(1).integers(0, 100, 100_000), 'v': np.random.default_rng(2).random(100_000)})\n\
         m = np.random.default_rng(3).random((500, 500))\n\
         plt.plot([1, 2]); plt.show()",
    );
    let mut group = c.benchmark_group("data");
    group.sample_size(20);
    for (name, code) in [
        ("pandas_groupby_100k", "df.groupby('k').v.sum()"),
        ("numpy_matmul_500", "m @ m; None"),
        (
            "matplotlib_line_png",
            "plt.plot([1, 2, 3], [3, 1, 2]); plt.title('t'); plt.show()",
        ),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { assert!(ctx.execute(code).await.unwrap().error.is_none()) })
        });
    }
    group.finish();
}

fn http(c: &mut Criterion) {
    let (rt, engine) = (runtime(), engine());
    let (base, id) = rt.block_on(async {
        let server = Server::bind(engine, ServerConfig::new(vec!["k".into()]), "127.0.0.1:0")
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr());
        tokio::spawn(server.run());
        let client = reqwest::Client::new();
        let sandbox: serde_json::Value = client
            .post(format!("{base}/sandboxes"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (base, sandbox["sandboxID"].as_str().unwrap().to_string())
    });
    let client = reqwest::Client::new();
    let url = format!("{base}/sandboxes/{id}/execute");
    let mut group = c.benchmark_group("http");
    for (name, accept) in [
        ("execute_json", "application/json"),
        ("execute_ndjson", "application/x-ndjson"),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let response = client
                    .post(&url)
                    .bearer_auth("k")
                    .header("Accept", accept)
                    .json(&serde_json::json!({"code": "1 + 1"}))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap()
            })
        });
    }
    // A new sandbox (its default Python context from `stdlib`) to its first result, and
    // deleted again so the pool does not fill up.
    group.bench_function("create_sandbox_to_first_result", |b| {
        b.to_async(&rt).iter(|| async {
            let sandbox: serde_json::Value = client
                .post(format!("{base}/sandboxes"))
                .bearer_auth("k")
                .json(&serde_json::json!({"template": "stdlib"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = sandbox["sandboxID"].as_str().unwrap();
            let run: serde_json::Value = client
                .post(format!("{base}/sandboxes/{id}/execute"))
                .bearer_auth("k")
                .header("Accept", "application/json")
                .json(&serde_json::json!({"code": "1 + 1"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(run["results"][0]["data"]["text/plain"], "2", "{run}");
            client
                .delete(format!("{base}/sandboxes/{id}"))
                .bearer_auth("k")
                .send()
                .await
                .unwrap();
        })
    });
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let (rt, engine) = (runtime(), engine());
    let (contexts, executions) = (8, 10);
    let pool: Vec<Context> = (0..contexts)
        .map(|_| context(&rt, &engine, "n = 0"))
        .collect();
    let pool = std::sync::Arc::new(pool);
    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Elements((contexts * executions) as u64));
    group.bench_function(
        format!("{contexts}_contexts_x_{executions}_executions"),
        |b| {
            b.to_async(&rt).iter(|| {
                let pool = pool.clone();
                async move {
                    let tasks: Vec<_> = (0..contexts)
                        .map(|i| {
                            let pool = pool.clone();
                            tokio::spawn(async move {
                                for _ in 0..executions {
                                    pool[i].execute("n += sum(range(1000))").await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                }
            })
        },
    );
    group.finish();
}

criterion_group!(
    benches,
    create,
    templates,
    execute_warm,
    imports,
    data,
    http,
    throughput
);
criterion_main!(benches);
