use std::sync::{Arc, Mutex};

use codebox::{ErrorKind, ExecuteRequest, Stream};

use crate::common::{context, ok};

#[tokio::test]
async fn state_persists_between_executions() {
    let ctx = context().await;
    ok(&ctx, "x = 40\nimport math").await;
    ok(&ctx, "def f(): return x + 2").await;
    let run = ok(&ctx, "f(), math.pi > 3").await;
    assert_eq!(run.text(), Some("(42, True)"));
    assert_eq!(run.execution_count, 3);
}

#[tokio::test]
async fn last_expression_is_a_result_not_stdout() {
    let ctx = context().await;
    let run = ok(&ctx, "print('hello')\n'a' * 3").await;
    assert_eq!(run.stdout, "hello\n");
    assert_eq!(run.text(), Some("'aaa'"));
    assert_eq!(run.results.len(), 1);
    assert!(run.results[0].is_main_result);
    // None and statements give no result; `_` holds the last value.
    assert!(ok(&ctx, "None").await.results.is_empty());
    assert!(ok(&ctx, "y = 1").await.results.is_empty());
    assert_eq!(ok(&ctx, "_").await.text(), Some("'aaa'"));
}

/// One-line cells skip the AST: statements are compiled as such, expressions as
/// expressions, and anything else still goes through the general path.
#[tokio::test]
async fn one_line_cells_show_a_value_only_for_an_expression() {
    let ctx = context().await;
    let shown = [
        ("x = 5", None),
        ("x == 5", Some("True")),
        ("x >= 5", Some("True")),
        ("x += 1", None),
        ("x <<= 1", None),
        ("x", Some("12")),
        ("d = {'k': [1]}", None),
        ("d['k'][0] = 7", None),
        ("d", Some("{'k': [7]}")),
        ("a, b = 1, 2", None),
        ("a = 3; a + b", Some("5")),
        ("import_ = 1", None),
        ("import math", None),
        ("math.floor(2.5)", Some("2")),
        ("n: int = 4", None),
        ("if n: n", None),
        ("del n", None),
        ("f = lambda v=1: v", None),
        ("f()", Some("1")),
    ];
    for (code, text) in shown {
        let run = ok(&ctx, code).await;
        assert_eq!(run.text(), text, "{code}");
    }
    let run = ctx.execute("x = = 1").await.unwrap();
    assert_eq!(run.error.unwrap().name, "SyntaxError");
}

#[tokio::test]
async fn zero_division_error_has_name_value_and_traceback() {
    let ctx = context().await;
    let run = ctx
        .execute("print('before')\ndef f():\n    return 1 / 0\nf()")
        .await
        .unwrap();
    assert_eq!(run.stdout, "before\n", "output before the error is kept");
    let error = run.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Exception);
    assert_eq!(error.name, "ZeroDivisionError");
    assert_eq!(error.value, "division by zero");
    assert!(
        error
            .traceback
            .starts_with("Traceback (most recent call last):\n"),
        "{}",
        error.traceback
    );
    assert!(
        error
            .traceback
            .contains("File \"<cell 1>\", line 4, in <module>"),
        "{}",
        error.traceback
    );
    assert!(
        error.traceback.contains("line 3, in f\n    return 1 / 0"),
        "{}",
        error.traceback
    );
    assert!(
        error
            .traceback
            .ends_with("ZeroDivisionError: division by zero\n")
    );
    assert!(
        !error.traceback.contains("codebox-kernel"),
        "kernel frames leak: {}",
        error.traceback
    );
    assert!(!run.context_restarted);
    // The context is still usable.
    assert_eq!(ok(&ctx, "f.__name__").await.text(), Some("'f'"));
}

