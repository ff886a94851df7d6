use std::time::{Duration, Instant};

use codebox::Limits;

use crate::common::{context, context_with, engine, ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_contexts_execute_concurrently() {
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        tasks.push(tokio::spawn(async move {
            let ctx = context().await;
            ok(&ctx, &format!("n = {i}")).await;
            let run = ok(&ctx, "sum(range(n * 1000))").await;
            (i, run.text().unwrap().to_string())
        }));
    }
    for task in tasks {
        let (i, text) = task.await.unwrap();
        assert_eq!(text, (0..i * 1000).sum::<u64>().to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_context_does_not_starve_others() {
    let busy = context_with(Limits {
        timeout: Duration::from_secs(5),
        ..Limits::default()
    })
    .await;
    let quick = context().await;
    let spin = tokio::spawn(async move { busy.execute("while True: pass").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for _ in 0..3 {
        ok(&quick, "1 + 1").await;
    }
    // The quick context finished while the busy one was still spinning.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(!spin.is_finished());
    spin.await.unwrap();
}

#[tokio::test]
async fn executions_on_one_context_queue_in_call_order() {
    let ctx = context().await;
    ok(&ctx, "log = []").await;
    // join! polls the futures in order, so they queue on the context in that order.
    let (a, b, c, d) = tokio::join!(
        ctx.execute("import time\ntime.sleep(0.05)\nlog.append(0)"),
        ctx.execute("log.append(1)"),
        ctx.execute("log.append(2)"),
        ctx.execute("log.append(3)"),
    );
    for run in [a, b, c, d] {
        assert!(run.unwrap().error.is_none());
    }
    assert_eq!(ok(&ctx, "log").await.text(), Some("[0, 1, 2, 3]"));
}

#[tokio::test]
async fn the_context_limit_is_enforced_and_slots_come_back() {
    let engine = engine();
    let before = engine.live_contexts();
    let ctx = context().await;
    assert!(engine.live_contexts() > before || engine.live_contexts() >= 1);
    drop(ctx);
    // A small engine of its own shows the limit.
    let small = codebox::Engine::builder()
        .max_contexts(1)
        .default_template(None)
        .build_default_template(false)
        .progress(codebox::Progress::silent())
        .build()
        .unwrap();
    let one = small.create_context(Default::default()).await.unwrap();
    let err = small.create_context(Default::default()).await.unwrap_err();
    assert!(
        matches!(err, codebox::Error::TooManyContexts { limit: 1 }),
        "{err}"
    );
    drop(one);
    small.create_context(Default::default()).await.unwrap();
}
