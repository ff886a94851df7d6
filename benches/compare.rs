//! codebox next to native CPython on the same workloads, plus the engine's own numbers; writes
//! BENCHMARKS.md.
//!
//! Run: `cargo bench --bench compare` (`-- --quick` for fewer repetitions). Creates
//! `target/bench-venv` with numpy and pandas for the native side on first use.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use codebox::{Context, ContextOptions, Engine, Language, Limits};

const WORKLOADS: &str = include_str!("workloads/compare.py");

type Medians = BTreeMap<String, f64>;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeats = if quick { 2 } else { 5 };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    eprintln!("native CPython ...");
    let python = bench_venv(root);
    let native = run_native(&python, repeats);
    let native_version = command_line(&python, &["--version"]);

    eprintln!("codebox ...");
    // Contexts start from the `stdlib` template unless a measure names another.
    let plain = Engine::builder()
        .max_contexts(96)
        .default_template(None)
        .build_default_template(false)
        .build()
        .expect("engine");
    rt.block_on(plain.prepare_template(codebox::STDLIB_TEMPLATE))
        .expect("the stdlib template");
    let metered = Engine::builder()
        .max_contexts(8)
        .templates(false)
        .fuel_metering(true)
        .build()
        .expect("engine");
    let unmetered = rt.block_on(run_codebox(&plain, repeats));
    let fueled = rt.block_on(run_codebox(&metered, repeats));

    eprintln!("engine numbers ...");
    let engine = rt.block_on(engine_numbers(&plain, quick));

    let report = render(
        &native,
        &unmetered,
        &fueled,
        &engine,
        &native_version,
        repeats,
    );
    println!("{report}");
    std::fs::write(root.join("BENCHMARKS.md"), report).expect("write BENCHMARKS.md");
    eprintln!("wrote BENCHMARKS.md");
}

/// A virtual environment with numpy and pandas for the native side.
fn bench_venv(root: &Path) -> PathBuf {
    let dir = root.join("target").join("bench-venv");
    let python = dir.join("bin").join("python");
    if command_ok(&python, &["-c", "import numpy, pandas"]) {
        return python;
    }
    let system = std::env::var("CODEBOX_PYTHON").unwrap_or_else(|_| "python3".into());
    assert!(
        command_ok(Path::new(&system), &["-m", "venv", dir.to_str().unwrap()]),
        "python3 -m venv failed"
    );
    assert!(
        command_ok(
            &python,
            &["-m", "pip", "install", "--quiet", "numpy", "pandas"]
        ),
        "pip install numpy pandas failed"
    );
    python
}