#[tokio::test]
async fn name_error_and_syntax_error() {
    let ctx = context().await;
    let error = ctx
        .execute("undefined_thing + 1")
        .await
        .unwrap()
        .error
        .unwrap();
    assert_eq!(error.name, "NameError");
    assert_eq!(error.value, "name 'undefined_thing' is not defined");

    let error = ctx
        .execute("x = 1\nif x >:\n  pass")
        .await
        .unwrap()
        .error
        .unwrap();
    assert_eq!(error.name, "SyntaxError");
    assert!(
        error.traceback.contains("File \"<cell 2>\", line 2"),
        "{}",
        error.traceback
    );
    assert!(
        error
            .traceback
            .trim_end()
            .ends_with("SyntaxError: invalid syntax"),
        "{}",
        error.traceback
    );
    // Nothing of a cell that does not compile has run.
    assert_eq!(
        ctx.execute("x").await.unwrap().error.unwrap().name,
        "NameError"
    );
}

#[tokio::test]
async fn output_streams_live_in_order() {
    let ctx = context().await;
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let sink = chunks.clone();
    let request = ExecuteRequest::new(
        "import sys\nfor i in range(3):\n    print('out', i)\n    print('err', i, file=sys.stderr)",
    )
    .on_output(move |stream, text| sink.lock().unwrap().push((stream, text.to_string())));
    let run = ctx.execute(request).await.unwrap();
    let chunks = chunks.lock().unwrap().clone();
    let expected: Vec<(Stream, String)> = (0..3)
        .flat_map(|i| {
            [
                (Stream::Stdout, format!("out {i}\n")),
                (Stream::Stderr, format!("err {i}\n")),
            ]
        })
        .collect();
    assert_eq!(chunks, expected);
    assert_eq!(run.stdout, "out 0\nout 1\nout 2\n");
    assert_eq!(run.stderr, "err 0\nerr 1\nerr 2\n");
}

#[tokio::test]
async fn pandas_groupby_on_an_uploaded_csv() {
    let ctx = context().await;
    let mut csv = String::from("city,sales\n");
    for i in 0..300 {
        csv.push_str(&format!(
            "{},{}\n",
            ["Oslo", "Lima", "Pune", "Kyiv"][i % 4],
            i
        ));
    }
    ctx.files().write("data/sales.csv", csv.as_bytes()).unwrap();
    let run = ok(
        &ctx,
        "import pandas as pd\ndf = pd.read_csv('data/sales.csv')\n\
         top = df.groupby('city').sales.sum().sort_values(ascending=False)\n\
         print(top.to_dict())\nlen(df)",
    )
    .await;
    // Sums of i for i ≡ k (mod 4), i < 300.
    let sum = |k: usize| (0..300).filter(|i| i % 4 == k).sum::<usize>();
    assert_eq!(
        run.stdout.trim(),
        format!(
            "{{'Kyiv': {}, 'Pune': {}, 'Lima': {}, 'Oslo': {}}}",
            sum(3),
            sum(2),
            sum(1),
            sum(0)
        )
    );
    assert_eq!(run.text(), Some("300"));
}

#[tokio::test]
async fn files_written_by_the_guest_are_visible_to_the_host() {
    let ctx = context().await;
    ok(
        &ctx,
        "import os\nos.makedirs('out', exist_ok=True)\nopen('out/r.txt','w').write('done')",
    )
    .await;
    assert_eq!(ctx.files().read("/home/user/out/r.txt").unwrap(), b"done");
    let names: Vec<_> = ctx
        .files()
        .list("out")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["r.txt"]);
}

#[tokio::test]
async fn exit_ends_the_session_with_its_status_and_the_next_run_starts_fresh() {
    let ctx = context().await;
    ok(&ctx, "kept = 1").await;
    let run = ctx
        .execute("import sys\nprint('bye')\nsys.exit(3)")
        .await
        .unwrap();
    assert_eq!(run.exit_status, Some(3));
    assert_eq!(run.stdout, "bye\n");
    assert!(run.context_restarted);
    let run = ctx.execute("kept").await.unwrap();
    assert_eq!(
        run.error.unwrap().name,
        "NameError",
        "state is gone after exit"
    );
    assert_eq!(ctx.execute("exit()").await.unwrap().exit_status, Some(0));
}

