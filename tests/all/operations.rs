//! Running the server: many sandboxes at once, metrics, graceful shutdown.

use std::time::{Duration, Instant};

use codebox_server::{Server, ServerConfig};
use serde_json::{Value, json};

use crate::common::engine;
use crate::server::{TestServer, start};

/// The value of one sample line of a Prometheus text answer.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn twenty_sandboxes_execute_in_parallel_and_metrics_count_them() {
    // Each context reserves its memory limit from the server's budget (3/4 of the RAM).
    let server = start(|c| c.limits.memory_bytes = 256 << 20).await;
    let ids: Vec<String> = futures_util::future::join_all(
        (0..20).map(|_| server.sandbox_id(json!({"template": "stdlib"}))),
    )
    .await;
    let runs = ids.iter().enumerate().map(|(i, id)| {
        let server = &server;
        async move {
            server.run(id, &format!("x = {i}")).await;
            // Each sandbox's own state and files.
            server
                .run(id, "open('mine.txt', 'w').write(str(x))\nx * 2")
                .await
        }
    });
    let started = Instant::now();
    let results = futures_util::future::join_all(runs).await;
    let elapsed = started.elapsed();
    for (i, run) in results.iter().enumerate() {
        assert_eq!(run["error"], Value::Null, "{run}");
        assert_eq!(run["results"][0]["data"]["text/plain"], (i * 2).to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        let file = server
            .get_text(&format!("/sandboxes/{id}/files?path=mine.txt"))
            .await;
        assert_eq!(file, i.to_string());
    }

    let metrics = server.get_text("/metrics").await;
    assert_eq!(sample(&metrics, "codebox_sandboxes"), 20.0);
    assert_eq!(
        sample(&metrics, "codebox_executions_total{outcome=\"ok\"}"),
        40.0
    );
    // Each sandbox ran its two executions one after the other within `elapsed`, so their
    // recorded durations add up to at most 20 × `elapsed`.
    let recorded = sample(&metrics, "codebox_execution_duration_seconds_sum");
    assert!(
        recorded > 0.0 && recorded <= 20.0 * elapsed.as_secs_f64(),
        "{recorded} s recorded in {elapsed:?}"
    );
    assert!(sample(&metrics, "codebox_contexts") >= 20.0);
    assert!(sample(&metrics, "codebox_resident_memory_bytes") > 1e6);
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_then_ends_the_rest() {
    let mut config = ServerConfig::new(vec!["key-a".into()]);
    config.shutdown_grace = Duration::from_secs(2);
    let server = Server::bind(engine(), config, "127.0.0.1:0").await.unwrap();
    let client = TestServer {
        base: format!("http://{}", server.local_addr()),
        http: reqwest::Client::new(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let sandbox = || client.sandbox_id(json!({"template": "stdlib"}));
    let (quick, slow) = (sandbox().await, sandbox().await);
    let execute = |id: &str, code: &str| {
        client
            .post(&format!("/sandboxes/{id}/execute"), "key-a")
            .json(&json!({"code": code}))
            .send()
    };
    // Contexts first, so the executions below are running when the signal comes.
    for id in [&quick, &slow] {
        execute(id, "import time")
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let finishing = tokio::spawn(
        execute(&quick, "time.sleep(0.8)\n'finished'")
            .await
            .unwrap()
            .text(),
    );
    let endless = tokio::spawn(execute(&slow, "time.sleep(600)").await.unwrap().text());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    stop.send(()).unwrap();
    let finished = finishing.await.unwrap().unwrap();
    assert!(finished.contains("'finished'"), "{finished}");
    // The endless one is stopped when the grace period is over, and says why.
    let cut = endless.await.unwrap().unwrap();
    let events: Vec<Value> = cut
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{cut}");
    assert_eq!(events[0]["name"], "sandbox_killed", "{cut}");
    assert_eq!(events[1]["type"], "end", "{cut}");
    serving.await.unwrap().unwrap();
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "shutdown took {took:?}"
    );
    // Nothing listens any more.
    let health = reqwest::Client::new()
        .get(format!("{}/health", client.base))
        .send()
        .await;
    assert!(health.is_err(), "{health:?}");
}

#[tokio::test]
async fn a_silent_execution_sends_keepalive_lines() {
    let server = start(|_| {}).await;
    let id = server.sandbox_id(json!({"template": "stdlib"})).await;
    let streamed = server
        .post(&format!("/sandboxes/{id}/execute"), "key-a")
        .json(&json!({"code": "import time\ntime.sleep(5.5)\n'awake'"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let kinds: Vec<String> = streamed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(
        kinds,
        [r#""keepalive""#, r#""result""#, r#""end""#],
        "{streamed}"
    );
}
