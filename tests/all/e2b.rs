//! The unmodified E2B Python SDK against a real server. The test installs the pinned SDK into
//! a virtual environment it creates (cached between runs) and runs tests/e2b/client_test.py.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::server::start;

const SDK: &str = "e2b-code-interpreter==2.11.5";

fn venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("e2b-venv");
    let python = dir.join("bin").join("python");
    let marker = dir.join(".installed");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == SDK) {
        return python;
    }
    let system_python = std::env::var("CODEBOX_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&system_python)
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .expect("python3 -m venv");
    assert!(status.success(), "creating the virtual environment failed");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SDK,
        ])
        .status()
        .expect("pip install");
    assert!(status.success(), "installing {SDK} failed");
    std::fs::write(&marker, SDK).unwrap();
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_e2b_python_sdk_works_unchanged() {
    let python = tokio::task::spawn_blocking(venv).await.unwrap();
    let server = start(|_| {}).await;
    let sandbox = server.sandbox(json!({})).await;
    let url = format!("{}{}", server.base, sandbox["e2bPath"].as_str().unwrap());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/client_test.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("E2B_DEBUG", "true")
        .env("E2B_SANDBOX_URL", &url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "the E2B client checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("8 passed, 0 failed"), "{stdout}");

    // A wrong token reaches nothing.
    let wrong = server
        .http
        .get(format!("{}/e2b/tok_wrong/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), reqwest::StatusCode::NOT_FOUND);
}
