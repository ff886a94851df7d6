//! Python context benchmarks: creation, warm execution, timeout precision, idle memory.
//!
//! Run: `cargo bench --bench python` (add `-- --quick` for a fast smoke run). Memory and
//! timeout numbers are printed as `report:` lines after the criterion groups.

use std::time::{Duration, Instant};

use codebox::{ContextOptions, Engine, ExecuteRequest, Limits};
use criterion::{Criterion, criterion_group};

fn engine() -> Engine {
    Engine::builder().max_contexts(64).build().expect("engine")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

fn create(c: &mut Criterion) {
    let engine = engine();
    let rt = runtime();
    let mut group = c.benchmark_group("create");
    group.bench_function("python_context_to_first_result", |b| {
        b.to_async(&rt).iter(|| async {
            let ctx = engine
                .create_context(ContextOptions::default())
                .await
                .unwrap();
            let run = ctx.execute("1+1").await.unwrap();
            assert_eq!(run.text(), Some("2"));
        })
    });
    group.finish();
}

fn execute_warm(c: &mut Criterion) {
    let engine = engine();
    let rt = runtime();
    let ctx = rt
        .block_on(engine.create_context(ContextOptions::default()))
        .unwrap();
    rt.block_on(ctx.execute("x = 1")).unwrap();
    let mut group = c.benchmark_group("execute_warm");
    group.bench_function("python_tiny", |b| {
        b.to_async(&rt)
            .iter(|| async { ctx.execute("x + 1").await.unwrap() })
    });
    group.bench_function("python_print", |b| {
        b.to_async(&rt)
            .iter(|| async { ctx.execute("print('hello')").await.unwrap() })
    });
    group.finish();
}

/// How late timeouts fire, for a busy loop and for a sleep.
fn timeout_report() {
    let engine = engine();
    let rt = runtime();
    let limit = Duration::from_millis(200);
    let ctx = rt
        .block_on(engine.create_context(ContextOptions::new().limits(Limits {
            timeout: limit,
            ..Limits::default()
        })))
        .unwrap();
    for (name, code) in [
        ("busy loop", "while True: pass"),
        ("sleep", "import time\ntime.sleep(60)"),
    ] {
        let mut late: Vec<f64> = (0..15)
            .map(|_| {
                let started = Instant::now();
                // The restart after a timeout happens inside execute; time only until the stop.
                let run = rt.block_on(ctx.execute(ExecuteRequest::new(code))).unwrap();
                assert!(run.error.is_some());
                (started.elapsed().saturating_sub(limit)).as_secs_f64() * 1e3
            })
            .collect();
        late.sort_by(|a, b| a.total_cmp(b));
        println!(
            "report: timeout ({name}, limit 200 ms) returns late by p50 {:.1} ms, max {:.1} ms (includes the ~2 ms restart)",
            late[late.len() / 2],
            late[late.len() - 1]
        );
    }
}

/// Resident memory per idle context after `1+1`, from /proc.
fn memory_report() {
    let engine = engine();
    let rt = runtime();
    let n = 40;
    let before = proc_memory();
    let contexts: Vec<_> = (0..n)
        .map(|_| {
            let ctx = rt
                .block_on(engine.create_context(ContextOptions::default()))
                .unwrap();
            rt.block_on(ctx.execute("1+1")).unwrap();
            ctx
        })
        .collect();
    let after = proc_memory();
    println!(
        "report: idle context after 1+1: {:.2} MiB RSS, {:.2} MiB PSS each ({n} contexts)",
        (after.0 - before.0) / n as f64,
        (after.1 - before.1) / n as f64
    );
    let with_pandas = 5;
    for ctx in contexts.iter().take(with_pandas) {
        rt.block_on(ctx.execute("import numpy, pandas")).unwrap();
    }
    let pandas = proc_memory();
    println!(
        "report: after `import numpy, pandas`: +{:.1} MiB PSS each",
        (pandas.1 - after.1) / with_pandas as f64
    );
    drop(contexts);
}

/// (RSS, PSS) of this process in MiB.
fn proc_memory() -> (f64, f64) {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("Rss:"), field("Pss:"))
}

criterion_group!(benches, create, execute_warm);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    timeout_report();
    memory_report();
}
