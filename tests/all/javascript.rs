//! JavaScript and TypeScript contexts on the real QuickJS runtime.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use codebox::{ContextOptions, ErrorKind, ExecuteRequest, Language, Limits, Stream};

use crate::common::{engine, ok};

async fn js() -> codebox::Context {
    lang(Language::JavaScript).await
}

async fn lang(language: Language) -> codebox::Context {
    engine()
        .create_context(ContextOptions::new().language(language))
        .await
        .expect("context starts")
}

#[tokio::test]
async fn declarations_persist_and_cells_can_be_rerun() {
    let ctx = js().await;
    ok(&ctx, "let x = 1\nconst y = 2\nclass Point { constructor(a) { this.a = a } }\nfunction add(a, b) { return a + b }").await;
    assert_eq!(
        ok(&ctx, "add(x, y) + new Point(3).a").await.text(),
        Some("6")
    );
    // Re-running the same declarations is fine, as in a notebook.
    ok(&ctx, "let x = 10\nconst y = 20\nclass Point {}").await;
    assert_eq!(ok(&ctx, "x + y").await.text(), Some("30"));
}

#[tokio::test]
async fn console_output_streams_in_order_to_stdout_and_stderr() {
    let ctx = js().await;
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let sink = chunks.clone();
    let request = ExecuteRequest::new(
        "console.log('a', 1)\nconsole.error('b')\nconsole.info({k: 'v'})\nconsole.warn('c')",
    )
    .on_output(move |stream, text| sink.lock().unwrap().push((stream, text.to_string())));
    let run = ctx.execute(request).await.unwrap();
    let chunks = chunks.lock().unwrap().clone();
    assert_eq!(
        chunks,
        [
            (Stream::Stdout, "a 1\n".to_string()),
            (Stream::Stderr, "b\n".to_string()),
            (Stream::Stdout, "{ k: 'v' }\n".to_string()),
            (Stream::Stderr, "c\n".to_string()),
        ]
    );
    assert_eq!(run.stdout, "a 1\n{ k: 'v' }\n");
    assert!(run.results.is_empty(), "console.log returns undefined");
}

#[tokio::test]
async fn results_are_inspected_like_node_and_carry_json() {
    let ctx = js().await;
    let cases = [
        ("'text'", "'text'"),
        (
            "[1, 'two', null, undefined, 3n]",
            "[ 1, 'two', null, undefined, 3n ]",
        ),
        (
            "({a: {b: {c: {d: 1}}}, list: [1, 2]})",
            "{ a: { b: { c: [Object] } }, list: [ 1, 2 ] }",
        ),
        ("new Map([['k', 1]])", "Map(1) { 'k' => 1 }"),
        ("new Set([1, 'x'])", "Set(2) { 1, 'x' }"),
        ("new Date(0)", "1970-01-01T00:00:00.000Z"),
        ("(function named() {})", "[Function: named]"),
        ("-0", "-0"),
    ];
    for (code, expected) in cases {
        assert_eq!(ok(&ctx, code).await.text(), Some(expected), "{code}");
    }
    let run = ok(&ctx, "({a: [1, 2], b: 'x'})").await;
    assert_eq!(
        run.results[0].data["application/json"],
        serde_json::json!({"a": [1, 2], "b": "x"})
    );
    let run = ok(
        &ctx,
        "display('<b>hi</b>', 'text/html')\ndisplay({n: 1})\n42",
    )
    .await;
    assert_eq!(run.results.len(), 3);
    assert_eq!(run.results[0].data["text/html"], "<b>hi</b>");
    assert!(!run.results[1].is_main_result);
    assert_eq!(run.text(), Some("42"));
}

#[tokio::test]
async fn uncaught_errors_have_name_message_and_stack_with_user_lines() {
    let ctx = js().await;
    let run = ctx
        .execute(
            "console.log('before')\nfunction f() {\n  throw new TypeError('bad thing')\n}\nf()",
        )
        .await
        .unwrap();
    assert_eq!(run.stdout, "before\n");
    let error = run.error.unwrap();
    assert_eq!(
        (error.kind, error.name.as_str(), error.value.as_str()),
        (ErrorKind::Exception, "TypeError", "bad thing")
    );
    assert!(
        error.traceback.contains("at f (<cell 1>:3:"),
        "{}",
        error.traceback
    );
    assert!(
        error.traceback.contains("(<cell 1>:5:"),
        "{}",
        error.traceback
    );
    assert!(!run.context_restarted);
    assert_eq!(ok(&ctx, "typeof f").await.text(), Some("'function'"));
    let error = ctx
        .execute("throw 'just a string'")
        .await
        .unwrap()
        .error
        .unwrap();
    assert_eq!(error.value, "'just a string'");
    let error = ctx.execute("let = ;").await.unwrap().error.unwrap();
    assert_eq!(error.name, "SyntaxError");
}