fn command_ok(program: &Path, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn command_line(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn workload_source(repeats: u32) -> String {
    format!("REPEATS = {repeats}\n{WORKLOADS}")
}

fn run_native(python: &Path, repeats: u32) -> Medians {
    let out = Command::new(python)
        .arg("-c")
        .arg(workload_source(repeats))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_last_line(&String::from_utf8_lossy(&out.stdout))
}

async fn run_codebox(engine: &Engine, repeats: u32) -> Medians {
    let limits = Limits {
        timeout: Duration::from_secs(1800),
        memory_bytes: 4 << 30,
        ..Limits::default()
    };
    let ctx = engine
        .create_context(ContextOptions::new().limits(limits))
        .await
        .unwrap();
    let run = ctx.execute(workload_source(repeats)).await.unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);
    parse_last_line(&run.stdout)
}

fn parse_last_line(stdout: &str) -> Medians {
    let line = stdout.lines().last().expect("the workloads print a line");
    serde_json::from_str(line).expect("a JSON object of medians")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median ms from creating a context to its first `1+1` result.
async fn create_ms(engine: &Engine, n: usize) -> f64 {
    let mut create = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let ctx = fresh(engine).await;
        ctx.execute("1+1").await.unwrap();
        create.push(start.elapsed().as_secs_f64() * 1e3);
    }
    median(create)
}

async fn fresh(engine: &Engine) -> Context {
    engine
        .create_context(ContextOptions::default())
        .await
        .unwrap()
}

/// Times `code` on `ctx` `n` times; median in ms.
async fn warm_ms(ctx: &Context, code: &str, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let run = ctx.execute(code).await.unwrap();
        assert!(run.error.is_none(), "{code}: {:?}", run.error);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

/// The engine's own numbers, as (name, value, unit).
async fn engine_numbers(engine: &Engine, quick: bool) -> Vec<(String, f64, &'static str)> {
    let n = if quick { 10 } else { 40 };
    let mut out = Vec::new();

    out.push((
        "new context → first `1+1` result (`stdlib` template)".into(),
        create_ms(engine, n).await,
        "ms",
    ));
    let no_templates = Engine::builder()
        .max_contexts(8)
        .templates(false)
        .build()
        .expect("engine");
    out.push((
        "new context → first `1+1` result, templates off (plain runtime boot)".into(),
        create_ms(&no_templates, n).await,
        "ms",
    ));
    drop(no_templates);

    let ctx = fresh(engine).await;
    ctx.execute("x = 1").await.unwrap();
    let tiny = warm_ms(&ctx, "x + 1", n * 25).await;
    let silent = warm_ms(&ctx, "y = x + 1", n * 25).await;
    out.push((
        "tiny execution on a live context (`x + 1`)".into(),
        tiny * 1e3,
        "µs",
    ));
    out.push((
        "tiny execution without a result (`y = x + 1`)".into(),
        silent * 1e3,
        "µs",
    ));
    out.push((
        "… so a text result adds (the difference)".into(),
        (tiny - silent) * 1e3,
        "µs",
    ));

    let imports = if quick { 2 } else { 3 };
    for module in ["numpy", "pandas"] {
        let mut times = Vec::new();
        for _ in 0..imports {
            let ctx = fresh(engine).await;
            let start = Instant::now();
            ctx.execute(format!("import {module}")).await.unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        out.push((
            format!("`import {module}` in a fresh context"),
            median(times),
            "ms",
        ));
    }

    let ctx = fresh(engine).await;
    let plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.title('t')\nplt.show()";
    let start = Instant::now();
    ctx.execute(plot).await.unwrap();
    out.push((
        "first matplotlib PNG in a fresh context".into(),
        start.elapsed().as_secs_f64() * 1e3,
        "ms",
    ));
    out.push((
        "small line chart as PNG, after the first".into(),
        warm_ms(&ctx, plot, if quick { 3 } else { 10 }).await,
        "ms",
    ));

    let limit = Duration::from_millis(200);
    let ctx = engine
        .create_context(ContextOptions::new().limits(Limits {
            timeout: limit,
            ..Limits::default()
        }))
        .await
        .unwrap();
    for (name, code) in [
        ("busy loop", "while True: pass"),
        ("time.sleep", "import time\ntime.sleep(60)"),
    ] {
        let mut late = Vec::new();
        for _ in 0..(if quick { 3 } else { 10 }) {
            let start = Instant::now();
            ctx.execute(code).await.unwrap();
            late.push(start.elapsed().saturating_sub(limit).as_secs_f64() * 1e3);
        }
        out.push((
            format!("timeout overshoot, {name} (incl. the restart)"),
            median(late),
            "ms",
        ));
    }

    // Idle memory is measured in a new engine: freed slots of a used pool keep pages resident
    // for the next context, which would hide part of a new context's pages.
    let pool = unused_pool();
    let (before, contexts) = (pss_mib(), 20);
    let mut idle = Vec::new();
    for _ in 0..contexts {
        let ctx = fresh(&pool).await;
        ctx.execute("1+1").await.unwrap();
        idle.push(ctx);
    }
    out.push((
        "idle context after `1+1` (PSS)".into(),
        (pss_mib() - before) / contexts as f64,
        "MiB",
    ));
    let with_pandas = 4;
    let before = pss_mib();
    for ctx in idle.iter().take(with_pandas) {
        ctx.execute("import numpy, pandas").await.unwrap();
    }
    out.push((
        "… after `import numpy, pandas` (PSS)".into(),
        (pss_mib() - before) / with_pandas as f64,
        "MiB more",
    ));
    drop((idle, pool));

    out.extend(template_numbers(engine, quick).await);
    out.extend(http_numbers(engine, n).await);
    out.extend(http_load(engine, quick).await);

    let js_options = || ContextOptions::new().language(Language::JavaScript);
    let mut create = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let ctx = engine.create_context(js_options()).await.unwrap();
        ctx.execute("1+1").await.unwrap();
        create.push(start.elapsed().as_secs_f64() * 1e3);
    }
    out.push((
        "JavaScript: new context → first `1+1` result".into(),
        median(create),
        "ms",
    ));
    let js = engine.create_context(js_options()).await.unwrap();
    js.execute("let x = 1").await.unwrap();
    out.push((
        "JavaScript: tiny execution (`x + 1`)".into(),
        warm_ms(&js, "x + 1", n * 25).await * 1e3,
        "µs",
    ));
    let pool = unused_pool();
    let before = pss_mib();
    let mut idle = Vec::new();
    for _ in 0..contexts {
        let ctx = pool.create_context(js_options()).await.unwrap();
        ctx.execute("1+1").await.unwrap();
        idle.push(ctx);
    }
    out.push((
        "JavaScript: idle context (PSS)".into(),
        (pss_mib() - before) / contexts as f64,
        "MiB",
    ));
    out
}

/// Contexts from the `data` template (built first if needed, not timed).
async fn template_numbers(engine: &Engine, quick: bool) -> Vec<(String, f64, &'static str)> {
    let data = || ContextOptions::new().template("data");
    drop(
        engine
            .create_context(data())
            .await
            .expect("the data template"),
    );
    let n = if quick { 10 } else { 40 };
    let mut out = Vec::new();
    for (what, code) in [
        ("`1+1`", "1+1"),
        (
            "`pd.DataFrame({'a':[1,2]}).sum().a`",
            "pd.DataFrame({'a':[1,2]}).sum().a",
        ),
        (
            "groupby on 10k rows",
            "pd.DataFrame({'k': np.arange(10_000) % 7, 'v': np.arange(10_000)}).groupby('k').v.sum()",
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..n {
            let start = Instant::now();
            let ctx = engine.create_context(data()).await.unwrap();
            let run = ctx.execute(code).await.unwrap();
            assert!(run.error.is_none(), "{code}: {:?}", run.error);
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        out.push((
            format!("`data` template: new context → first {what} result"),
            median(times),
            "ms",
        ));
    }
    let plot = "plt.plot([1, 2, 3], [3, 1, 2])\nplt.title('t')\nplt.show()";
    let mut times = Vec::new();
    for _ in 0..(if quick { 3 } else { 10 }) {
        let start = Instant::now();
        let ctx = engine.create_context(data()).await.unwrap();
        ctx.execute(plot).await.unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    out.push((
        "`data` template: new context → first PNG chart".into(),
        median(times),
        "ms",
    ));
    for (what, code) in [
        ("`1+1`", "1+1"),
        ("a pandas result", "pd.DataFrame({'a':[1,2]}).sum().a"),
    ] {
        let pool = unused_pool();
        let (before, contexts) = (pss_mib(), 20);
        let mut idle = Vec::new();
        for _ in 0..contexts {
            let ctx = pool.create_context(data()).await.unwrap();
            ctx.execute(code).await.unwrap();
            idle.push(ctx);
        }
        out.push((
            format!("`data` template: idle context after {what} (PSS)"),
            (pss_mib() - before) / contexts as f64,
            "MiB",
        ));
    }
    out
}

/// `codebox serve` on a loopback port, and a client for it that asks for JSON answers.
struct LoopbackApi {
    base: String,
    client: reqwest::Client,
}

impl LoopbackApi {
    async fn start(engine: &Engine) -> LoopbackApi {
        use codebox_server::{Server, ServerConfig};
        let mut config = ServerConfig::new(vec!["k".into()]);
        // Each context reserves its memory limit from the server's budget (3/4 of the RAM):
        // a smaller limit lets the load run's 50 sandboxes fit.
        config.limits.memory_bytes = 256 << 20;
        let server = Server::bind(engine.clone(), config, "127.0.0.1:0")
            .await
            .expect("server");
        let base = format!("http://{}", server.local_addr());
        tokio::spawn(server.run());
        LoopbackApi {
            base,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Vec<u8> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth("k")
            .header("Accept", "application/json")
            .json(&body)
            .send()
            .await
            .unwrap();
        response.bytes().await.unwrap().to_vec()
    }

    /// Creates a sandbox and returns its id.
    async fn sandbox(&self, body: serde_json::Value) -> String {
        let created: serde_json::Value =
            serde_json::from_slice(&self.post("/sandboxes", body).await).unwrap();
        created["sandboxID"].as_str().unwrap().to_string()
    }

    /// Runs `code` and returns the whole answer.
    async fn execute(&self, id: &str, code: &str) -> Vec<u8> {
        let answer = self
            .post(
                &format!("/sandboxes/{id}/execute"),
                serde_json::json!({"code": code}),
            )
            .await;
        assert!(answer.starts_with(b"{"), "{answer:?}");
        answer
    }

    async fn kill(&self, id: &str) {
        let url = format!("{}/sandboxes/{id}", self.base);
        self.client
            .delete(url)
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
    }
}

/// Round trips through the HTTP API on loopback, JSON responses.
async fn http_numbers(engine: &Engine, n: usize) -> Vec<(String, f64, &'static str)> {
    use serde_json::json;
    let api = LoopbackApi::start(engine).await;
    let live = api.sandbox(json!({})).await;
    api.execute(&live, "1 + 1").await;
    let mut round_trips = Vec::new();
    for _ in 0..n * 25 {
        let start = Instant::now();
        api.execute(&live, "1 + 1").await;
        round_trips.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let mut creates = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let id = api.sandbox(json!({"template": "stdlib"})).await;
        api.execute(&id, "1 + 1").await;
        creates.push(start.elapsed().as_secs_f64() * 1e3);
        api.kill(&id).await;
    }
    vec![
        (
            "HTTP: `1+1` round trip on a live context (JSON)".into(),
            median(round_trips),
            "µs",
        ),
        (
            "HTTP: create sandbox → first `1+1` result".into(),
            median(creates),
            "ms",
        ),
    ]
}

/// Sustained load: 50 sandboxes, one client each sending `x + 1` back to back over loopback
/// HTTP for a fixed time. Clients and server share the machine's cores.
async fn http_load(engine: &Engine, quick: bool) -> Vec<(String, f64, &'static str)> {
    let (sandboxes, seconds) = (50, if quick { 3 } else { 10 });
    let api = LoopbackApi::start(engine).await;
    let mut ids = Vec::new();
    for _ in 0..sandboxes {
        let id = api.sandbox(serde_json::json!({"template": "stdlib"})).await;
        api.execute(&id, "x = 1").await;
        ids.push(id);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let clients = ids.iter().map(|id| async {
        let mut latencies = Vec::new();
        while Instant::now() < deadline {
            let sent = Instant::now();
            api.execute(id, "x + 1").await;
            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        }
        latencies
    });
    let mut latencies: Vec<f64> = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let rate = latencies.len() as f64 / elapsed;
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    vec![
        (
            format!(
                "HTTP load: {sandboxes} sandboxes, tiny executions back to back (executions/s)"
            ),
            rate,
            "/s",
        ),
        (
            format!("HTTP load: {sandboxes} sandboxes, median latency"),
            median(latencies),
            "ms",
        ),
        (
            format!("HTTP load: {sandboxes} sandboxes, p99 latency"),
            p99,
            "ms",
        ),
    ]
}

/// An engine whose pool no context has used yet.
fn unused_pool() -> Engine {
    Engine::builder()
        .max_contexts(32)
        .default_template(None)
        .build_default_template(false)
        .build()
        .expect("engine")
}

fn pss_mib() -> f64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {mem} RAM, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn render(
    native: &Medians,
    unmetered: &Medians,
    fueled: &Medians,
    engine: &[(String, f64, &str)],
    native_version: &str,
    repeats: u32,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `cargo bench --bench compare` — do not edit by hand; rerun it.\n"
    );
    let _ = writeln!(s, "Machine: {}.\n", machine());
    let _ = writeln!(s, "## codebox vs native CPython\n");
    let _ = writeln!(
        s,
        "The same file (`benches/workloads/compare.py`) runs on the host's {native_version} (numpy and pandas from \
         PyPI in a virtual environment) and inside a codebox context (CPython 3.15 on WASI in Wasmtime), with and \
         without fuel metering. Each workload runs once to warm up, then {repeats} times; the table shows the \
         medians in milliseconds and the ratio codebox / native.\n"
    );
    let _ = writeln!(
        s,
        "| workload | native ms | codebox ms | ratio | codebox + fuel ms | ratio |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (name, native_ms) in native {
        let plain = unmetered.get(name).copied().unwrap_or(f64::NAN);
        let fuel = fueled.get(name).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| {name} | {native_ms:.1} | {plain:.1} | {:.2}× | {fuel:.1} | {:.2}× |",
            plain / native_ms,
            fuel / native_ms
        );
    }
    let _ = writeln!(s, "\n## Engine\n");
    let _ = writeln!(
        s,
        "Medians over repeated runs on the same machine (idle memory: the growth of this process's PSS divided by the number of contexts, in a new engine whose pool no context has used yet). Python contexts start from the `stdlib` template unless a row says otherwise.\n"
    );
    let _ = writeln!(s, "| measure | value |");
    let _ = writeln!(s, "|---|---:|");
    for (name, value, unit) in engine {
        let digits = if *value < 10.0 { 2 } else { 1 };
        let _ = writeln!(s, "| {name} | {value:.digits$} {unit} |");
    }
    let _ = writeln!(
        s,
        "\n## Reproduce\n\n```sh\ncargo bench --bench compare          # this report (about 5 minutes)\ncargo bench --bench python           # criterion: create, templates, execute_warm, imports, data, HTTP, throughput\ncargo bench --bench javascript       # criterion: JS/TS create, execute_warm, TypeScript transform\ncargo bench --bench python -- --quick\n```\n\n\
         Timings on a shared 2-core machine are noisy: compare medians and ratios, not single runs. \
         The machine's speed also changes from day to day (the native column shows it: the same \
         machine type has run fib_27 natively in 23 ms on one day and 50 ms on another), so compare \
         codebox with native within one report, and ratios across reports. \
         Deterministic regressions are caught by fuel instead (`tests/all/perf.rs`)."
    );
    s
}
