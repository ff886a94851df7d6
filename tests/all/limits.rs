use std::time::{Duration, Instant};

use codebox::{ContextOptions, ErrorKind, ExecuteRequest, Limits};

use crate::common::{context, context_with, metered_engine, ok};

fn limits() -> Limits {
    Limits::default()
}

#[tokio::test]
async fn a_busy_loop_times_out_and_the_context_restarts() {
    let ctx = context_with(Limits {
        timeout: Duration::from_millis(500),
        ..limits()
    })
    .await;
    ok(&ctx, "lost = 1").await;
    let started = Instant::now();
    let run = ctx
        .execute("print('spinning')\nwhile True: pass")
        .await
        .unwrap();
    // Generous bound: this checks that the loop is stopped at all, not how fast.
    assert!(started.elapsed() < Duration::from_secs(10));
    let error = run.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(run.context_restarted);
    assert_eq!(
        run.stdout, "spinning\n",
        "output before the timeout is kept"
    );
    assert!(error.value.contains("restarted"), "{}", error.value);
    assert_eq!(
        ctx.execute("lost").await.unwrap().error.unwrap().name,
        "NameError"
    );
    assert_eq!(ok(&ctx, "1 + 1").await.text(), Some("2"));
}

#[tokio::test]
async fn sleeping_past_the_timeout_is_stopped() {
    let ctx = context().await;
    let started = Instant::now();
    let run = ctx
        .execute(
            ExecuteRequest::new("import time\ntime.sleep(100)").timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.error.unwrap().kind, ErrorKind::Timeout);
    assert_eq!(ok(&ctx, "'alive'").await.text(), Some("'alive'"));
}

#[tokio::test]
async fn memory_cap_gives_memory_error_and_the_context_lives_on() {
    let ctx = context_with(Limits {
        memory_bytes: 128 << 20,
        ..limits()
    })
    .await;
    ok(&ctx, "kept = 'yes'").await;
    let run = ctx
        .execute("big = bytearray(512 * 1024 * 1024)")
        .await
        .unwrap();
    let error = run.error.unwrap();
    assert_eq!(error.name, "MemoryError");
    assert_eq!(error.kind, ErrorKind::MemoryLimit);
    assert!(!run.context_restarted);
    assert_eq!(ok(&ctx, "kept").await.text(), Some("'yes'"));
    // Growing a list until the cap is hit is caught too.
    let run = ctx
        .execute("xs = []\nwhile True: xs.append('x' * 10**6)")
        .await
        .unwrap();
    assert_eq!(run.error.unwrap().kind, ErrorKind::MemoryLimit);
    ok(&ctx, "del xs").await;
    assert_eq!(ok(&ctx, "kept").await.text(), Some("'yes'"));
}

#[tokio::test]
async fn an_output_flood_is_truncated_and_flagged() {
    let ctx = context_with(Limits {
        output_bytes: 10_000,
        ..limits()
    })
    .await;
    let run = ok(&ctx, "for i in range(100000): print(i)\n'finished'").await;
    assert!(run.stdout_truncated);
    assert!(!run.stderr_truncated);
    assert!(run.stdout.len() <= 10_000);
    assert!(run.stdout.starts_with("0\n1\n2\n"));
    assert_eq!(
        run.text(),
        Some("'finished'"),
        "the code keeps running past the cap"
    );
}

#[tokio::test]
async fn fuel_is_reported_and_exhaustion_stops_the_execution() {
    let engine = metered_engine();
    let options = ContextOptions::new().limits(Limits {
        fuel: Some(300_000_000),
        ..limits()
    });
    let ctx = engine.create_context(options).await.unwrap();
    let run = ok(&ctx, "sum(range(100))").await;
    let small = run.fuel_consumed.expect("metered");
    assert!(small > 0);
    let run = ok(&ctx, "sum(range(10000))").await;
    assert!(
        run.fuel_consumed.unwrap() > small,
        "more work burns more fuel"
    );
    let run = ctx.execute("while True: pass").await.unwrap();
    assert_eq!(run.error.unwrap().kind, ErrorKind::OutOfFuel);
    assert!(run.context_restarted);
    assert_eq!(ok(&ctx, "3 * 3").await.text(), Some("9"));
}

#[tokio::test]
async fn fuel_limit_needs_a_metered_engine() {
    let options = ContextOptions::new().limits(Limits {
        fuel: Some(1000),
        ..limits()
    });
    let err = crate::common::engine()
        .create_context(options)
        .await
        .unwrap_err();
    assert!(matches!(err, codebox::Error::InvalidInput(_)), "{err}");
}

#[tokio::test]
async fn disk_quota_stops_guest_writes_and_host_uploads() {
    let ctx = context_with(Limits {
        disk_bytes: 2 << 20,
        ..limits()
    })
    .await;
    ok(&ctx, "open('small.bin', 'wb').write(b'x' * 1000)").await;
    let run = ctx
        .execute(
            "with open('big.bin', 'wb') as f:\n    for _ in range(10): f.write(b'y' * 1024 * 1024)",
        )
        .await
        .unwrap();
    let error = run.error.unwrap();
    assert_eq!(error.kind, ErrorKind::DiskQuota, "{error:?}");
    assert_eq!(error.name, "OSError");
    assert!(ctx.files().usage() <= 2 << 20);
    // The host API refuses uploads over the quota and keeps the old file.
    let err = ctx
        .files()
        .write("small.bin", &vec![0; 3 << 20])
        .unwrap_err();
    assert!(matches!(err, codebox::Error::DiskQuota { .. }), "{err}");
    assert_eq!(ctx.files().read("small.bin").unwrap().len(), 1000);
    // /tmp counts too.
    let run = ctx
        .execute("open('/tmp/t.bin','wb').write(b'z' * (3 * 1024 * 1024))")
        .await
        .unwrap();
    assert_eq!(run.error.unwrap().kind, ErrorKind::DiskQuota);
}

#[tokio::test]
async fn invalid_limits_are_refused() {
    let engine = crate::common::engine();
    for limits in [
        Limits {
            timeout: Duration::ZERO,
            ..limits()
        },
        Limits {
            memory_bytes: 1,
            ..limits()
        },
        Limits {
            memory_bytes: 8 << 30,
            ..limits()
        },
    ] {
        let err = engine
            .create_context(ContextOptions::new().limits(limits))
            .await
            .unwrap_err();
        assert!(matches!(err, codebox::Error::InvalidInput(_)), "{err}");
    }
    let ctx = context().await;
    let err = ctx
        .execute("x".repeat(codebox::MAX_CODE_BYTES + 1))
        .await
        .unwrap_err();
    assert!(matches!(err, codebox::Error::InvalidInput(_)));
}

#[tokio::test]
async fn a_cancelled_execution_leaves_a_working_context() {
    let ctx = context().await;
    ok(&ctx, "before = 1").await;
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), ctx.execute("while True: pass")).await;
    assert!(cancelled.is_err(), "the caller gave up");
    let run = ok(&ctx, "2 * 21").await;
    assert_eq!(run.text(), Some("42"));
    assert_eq!(run.execution_count, 1, "the context started afresh");
}