#[tokio::test]
async fn top_level_await_and_timers_settle_before_the_execution_ends() {
    let ctx = js().await;
    let run = ok(
        &ctx,
        "setTimeout(() => console.log('timer'), 30)\nconst v = await new Promise(r => setTimeout(() => r('awaited'), 10))\nconsole.log(v)\nv",
    )
    .await;
    assert_eq!(run.stdout, "awaited\ntimer\n");
    assert_eq!(run.text(), Some("'awaited'"));
    let error = ctx
        .execute("await Promise.reject(new RangeError('nope'))")
        .await
        .unwrap()
        .error
        .unwrap();
    assert_eq!(error.name, "RangeError");
}

#[tokio::test]
async fn typescript_enums_interfaces_and_generics() {
    let ctx = lang(Language::TypeScript).await;
    let run = ok(
        &ctx,
        "enum Color { Red, Green, Blue }\ninterface Named { name: string }\n\
         function first<T extends Named>(items: T[]): T { return items[0] }\n\
         type Pair = [number, string]\nconst pair: Pair = [Color.Blue, 'b'] as Pair\n\
         const cfg = { retries: 3 } satisfies Record<string, number>\n\
         import type { Foo } from './types'\n[first([{ name: 'a' }]).name, pair, cfg.retries, Color[1]]",
    )
    .await;
    assert_eq!(run.text(), Some("[ 'a', [ 2, 'b' ], 3, 'Green' ]"));
}

#[tokio::test]
async fn typescript_errors_point_at_the_users_lines() {
    let ctx = lang(Language::TypeScript).await;
    let error = ctx
        .execute("let ok: number = 1;\nlet x: number = ;")
        .await
        .unwrap()
        .error
        .unwrap();
    assert_eq!(error.name, "SyntaxError");
    assert!(
        error
            .traceback
            .starts_with("<cell 1>:2:17\nlet x: number = ;\n"),
        "{}",
        error.traceback
    );
    let run = ctx
        .execute("interface A { n: number }\n\nfunction boom(a: A): number {\n  throw new Error('at line 4')\n}\nboom({ n: 1 })")
        .await
        .unwrap();
    let error = run.error.unwrap();
    assert!(
        error.traceback.contains("at boom (<cell 2>:4:"),
        "{}",
        error.traceback
    );
}

#[tokio::test]
async fn fs_round_trip_with_a_python_context_in_the_same_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let home = codebox::HomeDir::new(dir.path(), 1 << 30).unwrap();
    let py = engine()
        .create_context(ContextOptions::new().home(home.clone()))
        .await
        .unwrap();
    let js = engine()
        .create_context(
            ContextOptions::new()
                .home(home)
                .language(Language::JavaScript),
        )
        .await
        .unwrap();
    ok(&py, "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'sales': [3, 5]}).to_csv('sales.csv', index=False)").await;
    let run = ok(
        &js,
        "const fs = require('fs')\nconst rows = fs.readFileSync('sales.csv', 'utf8').trim().split('\\n').slice(1)\n\
         fs.mkdirSync('out/deep', { recursive: true })\nfs.writeFileSync('out/deep/total.txt', String(rows.map(r => +r.split(',')[1]).reduce((a, b) => a + b)));\n\
         [fs.existsSync('sales.csv'), fs.readdirSync('out'), fs.existsSync('/etc/passwd')]",
    )
    .await;
    assert_eq!(run.text(), Some("[ true, [ 'deep' ], false ]"));
    assert_eq!(
        ok(&py, "open('out/deep/total.txt').read()").await.text(),
        Some("'8'")
    );
    ok(&js, "fs.unlinkSync('out/deep/total.txt')").await;
    assert!(py.files().read("out/deep/total.txt").is_err());
}

#[tokio::test]
async fn runaway_code_is_stopped_and_memory_bombs_are_caught() {
    let limits = Limits {
        timeout: Duration::from_millis(500),
        memory_bytes: 128 << 20,
        ..Limits::default()
    };
    let ctx = engine()
        .create_context(
            ContextOptions::new()
                .language(Language::JavaScript)
                .limits(limits),
        )
        .await
        .unwrap();
    ok(&ctx, "let kept = 'yes'").await;
    let run = ok(&ctx, "let caught = []\ntry { new Array(1e9).fill(0) } catch (e) { caught.push(e.message) }\n\
        let s = 'x'\ntry { while (true) s += s } catch (e) { caught.push(e.message) }\ns = null\ncaught.length").await;
    assert_eq!(run.text(), Some("2"));
    assert_eq!(ok(&ctx, "kept").await.text(), Some("'yes'"));
    let run = ctx.execute("while (true) {}").await.unwrap();
    assert_eq!(run.error.unwrap().kind, ErrorKind::Timeout);
    assert!(run.context_restarted);
    assert_eq!(ok(&ctx, "1 + 1").await.text(), Some("2"));
    let run = ctx.execute("setInterval(() => {}, 10)").await.unwrap();
    assert_eq!(
        run.error.unwrap().kind,
        ErrorKind::Timeout,
        "a never-ending interval is a timeout"
    );
}

