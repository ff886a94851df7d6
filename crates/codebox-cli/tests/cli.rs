//! The `codebox` binary as a user runs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn codebox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(args)
        .output()
        .expect("run codebox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo_file(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn run_prints_output_and_result() {
    let out = codebox(&["run", "-c", "print('hi')\n6 * 7"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n42\n");
}

#[test]
fn run_reports_errors_with_a_traceback_and_exit_code() {
    let out = codebox(&["run", "-c", "1/0"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ZeroDivisionError: division by zero"),
        "{stderr}"
    );
    let out = codebox(&["run", "-c", "import sys; sys.exit(7)"]);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn the_shipped_example_finds_the_top_cities() {
    let out = codebox(&[
        "run",
        &repo_file("examples/top_cities.py"),
        "--file",
        &repo_file("examples/sales.csv"),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("400 sales rows, 12 cities"), "{stdout}");
    let top: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "city")
        .skip(1)
        .take(5)
        .collect();
    assert_eq!(top.len(), 5, "{stdout}");
    assert!(top[0].starts_with("Melbourne"), "{stdout}");
}

#[test]
fn uploads_go_to_the_named_destination_and_json_output_parses() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("in.txt");
    std::fs::write(&local, "payload").unwrap();
    let spec = format!("{}:data/x.txt", local.display());
    let out = codebox(&[
        "run",
        "--json",
        "--file",
        &spec,
        "-c",
        "open('/home/user/data/x.txt').read()",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["results"][0]["data"]["text/plain"], "'payload'");
    assert_eq!(json["executionCount"], 1);
}

#[test]
fn repl_keeps_state_between_inputs() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .arg("repl")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"x = 5\ndef double(v):\n    return v * 2\n\ndouble(x)\nprint('done')\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "10\ndone\n");
}

#[test]
fn user_mistakes_get_one_clear_sentence() {
    for (args, expect) in [
        (vec!["run"], "give code with -c CODE or a script file"),
        (
            vec!["run", "/no/such/script.py"],
            "cannot read /no/such/script.py",
        ),
        (
            vec!["run", "--file", "/no/such.csv", "-c", "1"],
            "cannot read /no/such.csv",
        ),
        (
            vec!["run", "--file", "/etc/hostname:../x", "-c", "1"],
            "invalid path",
        ),
        (
            vec!["run", "--timeout", "0", "-c", "1"],
            "--timeout must be a positive number",
        ),
        (
            vec!["run", "--env", "NOEQUALS", "-c", "1"],
            "is not KEY=VALUE",
        ),
    ] {
        let out = codebox(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn every_language_is_offered_and_picked_by_flag_or_extension() {
    let help = text(&codebox(&["run", "--help"]).stdout);
    let about = text(&codebox(&["--help"]).stdout);
    for name in ["python", "javascript", "typescript"] {
        assert!(help.contains(name), "{help}");
        assert!(about.contains(name), "{about}");
    }
    let out = codebox(&["run", "--lang", "cobol", "-c", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown language; use python, javascript, typescript"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    for (file, code, expect) in [
        (
            "a.mjs",
            "console.log(typeof process); 6 * 7",
            "object\n42\n",
        ),
        ("b.ts", "const n: number = 6; n * 7", "42\n"),
        ("c.py", "6 * 7", "42\n"),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, code).unwrap();
        let out = codebox(&["run", path.to_str().unwrap()]);
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expect, "{file}");
    }
    let out = codebox(&["run", "--lang", "JS", "-c", "[1, 2].length"]);
    assert_eq!(text(&out.stdout), "2\n", "{}", text(&out.stderr));
}

/// The installed runtime directory, as `codebox runtimes list` reports it.
fn installed_runtime_dir() -> PathBuf {
    // Make sure it is installed (a run installs on first use).
    assert!(codebox(&["run", "-c", "1"]).status.success());
    let out = codebox(&["runtimes", "list"]);
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("python"))
        .expect("python listed");
    assert!(line.ends_with("installed"), "{line}");
    PathBuf::from(line.split('\t').nth(2).unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_tampered_or_truncated_runtime_is_refused_with_a_fix() {
    let real = installed_runtime_dir();
    for damage in ["flip", "truncate"] {
        let root = tempfile::tempdir().unwrap();
        let copy = root.path().join(real.file_name().unwrap());
        std::fs::create_dir_all(&copy).unwrap();
        for module in ["python-snapshot.wasm", "python.wasm"] {
            std::os::unix::fs::symlink(real.join(module), copy.join(module)).unwrap();
        }
        copy_dir(&real.join("lib"), &copy.join("lib"));
        copy_dir(&real.join("mpl-data"), &copy.join("mpl-data"));
        let zip = copy.join("lib/python315.zip");
        let mut bytes = std::fs::read(&zip).unwrap();
        match damage {
            "flip" => bytes[1_000_000] ^= 0xff,
            _ => bytes.truncate(bytes.len() / 2),
        }
        std::fs::write(&zip, bytes).unwrap();

        let out = Command::new(env!("CARGO_BIN_EXE_codebox"))
            .args(["run", "-c", "1"])
            .env("CODEBOX_RUNTIMES_DIR", root.path())
            .env("CODEBOX_OFFLINE", "1")
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{damage}: {stderr}");
        assert!(stderr.contains("is corrupt"), "{damage}: {stderr}");
        assert!(
            stderr.contains("codebox runtimes install"),
            "{damage}: {stderr}"
        );
    }
}

/// One HTTP/1.1 exchange over a fresh connection; returns the whole answer.
fn http(addr: &str, request: &str) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_logs_json_lines_with_request_ids_and_stops_on_sigterm() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let data = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_codebox"))
        .args(["serve", "--addr", "127.0.0.1:0", "--shutdown-grace", "1"])
        .env("CODEBOX_API_KEYS", "cli-key")
        .env("CODEBOX_LOG_FORMAT", "json")
        .env("CODEBOX_DATA_DIR", data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    // The first start may install and compile the runtime.
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(900))
            .expect("the server starts");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };

    let health = http(
        &addr,
        "GET /health HTTP/1.1\r\nHost: t\r\nx-request-id: cli-trace-1\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("x-request-id: cli-trace-1"), "{health}");
    let created = http(
        &addr,
        "POST /sandboxes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer cli-key\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let body = created.split("\r\n\r\n").nth(1).unwrap();
    let sandbox: serde_json::Value = serde_json::from_str(body).unwrap();
    let refused = http(
        &addr,
        "GET /sandboxes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");

    let log: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let all = serde_json::to_string(&log).unwrap();
    let has = |test: &dyn Fn(&serde_json::Value) -> bool| log.iter().any(test);
    assert!(
        has(&|l| l["message"] == "response"
            && l["status"] == 200
            && l["span"]["request_id"] == "cli-trace-1"
            && l["span"]["path"] == "/health"),
        "{all}"
    );
    assert!(
        has(&|l| l["message"] == "sandbox created" && l["sandbox"] == sandbox["sandboxID"]),
        "{all}"
    );
    assert!(
        has(&|l| l["message"] == "response" && l["status"] == 401),
        "{all}"
    );
    assert!(
        has(&|l| l["message"] == "shutdown signal received"),
        "{all}"
    );
    assert!(!all.contains("cli-key"), "the API key leaked into the log");
}
