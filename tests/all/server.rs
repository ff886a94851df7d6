//! The HTTP server over a real socket: native API, auth, bad input, streaming, files.

use std::time::{Duration, Instant};

use codebox_server::{Server, ServerConfig};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::engine;

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
}

pub async fn start(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let mut config = ServerConfig::new(vec!["key-a".into(), "key-b".into()]);
    configure(&mut config);
    let server = Server::bind(engine(), config, "127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", server.local_addr());
    tokio::spawn(server.run());
    TestServer {
        base,
        http: reqwest::Client::new(),
    }
}

impl TestServer {
    pub fn post(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
    }

    /// POSTs `body` as key-a and returns the JSON answer.
    pub async fn post_json(&self, path: &str, body: Value) -> Value {
        self.post(path, "key-a")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
    }

    /// GETs `path` as key-a and returns the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.get(path, "key-a").send().await.unwrap();
        response.text().await.unwrap()
    }

    /// Creates a sandbox for key-a and returns its description.
    pub async fn sandbox(&self, body: Value) -> Value {
        let response = self
            .post("/sandboxes", "key-a")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Creates a sandbox for key-a and returns its id.
    pub async fn sandbox_id(&self, body: Value) -> String {
        self.sandbox(body).await["sandboxID"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs code and returns the whole execution as JSON.
    pub async fn run(&self, id: &str, code: &str) -> Value {
        self.post(&format!("/sandboxes/{id}/execute"), "key-a")
            .header("Accept", "application/json")
            .json(&json!({"code": code}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("errors are JSON");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, body["error"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn keys_are_required_and_sandboxes_belong_to_their_key() {
    let server = start(|_| {}).await;
    let health = server
        .http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    for key in ["", "wrong", "key-a-but-longer"] {
        let response = server.post("/sandboxes", key).send().await.unwrap();
        assert_eq!(
            error_of(response).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into())
        );
    }
    let no_header = server
        .http
        .get(format!("{}/sandboxes", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status(), StatusCode::UNAUTHORIZED);

    let sandbox = server.sandbox(json!({"metadata": {"user": "u1"}})).await;
    let id = sandbox["sandboxID"].as_str().unwrap();
    assert_eq!(sandbox["metadata"]["user"], "u1");
    let other = server
        .get(&format!("/sandboxes/{id}"), "key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(other).await.0, StatusCode::NOT_FOUND);
    let listed: Value = server
        .get("/sandboxes", "key-b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]));
    let mine: Value = server
        .get("/sandboxes", "key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine[0]["sandboxID"], id);
}

#[tokio::test]
async fn executions_stream_ndjson_in_order_and_keep_state() {
    let server = start(|_| {}).await;
    let id = server.sandbox_id(json!({})).await;
    server.run(&id, "import time\nx = 2").await;
    let response = server
        .post(&format!("/sandboxes/{id}/execute"), "key-a")
        .json(&json!({"code": "for i in range(3):\n    print(i)\n    time.sleep(0.2)\nx * 21"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let started = Instant::now();
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut events: Vec<(Value, Duration)> = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk.unwrap());
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            events.push((serde_json::from_slice(&line).unwrap(), started.elapsed()));
        }
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|(e, _)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stdout", "stdout", "stdout", "result", "end"]);
    assert_eq!(events[0].0["text"], "0\n");
    assert!(events[0].0["timestamp"].as_str().unwrap().ends_with('Z'));
    // The first line arrived while the code was still running, not with the rest at the end.
    assert!(
        events[0].1 + Duration::from_millis(300) < events[3].1,
        "{events:?}"
    );
    assert_eq!(events[3].0["data"]["text/plain"], "42");
    assert_eq!(events[4].0["executionCount"], 2);
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_errors() {
    let server = start(|c| c.max_body_bytes = 64 * 1024).await;
    let id = server.sandbox_id(json!({})).await;
    let execute = format!("/sandboxes/{id}/execute");
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            server.post(&execute, "key-a").body("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            server.post(&execute, "key-a").json(&json!({"code": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            server
                .post(&execute, "key-a")
                .json(&json!({"code": "1", "extra": true})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            server
                .post(&execute, "key-a")
                .json(&json!({"code": "x".repeat(100_000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            server
                .post(&execute, "key-a")
                .json(&json!({"code": "1", "language": "cobol"})),
            StatusCode::BAD_REQUEST,
            "unknown_language",
        ),
        (
            server
                .post(&execute, "key-a")
                .json(&json!({"code": "1", "contextId": "ctx_nope"})),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            server
                .post(&execute, "key-a")
                .json(&json!({"code": "1", "contextId": "c", "language": "python"})),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            server
                .post(&execute, "key-a")
                .json(&json!({"code": "1", "timeout": -5})),
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
        ),
        (
            server
                .post("/sandboxes/sbx_nope/execute", "key-a")
                .json(&json!({"code": "1"})),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            server
                .post("/sandboxes", "key-a")
                .json(&json!({"timeout": 999_999})),
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
        ),
        (
            server
                .post("/sandboxes", "key-a")
                .json(&json!({"envVars": {"A=B": "x"}})),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            server.get(
                &format!("/sandboxes/{id}/files?path=../../etc/passwd"),
                "key-a",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            server.get(&format!("/sandboxes/{id}/files?path=/etc/passwd"), "key-a"),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            server.get(&format!("/sandboxes/{id}/files?path=missing.txt"), "key-a"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            server.get(&format!("/sandboxes/{id}/files"), "key-a"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            server
                .post(&format!("/sandboxes/{id}/processes"), "key-a")
                .json(&json!({"cmd": "rm", "args": ["-rf", "/"]})),
            StatusCode::BAD_REQUEST,
            "unknown_command",
        ),
        (
            server.get("/no/such/route", "key-a"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (i, (request, status, code)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert_eq!(
            error_of(response).await,
            (status, code.to_string()),
            "case {i}"
        );
    }
    // The sandbox still works after all that.
    assert_eq!(
        server.run(&id, "1 + 1").await["results"][0]["data"]["text/plain"],
        "2"
    );
}

#[tokio::test]
async fn files_upload_download_list_move_remove() {
    let server = start(|c| c.limits.disk_bytes = 1 << 20).await;
    let id = server.sandbox_id(json!({})).await;
    let files = format!("/sandboxes/{id}/files");
    let put = |path: &str, body: Vec<u8>| {
        server
            .http
            .put(format!("{}{files}?path={path}", server.base))
            .bearer_auth("key-a")
            .body(body)
    };
    assert_eq!(
        put("data/a.csv", b"x,y\n1,2\n".to_vec())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"multi".to_vec()).file_name("/home/user/m.txt"),
    );
    let response = server
        .post(&files, "key-a")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let downloaded = server
        .get(&format!("{files}?path=/home/user/m.txt"), "key-a")
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.bytes().await.unwrap().as_ref(), b"multi");
    let run = server
        .run(
            &id,
            "import pandas as pd\nint(pd.read_csv('data/a.csv').y.sum())",
        )
        .await;
    assert_eq!(run["results"][0]["data"]["text/plain"], "2");

    // Over the quota: refused with 507, and the old file is intact.
    let response = put("data/a.csv", vec![b'z'; 2 << 20]).send().await.unwrap();
    assert_eq!(error_of(response).await.0, StatusCode::INSUFFICIENT_STORAGE);
    let kept = server
        .get(&format!("{files}?path=data/a.csv"), "key-a")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.bytes().await.unwrap().as_ref(), b"x,y\n1,2\n");

    let moved = server
        .post(&format!("{files}/move"), "key-a")
        .json(&json!({"from": "data/a.csv", "to": "b.csv"}));
    assert_eq!(moved.send().await.unwrap().status(), StatusCode::NO_CONTENT);
    let made = server
        .post(&format!("{files}/mkdir"), "key-a")
        .json(&json!({"path": "empty/dir"}));
    assert_eq!(made.send().await.unwrap().status(), StatusCode::NO_CONTENT);
    let listing: Value = server
        .get(&format!("{files}/list"), "key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.csv", "data", "empty", "m.txt"]);
    let removed = server
        .http
        .delete(format!("{}{files}?path=empty", server.base))
        .bearer_auth("key-a");
    assert_eq!(
        removed.send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn contexts_and_processes() {
    let server = start(|_| {}).await;
    let id = server
        .sandbox_id(json!({"envVars": {"MODE": "test"}}))
        .await;
    let ctx = server
        .post_json(
            &format!("/sandboxes/{id}/contexts"),
            json!({"language": "Python", "cwd": "/home/user/w"}),
        )
        .await;
    let cid = ctx["id"].as_str().unwrap();
    assert_eq!(ctx["cwd"], "/home/user/w");
    let run = |code: &'static str| {
        server
            .post(&format!("/sandboxes/{id}/execute"), "key-a")
            .header("Accept", "application/json")
            .json(&json!({"code": code, "contextId": cid, "envVars": {"ONCE": "1"}}))
    };
    let out: Value = run("import os\n(os.getcwd(), os.environ['MODE'], os.environ['ONCE'])")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        out["results"][0]["data"]["text/plain"],
        "('/home/user/w', 'test', '1')"
    );
    let restarted = server
        .post(&format!("/sandboxes/{id}/contexts/{cid}/restart"), "key-a")
        .send()
        .await
        .unwrap();
    assert_eq!(restarted.status(), StatusCode::OK);
    let out: Value = run("os").send().await.unwrap().json().await.unwrap();
    assert_eq!(out["error"]["name"], "NameError");

    let process: Value = server
        .post(&format!("/sandboxes/{id}/processes"), "key-a")
        .json(&json!({"cmd": "python3", "args": ["-c", "import sys\nprint('hi')\nsys.exit(4)"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        process,
        json!({"stdout": "hi\n", "stderr": "", "exitCode": 4})
    );
    let node: Value = server
        .post(&format!("/sandboxes/{id}/processes"), "key-a")
        .json(&json!({"cmd": "node", "args": ["-e", "console.log(6 * 7)"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(node, json!({"stdout": "42\n", "stderr": "", "exitCode": 0}));
    let ts: Value = server
        .post(&format!("/sandboxes/{id}/execute"), "key-a")
        .header("Accept", "application/json")
        .json(&json!({"code": "const n: number = 2; n * 21", "language": "ts"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ts["results"][0]["data"]["text/plain"], "42", "{ts}");
    let contexts: Value = server
        .get(&format!("/sandboxes/{id}/contexts"), "key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let languages: Vec<&str> = contexts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["language"].as_str().unwrap())
        .collect();
    assert_eq!(languages, ["python", "typescript"]);
    let deleted = server
        .http
        .delete(format!("{}/sandboxes/{id}/contexts/{cid}", server.base))
        .bearer_auth("key-a");
    assert_eq!(
        deleted.send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_execution_does_not_block_health_or_other_sandboxes_and_a_disconnect_cancels_it()
{
    let server = start(|_| {}).await;
    let busy = server.sandbox_id(json!({})).await;
    let other = server.sandbox_id(json!({})).await;
    server.run(&busy, "state = 'kept?'").await;
    let runaway = server
        .post(&format!("/sandboxes/{busy}/execute"), "key-a")
        .json(&json!({"code": "while True: pass"}))
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    let health = server
        .http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        server.run(&other, "6 * 7").await["results"][0]["data"]["text/plain"],
        "42"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Hang up: the execution is cancelled and the context starts afresh.
    drop(runaway);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = server.run(&busy, "state").await;
    assert_eq!(run["error"]["name"], "NameError", "{run}");
    let metrics = server.get_text("/metrics").await;
    let cancelled = "codebox_executions_total{outcome=\"cancelled\"}";
    assert_eq!(crate::operations::sample(&metrics, cancelled), 1.0);
}

#[tokio::test]
async fn the_memory_budget_bounds_live_contexts() {
    // Room for exactly two contexts of 64 MiB.
    let server = start(|c| {
        c.limits.memory_bytes = 64 << 20;
        c.memory_budget_bytes = 150 << 20;
    })
    .await;
    let id = server.sandbox_id(json!({})).await;
    let create = || {
        server
            .post(&format!("/sandboxes/{id}/contexts"), "key-a")
            .json(&json!({}))
    };
    let first: Value = create().send().await.unwrap().json().await.unwrap();
    assert_eq!(create().send().await.unwrap().status(), StatusCode::CREATED);
    let third = create().send().await.unwrap();
    assert_eq!(
        error_of(third).await,
        (StatusCode::TOO_MANY_REQUESTS, "memory_budget".into())
    );
    // Deleting a context gives its share back.
    let cid = first["id"].as_str().unwrap();
    let deleted = server
        .http
        .delete(format!("{}/sandboxes/{id}/contexts/{cid}", server.base))
        .bearer_auth("key-a");
    assert_eq!(
        deleted.send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(create().send().await.unwrap().status(), StatusCode::CREATED);
}

#[tokio::test]
async fn sandboxes_expire_and_caps_answer_429() {
    let server = start(|c| c.max_sandboxes = 2).await;
    let short = server.sandbox_id(json!({"timeout": 1})).await;
    server.sandbox(json!({})).await;
    let third = server
        .post("/sandboxes", "key-a")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(third).await,
        (StatusCode::TOO_MANY_REQUESTS, "too_many_sandboxes".into())
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let gone = server
        .get(&format!("/sandboxes/{short}"), "key-a")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    // Its slot is free again; lifetimes can be extended.
    let id = server.sandbox_id(json!({"timeout": 1})).await;
    let extended = server
        .post(&format!("/sandboxes/{id}/timeout"), "key-a")
        .json(&json!({"timeout": 60}));
    assert_eq!(extended.send().await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alive = server
        .get(&format!("/sandboxes/{id}"), "key-a")
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), StatusCode::OK);
    let killed = server
        .http
        .delete(format!("{}/sandboxes/{id}", server.base))
        .bearer_auth("key-a");
    assert_eq!(
        killed.send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let gone = server
        .get(&format!("/sandboxes/{id}"), "key-a")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}