#[tokio::test]
async fn no_host_access_from_javascript() {
    let ctx = js().await;
    let run = ok(
        &ctx,
        "[typeof require('fs').readFileSync, fs.existsSync('/etc/passwd'), fs.existsSync('/')]",
    )
    .await;
    assert_eq!(run.text(), Some("[ 'function', false, false ]"));
    let error = ctx
        .execute("require('child_process')")
        .await
        .unwrap()
        .error
        .unwrap();
    assert!(error.value.contains("Cannot find module"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_javascript_contexts_run_concurrently() {
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            tokio::spawn(async move {
                let ctx = js().await;
                ok(&ctx, &format!("let n = {i}")).await;
                ok(
                    &ctx,
                    "Array.from({length: n}, (_, k) => k).reduce((a, b) => a + b, 0)",
                )
                .await
                .text()
                .unwrap()
                .to_string()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(
            task.await.unwrap(),
            (i * i.saturating_sub(1) / 2).to_string()
        );
    }
}

/// Contexts start from a snapshot of the initialised runtime; what must differ per context
/// is set up afresh: environment, working directory, random seed, performance.now's origin.
/// The same holds for an engine without snapshots.
#[tokio::test]
async fn each_context_gets_its_own_environment_directory_seed_and_clock() {
    // An engine of its own, to see that the snapshot is really used: a failed snapshot build
    // is reported through progress, and contexts then start the slow way.
    let said = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = said.clone();
    let snapshots = codebox::Engine::builder()
        .max_contexts(4)
        .default_template(None)
        .build_default_template(false)
        .progress(codebox::Progress::to(move |line| {
            log.lock().unwrap().push(line.to_string())
        }))
        .build()
        .unwrap();
    let plain = codebox::Engine::builder()
        .max_contexts(4)
        .templates(false)
        .progress(codebox::Progress::silent())
        .build()
        .unwrap();
    for engine in [snapshots, plain] {
        let mut draws = Vec::new();
        for i in 0..2 {
            let options = ContextOptions::new()
                .language(Language::JavaScript)
                .env("GREETING", format!("hello {i}"))
                .cwd("work");
            let ctx = engine.create_context(options).await.unwrap();
            let run = ok(
                &ctx,
                "[process.env.GREETING, (await import('std')).getenv('GREETING'), \
                 process.cwd(), performance.now() < 1000, performance.now() <= performance.now()]",
            )
            .await;
            let expected = format!("[ 'hello {i}', 'hello {i}', '/home/user/work', true, true ]");
            assert_eq!(run.text(), Some(expected.as_str()));
            let run = ok(&ctx, "Array.from({length: 4}, () => Math.random())").await;
            let draw = run.text().unwrap().to_string();
            let values: Vec<f64> = draw
                .trim_matches(|c| c == '[' || c == ']' || c == ' ')
                .split(',')
                .map(|v| v.trim().parse().unwrap())
                .collect();
            assert!(values.iter().all(|v| (0.0..1.0).contains(v)), "{draw}");
            draws.push(draw);
        }
        assert_ne!(draws[0], draws[1], "two contexts drew the same numbers");
        let said = said.lock().unwrap();
        assert!(
            !said.iter().any(|line| line.contains("without a snapshot")),
            "{said:?}"
        );
    }
}

/// A script runs as `node -e` would: no value is shown.
#[tokio::test]
async fn a_script_shows_no_value() {
    let cases = [
        (
            Language::JavaScript,
            "const n = 6\nconsole.log(n * 7)\nn + 1",
        ),
        (
            Language::TypeScript,
            "const n: number = 6\nconsole.log(n * 7)\nn + 1",
        ),
    ];
    for (language, code) in cases {
        let ctx = lang(language).await;
        let request = ExecuteRequest::new(code).mode(codebox::ExecutionMode::Script);
        let run = ctx.execute(request).await.unwrap();
        assert!(run.error.is_none(), "{:?}", run.error);
        assert_eq!(run.stdout, "42\n");
        assert!(run.results.is_empty(), "{language}: {:?}", run.results);
        assert_eq!(ok(&ctx, "n + 1").await.text(), Some("7"));
    }
}
