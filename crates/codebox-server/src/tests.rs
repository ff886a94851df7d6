//! The router driven directly (`tower::ServiceExt::oneshot`, no socket): auth on every route,
//! the sandbox lifecycle, bad input, metrics and the request log. Streaming, files, the E2B
//! SDK and concurrency are tested over a real socket in the workspace's `tests/`.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use codebox::Engine;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::http::App;
use crate::{ServerConfig, router};

/// One engine for the whole test binary; contexts boot the plain runtime (no templates, so
/// no background builds).
fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::builder().templates(false).build().expect("engine"))
        .clone()
}

fn app() -> Router {
    let config = ServerConfig::new(vec!["key-a".into(), "key-b".into()]);
    router(Arc::new(App::new(engine(), config)))
}

struct Answer {
    status: StatusCode,
    request_id: String,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    /// The `error` code of a JSON error answer, which must also have a message.
    fn error(&self) -> (StatusCode, String) {
        let body = self.json();
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        (self.status, body["error"].as_str().unwrap().to_string())
    }
}

async fn call(app: &Router, method: Method, path: &str, key: &str, body: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if !key.is_empty() {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Answer {
        status: response.status(),
        request_id,
        body: axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap(),
    }
}

#[tokio::test]
async fn health_is_open_and_every_other_route_needs_a_key() {
    let app = app();
    let health = call(&app, Method::GET, "/health", "", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(
        health.request_id.starts_with("req_"),
        "{}",
        health.request_id
    );

    // A client's own request id comes back.
    let request = Request::get("/health")
        .header("x-request-id", "trace-42")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");

    let routes = [
        (Method::GET, "/sandboxes"),
        (Method::POST, "/sandboxes"),
        (Method::GET, "/sandboxes/sbx_x"),
        (Method::DELETE, "/sandboxes/sbx_x"),
        (Method::POST, "/sandboxes/sbx_x/execute"),
        (Method::GET, "/sandboxes/sbx_x/files?path=a"),
        (Method::GET, "/sandboxes/sbx_x/contexts"),
        (Method::POST, "/sandboxes/sbx_x/processes"),
        (Method::GET, "/metrics"),
    ];
    for (method, path) in routes {
        for key in ["", "wrong", "key-a-x"] {
            let answer = call(&app, method.clone(), path, key, Some("{}")).await;
            assert_eq!(
                answer.error(),
                (StatusCode::UNAUTHORIZED, "unauthorized".into()),
                "{method} {path} with {key:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_sandbox_lifecycle_and_bad_input_through_the_router() {
    let app = app();
    let created = call(
        &app,
        Method::POST,
        "/sandboxes",
        "key-a",
        Some(r#"{"timeout": 60, "envVars": {"A": "1"}, "metadata": {"user": "u1"}}"#),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let sandbox = created.json();
    let id = sandbox["sandboxID"].as_str().unwrap();
    assert!(id.starts_with("sbx_") && id.len() == 36, "{id}");
    assert_eq!(sandbox["metadata"]["user"], "u1");
    let path = format!("/sandboxes/{id}");

    let got = call(&app, Method::GET, &path, "key-a", None).await.json();
    assert_eq!(got["sandboxID"], id);
    let listed = call(&app, Method::GET, "/sandboxes", "key-a", None).await;
    assert_eq!(listed.json().as_array().unwrap().len(), 1);
    let others = call(&app, Method::GET, "/sandboxes", "key-b", None).await;
    assert_eq!(others.json(), json!([]));
    assert_eq!(
        call(&app, Method::GET, &path, "key-b", None).await.error(),
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    let timeout = format!("{path}/timeout");
    let extended = call(
        &app,
        Method::POST,
        &timeout,
        "key-a",
        Some(r#"{"timeout": 3000}"#),
    )
    .await;
    assert_eq!(extended.status, StatusCode::OK, "{}", extended.json());
    assert!(extended.json()["endAt"].as_str() > sandbox["endAt"].as_str());

    let bad = [
        (Method::POST, "/sandboxes", "{", "invalid_json"),
        (
            Method::POST,
            "/sandboxes",
            r#"{"timeout": "10"}"#,
            "invalid_json",
        ),
        (
            Method::POST,
            "/sandboxes",
            r#"{"timeuot": 10}"#,
            "invalid_json",
        ),
        (Method::POST, "/sandboxes", r#"[1, 2]"#, "invalid_json"),
        (
            Method::POST,
            "/sandboxes",
            r#"{"timeout": 0}"#,
            "invalid_timeout",
        ),
        (
            Method::POST,
            "/sandboxes",
            r#"{"timeout": 99999}"#,
            "invalid_timeout",
        ),
        (
            Method::POST,
            "/sandboxes",
            r#"{"envVars": {"A=B": "x"}}"#,
            "invalid_input",
        ),
        (Method::POST, &timeout, r#"{"timeout": -1}"#, "invalid_json"),
        (
            Method::POST,
            &timeout,
            r#"{"timeout": 4000}"#,
            "invalid_timeout",
        ),
        (
            Method::POST,
            &format!("{path}/contexts"),
            r#"{"language": "cobol"}"#,
            "unknown_language",
        ),
    ];
    for (method, route, body, code) in bad {
        let answer = call(&app, method.clone(), route, "key-a", Some(body)).await;
        assert_eq!(
            answer.error(),
            (StatusCode::BAD_REQUEST, code.to_string()),
            "{method} {route} {body}"
        );
    }
    let oversized = format!(r#"{{"code": "{}"}}"#, "x".repeat(17 << 20));
    let answer = call(
        &app,
        Method::POST,
        &format!("{path}/execute"),
        "key-a",
        Some(&oversized),
    )
    .await;
    assert_eq!(
        answer.error(),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
    );
    assert_eq!(
        call(&app, Method::GET, "/no/such/route", "key-a", None)
            .await
            .error(),
        (StatusCode::NOT_FOUND, "not_found".into())
    );

    let killed = call(&app, Method::DELETE, &path, "key-a", None).await;
    assert_eq!(killed.status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&app, Method::GET, &path, "key-a", None).await.status,
        StatusCode::NOT_FOUND
    );
}

/// Log lines of one thread, as JSON objects.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the capture of the current thread, if it has one.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with_borrow(|capture| {
            if let Some(Captured(buffer)) = capture {
                buffer.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures what this thread logs from now on. The subscriber is global (a scoped one
    /// can miss events when other threads register the same call sites at the same time).
    fn start() -> Captured {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_writer(|| ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        });
        let captured = Captured::default();
        CAPTURE.set(Some(captured.clone()));
        captured
    }

    fn lines(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn metrics_count_executions_and_the_log_names_ids_never_code() {
    let captured = Captured::start();
    // A current-thread runtime keeps every task on this thread, so in this capture.
    let id = {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let app = app();
                let created = call(&app, Method::POST, "/sandboxes", "key-a", Some("{}")).await;
                let id = created.json()["sandboxID"].as_str().unwrap().to_string();
                let execute = format!("/sandboxes/{id}/execute");
                for code in ["print('SECRET-MARKER'); 6 * 7", "'SECRET-MARKER' + 1"] {
                    let body = json!({"code": code}).to_string();
                    let run = call(&app, Method::POST, &execute, "key-a", Some(&body)).await;
                    assert_eq!(run.status, StatusCode::OK, "{}", run.json());
                }
                call(&app, Method::GET, "/nowhere", "key-a", None).await;

                let metrics = call(&app, Method::GET, "/metrics", "key-a", None).await;
                assert_eq!(metrics.status, StatusCode::OK);
                let text = String::from_utf8(metrics.body.to_vec()).unwrap();
                for line in [
                    "codebox_executions_total{outcome=\"ok\"} 1",
                    "codebox_executions_total{outcome=\"exception\"} 1",
                    "codebox_execution_duration_seconds_count 2",
                    "codebox_http_responses_total{status=\"2xx\"} 3",
                    "codebox_http_responses_total{status=\"4xx\"} 1",
                    "codebox_sandboxes 1",
                ] {
                    assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
                }
                assert!(text.contains("\ncodebox_resident_memory_bytes "), "{text}");
                id
            })
    };

    let lines = captured.lines();
    let all = serde_json::to_string(&lines).unwrap();
    assert!(!all.contains("SECRET-MARKER"), "code leaked into the log");
    let executions: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "execution")
        .collect();
    assert_eq!(executions.len(), 2, "{all}");
    for (line, outcome) in executions.iter().zip(["ok", "exception"]) {
        assert_eq!(line["outcome"], outcome, "{line}");
        assert_eq!(line["sandbox"], id.as_str(), "{line}");
        assert!(line["context"].as_str().unwrap().starts_with("ctx_"));
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
        let request_id = line["span"]["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}"));
        assert!(request_id.starts_with("req_"), "{line}");
    }
    let responses: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "response")
        .collect();
    assert_eq!(responses.len(), 5, "{all}");
    assert!(responses.iter().any(|l| l["status"] == 404
        && l["span"]["path"] == "/nowhere"
        && l["span"]["method"] == "GET"));
}

/// The sorted keys of a JSON object.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

/// POSTs `body` without asking for JSON and returns the streamed lines.
async fn stream(app: &Router, path: &str, key: &str, body: Value) -> Vec<Value> {
    let mut request = Request::post(path).header("content-type", "application/json");
    if !key.is_empty() {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn executions_keep_their_wire_shapes_in_both_apis() {
    let app = app();
    let created = call(&app, Method::POST, "/sandboxes", "key-a", Some("{}")).await;
    let sandbox = created.json();
    let id = sandbox["sandboxID"].as_str().unwrap();
    let execute = format!("/sandboxes/{id}/execute");

    // The native API: one object with `Accept: application/json`...
    let body = json!({"code": "print('out')\n6 * 7"}).to_string();
    let whole = call(&app, Method::POST, &execute, "key-a", Some(&body))
        .await
        .json();
    assert_eq!(
        keys(&whole),
        [
            "contextId",
            "contextRestarted",
            "durationMs",
            "error",
            "executionCount",
            "exitStatus",
            "fuelConsumed",
            "results",
            "stderr",
            "stderrTruncated",
            "stdout",
            "stdoutTruncated"
        ],
        "{whole}"
    );
    assert!(whole["contextId"].as_str().unwrap().starts_with("ctx_"));
    assert_eq!(whole["stdout"], "out\n");
    assert_eq!(whole["error"], Value::Null);
    assert_eq!(keys(&whole["results"][0]), ["data", "isMainResult"]);
    assert_eq!(whole["results"][0]["data"]["text/plain"], "42");
    assert_eq!(whole["results"][0]["isMainResult"], true);
    let ms = whole["durationMs"].as_f64().unwrap();
    assert!(ms > 0.0 && ms < 600_000.0, "{whole}");
    let body = json!({"code": "1 / 0"}).to_string();
    let failed = call(&app, Method::POST, &execute, "key-a", Some(&body))
        .await
        .json();
    assert_eq!(
        keys(&failed["error"]),
        ["kind", "name", "traceback", "value"]
    );
    assert_eq!(failed["error"]["kind"], "exception");
    assert_eq!(failed["executionCount"], 2);

    // ... or NDJSON events.
    let events = stream(
        &app,
        &execute,
        "key-a",
        json!({"code": "print('a')\n6 * 7"}),
    )
    .await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["stdout", "result", "end"], "{events:?}");
    assert_eq!(keys(&events[0]), ["text", "timestamp", "type"]);
    assert_eq!(keys(&events[1]), ["data", "isMainResult", "type"]);
    // `end` carries the accounting under the names of the whole answer, with its values.
    let end = &events[2];
    assert_eq!(
        keys(end),
        [
            "contextRestarted",
            "durationMs",
            "executionCount",
            "exitStatus",
            "fuelConsumed",
            "stderrTruncated",
            "stdoutTruncated",
            "type"
        ]
    );
    assert_eq!(end["executionCount"], 3);
    let events = stream(&app, &execute, "key-a", json!({"code": "1 / 0"})).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["error", "end"], "{events:?}");
    assert_eq!(
        keys(&events[0]),
        ["kind", "name", "traceback", "type", "value"]
    );
    assert_eq!(events[0]["name"], "ZeroDivisionError");

    // E2B: its own event names, snake_case, results spread over E2B's fields.
    let e2b = format!("{}/execute", sandbox["e2bPath"].as_str().unwrap());
    let code = json!({"code": "print('b')\n6 * 7", "context_id": null, "language": null, "env_vars": null});
    let events = stream(&app, &e2b, "", code).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "stdout",
            "number_of_executions",
            "result",
            "end_of_execution"
        ],
        "{events:?}"
    );
    assert_eq!(keys(&events[0]), ["text", "timestamp", "type"]);
    assert_eq!(events[1]["execution_count"], 5);
    assert_eq!(
        keys(&events[2]),
        ["extra", "is_main_result", "text", "type"]
    );
    assert_eq!(events[2]["text"], "42");
    assert_eq!(keys(&events[3]), ["type"]);
    let events = stream(&app, &e2b, "", json!({"code": "1 / 0"})).await;
    assert_eq!(keys(&events[1]), ["name", "traceback", "type", "value"]);
    assert_eq!(events[1]["value"], "division by zero");
    // A refused execution ends the stream... before it starts: a 4xx.
    let refused = call(
        &app,
        Method::POST,
        &e2b,
        "",
        Some(r#"{"code": "1", "language": "cobol"}"#),
    )
    .await;
    assert_eq!(
        refused.error(),
        (StatusCode::BAD_REQUEST, "unknown_language".into())
    );
}

#[tokio::test]
async fn processes_run_as_scripts_in_their_own_context() {
    let app = app();
    let created = call(&app, Method::POST, "/sandboxes", "key-a", Some("{}")).await;
    let id = created.json()["sandboxID"].as_str().unwrap().to_string();
    let processes = format!("/sandboxes/{id}/processes");
    let run = |body: Value| {
        let app = app.clone();
        let processes = processes.clone();
        async move {
            call(
                &app,
                Method::POST,
                &processes,
                "key-a",
                Some(&body.to_string()),
            )
            .await
        }
    };

    // No echoed value, and a traceback names `<string>` as `python3 -c` does.
    let quiet = run(json!({"cmd": "python3", "args": ["-c", "x = 6\nx * 7"]})).await;
    assert_eq!(
        quiet.json(),
        json!({"stdout": "", "stderr": "", "exitCode": 0})
    );
    let failed = run(json!({"cmd": "/usr/bin/python", "args": ["-c", "print('a')\n1 / 0"]}))
        .await
        .json();
    assert_eq!(failed["stdout"], "a\n");
    assert_eq!(failed["exitCode"], 1);
    let stderr = failed["stderr"].as_str().unwrap();
    assert!(stderr.contains("File \"<string>\", line 2"), "{stderr}");
    assert!(stderr.contains("ZeroDivisionError"), "{stderr}");
    let node = run(json!({"cmd": "node", "args": ["-e", "console.log('n'); 6 * 7"]})).await;
    assert_eq!(
        node.json(),
        json!({"stdout": "n\n", "stderr": "", "exitCode": 0})
    );

    // A script path runs the file from /home/user.
    let write = "open('s.py', 'w').write('import sys\\nprint(\"from the file\")\\nsys.exit(3)')";
    let written = run(json!({"cmd": "python3", "args": ["-c", write]})).await;
    assert_eq!(written.json()["exitCode"], 0, "{}", written.json());
    let script = run(json!({"cmd": "python3", "args": ["s.py"]}))
        .await
        .json();
    assert_eq!(
        script,
        json!({"stdout": "from the file\n", "stderr": "", "exitCode": 3})
    );

    for (body, status, code) in [
        (
            json!({"cmd": "bash", "args": ["-c", "ls"]}),
            StatusCode::BAD_REQUEST,
            "unknown_command",
        ),
        (
            json!({"cmd": "python3", "args": ["-e", "1"]}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            json!({"cmd": "node", "args": []}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            json!({"cmd": "node", "args": ["missing.js"]}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"cmd": "python3", "args": ["-c", "1"], "timeout": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_timeout",
        ),
    ] {
        let answer = run(body.clone()).await;
        assert_eq!(answer.error(), (status, code.to_string()), "{body}");
    }
    let unknown = run(json!({"cmd": "bash"})).await.json();
    let message = unknown["message"].as_str().unwrap();
    assert!(
        message.contains("python or python3 with -c CODE") && message.contains("node with -e CODE"),
        "{message}"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_engines_languages_and_commands() {
    let document = call(&app(), Method::GET, "/openapi.json", "", None)
        .await
        .json();
    let schemas = &document["components"]["schemas"];
    // Literal lists, so a language the document drops (or the engine adds) shows here.
    assert_eq!(
        schemas["Context"]["properties"]["language"]["enum"],
        json!(["python", "javascript", "typescript"])
    );
    assert_eq!(
        schemas["Process"]["properties"]["cmd"]["enum"],
        json!(["python", "python3", "node"])
    );
    let description = document["info"]["description"].as_str().unwrap();
    assert!(
        description.contains("python, javascript, typescript"),
        "{description}"
    );
    // Every field of the whole execution answer is described.
    let execution = codebox::Execution::default();
    let answer = serde_json::to_value(crate::native::wire::Execution {
        context_id: "ctx_1",
        execution: &execution,
    })
    .unwrap();
    for field in keys(&answer) {
        assert!(
            schemas["Execution"]["properties"].get(field).is_some(),
            "{field} is not in the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn a_process_stops_when_its_sandbox_is_killed() {
    let app = app();
    let created = call(&app, Method::POST, "/sandboxes", "key-a", Some("{}")).await;
    let id = created.json()["sandboxID"].as_str().unwrap().to_string();
    let body =
        json!({"cmd": "python3", "args": ["-c", "while True: pass"], "timeout": 60}).to_string();
    let processes = format!("/sandboxes/{id}/processes");
    let running = call(&app, Method::POST, &processes, "key-a", Some(&body));
    let kill = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let path = format!("/sandboxes/{id}");
        call(&app, Method::DELETE, &path, "key-a", None).await
    };
    let (answer, killed) = tokio::join!(running, kill);
    assert_eq!(killed.status, StatusCode::NO_CONTENT);
    assert_eq!(answer.status, StatusCode::GONE, "{}", answer.json());
    assert_eq!(answer.json()["error"], "sandbox_killed");
}