#[tokio::test]
async fn deep_recursion_is_a_recursion_error() {
    let ctx = context().await;
    let run = ctx
        .execute("def f(n): return f(n + 1)\nf(0)")
        .await
        .unwrap();
    let error = run.error.unwrap();
    assert_eq!(error.name, "RecursionError");
    assert!(!run.context_restarted);
    assert_eq!(ok(&ctx, "2 + 2").await.text(), Some("4"));
}

#[tokio::test]
async fn unicode_and_odd_code_are_handled() {
    let ctx = context().await;
    let run = ok(&ctx, "s = 'héllo wörld ✓ 日本'\nprint(s)\nlen(s)").await;
    assert_eq!(run.stdout, "héllo wörld ✓ 日本\n");
    assert_eq!(run.text(), Some("16"));
    // Empty code, comments only, NUL bytes in the source.
    assert!(ok(&ctx, "").await.results.is_empty());
    assert!(ok(&ctx, "# nothing").await.results.is_empty());
    let run = ctx.execute("x = 1\0").await.unwrap();
    assert_eq!(run.error.unwrap().name, "SyntaxError");
    // A repr that raises does not lose the execution.
    let run = ok(
        &ctx,
        "class B:\n    def __repr__(self): raise ValueError('no')\nB()",
    )
    .await;
    assert!(
        run.text().unwrap().contains("repr failed"),
        "{:?}",
        run.text()
    );
}

#[tokio::test]
async fn per_execution_environment_and_working_directory() {
    let options = codebox::ContextOptions::new()
        .cwd("/home/user/project")
        .env("KEEP", "1");
    let ctx = crate::common::engine()
        .create_context(options)
        .await
        .unwrap();
    assert_eq!(
        ok(&ctx, "import os\nos.getcwd()").await.text(),
        Some("'/home/user/project'")
    );
    let run = ctx
        .execute(ExecuteRequest::new("os.environ['TOKEN'], os.environ['KEEP']").env("TOKEN", "t1"))
        .await
        .unwrap();
    assert_eq!(run.text(), Some("('t1', '1')"));
    assert_eq!(
        ok(&ctx, "os.environ.get('TOKEN')").await.text(),
        None,
        "gone after the run"
    );
    let run = ctx
        .execute(ExecuteRequest::new("os.environ['KEEP']").env("KEEP", "override"))
        .await
        .unwrap();
    assert_eq!(run.text(), Some("'override'"));
    assert_eq!(
        ok(&ctx, "os.environ['KEEP']").await.text(),
        Some("'1'"),
        "restored"
    );
    let bad = codebox::ContextOptions::new().cwd("/etc");
    assert!(crate::common::engine().create_context(bad).await.is_err());
}

/// A script runs as `python3 -c` would: state is shared with the context, but no value is
/// shown and tracebacks name the file `<string>`.
#[tokio::test]
async fn a_script_shows_no_value_and_its_traceback_names_string() {
    let ctx = context().await;
    let script = |code: &str| ExecuteRequest::new(code).mode(codebox::ExecutionMode::Script);
    let run = ctx
        .execute(script("x = 6\nprint(x * 7)\nx + 1"))
        .await
        .unwrap();
    assert_eq!(run.stdout, "42\n");
    assert!(run.results.is_empty(), "{:?}", run.results);
    assert!(run.error.is_none());
    // The same code as a cell shows its value.
    assert_eq!(ok(&ctx, "x + 1").await.text(), Some("7"));

    let failed = ctx.execute(script("y = 1\n1 / 0")).await.unwrap();
    let error = failed.error.expect("the script raised");
    assert_eq!(error.name, "ZeroDivisionError");
    assert!(
        error.traceback.contains("File \"<string>\", line 2"),
        "{}",
        error.traceback
    );
    assert!(!error.traceback.contains("<cell"), "{}", error.traceback);
}
