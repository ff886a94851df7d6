//! What one execution returns: output, results, errors, accounting.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything one execution produced, as a notebook would show it.
///
/// The guest's output stays attached whatever happened: an execution that raised, timed out
/// or ran out of fuel still carries the stdout and stderr written before it stopped.
///
/// Serialised in camelCase (`executionCount`, `durationMs` in milliseconds, `isMainResult`,
/// ...): the one JSON shape of an execution, on the HTTP API and in `codebox run --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// Everything written to stdout (up to the output limit).
    pub stdout: String,
    /// Everything written to stderr (up to the output limit).
    pub stderr: String,
    /// Results in the order they were produced. The value of the last expression, if it is
    /// not `None`, is the one with `is_main_result` set.
    pub results: Vec<DisplayData>,
    /// Why the execution did not finish normally, if it did not.
    pub error: Option<ExecutionError>,
    /// The 1-based number of this execution in its context (like `In [n]` in a notebook).
    /// It starts again at 1 after a restart.
    pub execution_count: u64,
    /// Wall-clock time the execution took.
    #[serde(with = "duration_ms", rename = "durationMs")]
    pub duration: Duration,
    /// Fuel burned, when the engine meters fuel.
    pub fuel_consumed: Option<u64>,
    /// Stdout went past the output limit and was cut.
    pub stdout_truncated: bool,
    /// Stderr went past the output limit and was cut.
    pub stderr_truncated: bool,
    /// The code called `exit()` or `sys.exit(status)`; the context's next execution starts
    /// from fresh state.
    pub exit_status: Option<i32>,
    /// The context was restarted after this execution (timeout, crash, exit): variables,
    /// imports and everything in memory were lost. Files in `/home/user` are kept.
    pub context_restarted: bool,
}

impl Execution {
    /// The text of the main result (the last expression's value), if there is one.
    pub fn text(&self) -> Option<&str> {
        self.results
            .iter()
            .find(|r| r.is_main_result)
            .and_then(DisplayData::text)
    }

    /// The exit code a process running this code would end with, as `python3 -c` does: the
    /// status given to `exit()`/`sys.exit(n)`, else 1 after an error, else 0.
    pub fn exit_code(&self) -> i32 {
        match (self.exit_status, &self.error) {
            (Some(status), _) => status,
            (None, Some(_)) => 1,
            (None, None) => 0,
        }
    }

    /// The execution finished without an error.
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// One result: a MIME bundle as in Jupyter's display protocol.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DisplayData {
    /// MIME type to representation, e.g. `text/plain` to the value's `repr()`.
    pub data: BTreeMap<String, serde_json::Value>,
    /// True for the value of the last expression, false for `display()`-style output.
    pub is_main_result: bool,
}

impl DisplayData {
    /// The `text/plain` representation.
    pub fn text(&self) -> Option<&str> {
        self.data.get("text/plain").and_then(|v| v.as_str())
    }
}

/// Why an execution ended badly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionError {
    /// What kind of failure this is.
    pub kind: ErrorKind,
    /// The exception's class name (`ZeroDivisionError`), or for a limit a descriptive name
    /// (`TimeoutError`, `OutOfFuel`, ...).
    pub name: String,
    /// The exception's message (`str(exc)`), or for a limit a sentence saying what happened.
    pub value: String,
    /// The full traceback as CPython prints it; empty when the guest was stopped from outside.
    pub traceback: String,
}

impl fmt::Display for ExecutionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.traceback.is_empty() {
            write!(f, "{}: {}", self.name, self.value)
        } else {
            f.write_str(self.traceback.trim_end())
        }
    }
}

/// The kinds of failure an execution can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The code raised an exception that it did not catch. The context goes on.
    Exception,
    /// The execution ran past its time limit. The context was restarted.
    Timeout,
    /// The execution burned its fuel budget. The context was restarted.
    OutOfFuel,
    /// The guest ran into the memory limit. As a `MemoryError` the context goes on; if the
    /// guest crashed on it, the context was restarted.
    MemoryLimit,
    /// A write failed because the disk quota was reached (an `OSError` in the guest).
    DiskQuota,
    /// The guest crashed (a WebAssembly trap such as a stack overflow). The context was
    /// restarted.
    Crashed,
    /// The guest sent a result the host refused: over the size cap or malformed. The
    /// results that were accepted are kept and the context goes on.
    InvalidResult,
}

impl ErrorKind {
    /// Every kind, in the order declared (extend it with the enum).
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Exception,
        ErrorKind::Timeout,
        ErrorKind::OutOfFuel,
        ErrorKind::MemoryLimit,
        ErrorKind::DiskQuota,
        ErrorKind::Crashed,
        ErrorKind::InvalidResult,
    ];

    /// The kind's name as it is serialised: `exception`, `timeout`, `out_of_fuel`, ...
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Exception => "exception",
            ErrorKind::Timeout => "timeout",
            ErrorKind::OutOfFuel => "out_of_fuel",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::DiskQuota => "disk_quota",
            ErrorKind::Crashed => "crashed",
            ErrorKind::InvalidResult => "invalid_result",
        }
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A duration as fractional milliseconds.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1e3).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_is_the_exit_status_else_1_after_an_error() {
        let error = ExecutionError {
            kind: ErrorKind::Exception,
            name: "ValueError".into(),
            value: String::new(),
            traceback: String::new(),
        };
        let failed = Execution {
            error: Some(error),
            ..Execution::default()
        };
        let exited = Execution {
            exit_status: Some(3),
            ..failed.clone()
        };
        assert_eq!(Execution::default().exit_code(), 0);
        assert_eq!(failed.exit_code(), 1);
        assert_eq!(exited.exit_code(), 3);
    }

    #[test]
    fn an_execution_has_one_camel_case_shape_that_round_trips() {
        let execution = Execution {
            stdout: "hi\n".into(),
            results: vec![DisplayData {
                data: [("text/plain".to_string(), "2".into())].into(),
                is_main_result: true,
            }],
            execution_count: 3,
            duration: Duration::from_micros(1500),
            context_restarted: true,
            ..Execution::default()
        };
        let json = serde_json::to_value(&execution).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
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
            ]
        );
        assert_eq!(json["durationMs"], 1.5);
        assert_eq!(json["results"][0]["isMainResult"], true);
        let back: Execution = serde_json::from_value(json).unwrap();
        assert_eq!(back.duration, execution.duration);
        assert_eq!(back.results, execution.results);
    }

    #[test]
    fn error_kind_names_are_their_serialised_names() {
        for kind in ErrorKind::ALL {
            let serialised = serde_json::to_value(kind).unwrap();
            assert_eq!(serialised, kind.name(), "{kind:?}");
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }
}
