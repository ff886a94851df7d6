//! How an execution ended, as the caller sees it: the guest's report or the trap that stopped
//! it becomes an [`ExecutionError`] (or none), classified by trap code and by what the host's
//! limits recorded, never by matching messages.

use std::time::Duration;

use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use crate::execution::{ErrorKind, ExecutionError};
use crate::host::GUEST_ENOSPC;
use crate::runtimes::CellReport;

/// What the host's limits recorded during the execution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusals {
    /// A memory growth was refused.
    pub memory: bool,
    /// A write was refused by the disk quota.
    pub disk: bool,
}

/// The classified end of one execution.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub error: Option<ExecutionError>,
    pub exit_status: Option<i32>,
    /// The instance cannot run another cell: start a new one.
    pub restart: bool,
}

/// Classifies the result of running a cell. `ran` is `None` when the deadline passed while
/// the guest was blocked in a host call (the async timeout fired, not the epoch).
pub(crate) fn classify(
    ran: Option<&wasmtime::Result<CellReport>>,
    timeout: Duration,
    fuel: Option<u64>,
    refused: Refusals,
) -> Outcome {
    let report = match ran {
        None => return restart(timeout_error(timeout)),
        Some(Err(error)) => {
            return match error.downcast_ref::<I32Exit>() {
                Some(exit) => Outcome {
                    error: None,
                    exit_status: Some(exit.0),
                    restart: true,
                },
                None => restart(trap_error(error, timeout, fuel, refused.memory)),
            };
        }
        Some(Ok(report)) => report,
    };
    match report.status {
        0 => Outcome {
            error: guest_error(report, refused),
            exit_status: None,
            restart: false,
        },
        // sys.exit(n) / exit(): the low byte is the status; the session is over.
        status if status > 0 => Outcome {
            error: None,
            exit_status: Some(status & 0xFF),
            restart: true,
        },
        status => restart(crashed(format!(
            "the interpreter is unusable (status {status})"
        ))),
    }
}

fn restart(error: ExecutionError) -> Outcome {
    Outcome {
        error: Some(error),
        exit_status: None,
        restart: true,
    }
}

/// The guest's own error report, with limits recognised: a `MemoryError` after a refused
/// growth is the memory limit, an `ENOSPC` after a refused write is the disk quota.
fn guest_error(report: &CellReport, refused: Refusals) -> Option<ExecutionError> {
    if let Some(fault) = &report.fault {
        return Some(ExecutionError {
            kind: ErrorKind::InvalidResult,
            name: "InvalidResult".into(),
            value: fault.clone(),
            traceback: String::new(),
        });
    }
    let e = report.error.as_ref()?;
    let kind = if e.name == "MemoryError" && refused.memory {
        ErrorKind::MemoryLimit
    } else if e.errno == Some(GUEST_ENOSPC) && refused.disk {
        ErrorKind::DiskQuota
    } else {
        ErrorKind::Exception
    };
    Some(ExecutionError {
        kind,
        name: e.name.clone(),
        value: e.value.clone(),
        traceback: e.traceback.clone(),
    })
}

fn timeout_error(timeout: Duration) -> ExecutionError {
    ExecutionError {
        kind: ErrorKind::Timeout,
        name: "TimeoutError".into(),
        value: format!(
            "the execution was stopped after the {} time limit; the context was restarted and \
             its variables were lost (files are kept)",
            human_duration(timeout)
        ),
        traceback: String::new(),
    }
}

fn crashed(message: String) -> ExecutionError {
    ExecutionError {
        kind: ErrorKind::Crashed,
        name: "Crashed".into(),
        value: format!("{message}; the context was restarted and its variables were lost"),
        traceback: String::new(),
    }
}

/// Classifies a trap by its code (never by its message).
fn trap_error(
    error: &wasmtime::Error,
    timeout: Duration,
    fuel: Option<u64>,
    memory_refused: bool,
) -> ExecutionError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => timeout_error(timeout),
        Some(Trap::OutOfFuel) => ExecutionError {
            kind: ErrorKind::OutOfFuel,
            name: "OutOfFuel".into(),
            value: format!(
                "the execution used up its fuel budget of {}; the context was restarted and its \
                 variables were lost",
                fuel.unwrap_or(0)
            ),
            traceback: String::new(),
        },
        _ if memory_refused => ExecutionError {
            kind: ErrorKind::MemoryLimit,
            name: "MemoryLimit".into(),
            value: "the interpreter crashed after reaching the memory limit; the context was \
                    restarted and its variables were lost"
                .into(),
            traceback: String::new(),
        },
        Some(Trap::StackOverflow) => crashed("the interpreter overflowed its stack".into()),
        Some(trap) => crashed(format!("the interpreter crashed ({trap})")),
        None => crashed(format!("the interpreter failed: {}", first_line(error))),
    }
}

/// The error and its causes on one line, without the wasm backtrace.
fn first_line(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines().next().unwrap_or("").to_string()
}

fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{secs:.3} s").replace(".000", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::GuestError;

    const NONE: Refusals = Refusals {
        memory: false,
        disk: false,
    };

    fn report(status: i32, error: Option<(&str, Option<i64>)>) -> wasmtime::Result<CellReport> {
        Ok(CellReport {
            status,
            error: error.map(|(name, errno)| GuestError {
                name: name.into(),
                value: "v".into(),
                traceback: "tb".into(),
                errno,
            }),
            ..CellReport::default()
        })
    }

    fn kind(outcome: &Outcome) -> Option<ErrorKind> {
        outcome.error.as_ref().map(|e| e.kind)
    }

    #[test]
    fn guest_reports_are_classified_with_the_limits_that_refused() {
        let second = Duration::from_secs(1);
        let ok = classify(Some(&report(0, None)), second, None, NONE);
        assert!(ok.error.is_none() && !ok.restart);

        let raised = report(0, Some(("MemoryError", None)));
        assert_eq!(
            kind(&classify(Some(&raised), second, None, NONE)),
            Some(ErrorKind::Exception)
        );
        let refused = Refusals {
            memory: true,
            disk: false,
        };
        let limit = classify(Some(&raised), second, None, refused);
        assert_eq!(kind(&limit), Some(ErrorKind::MemoryLimit));
        assert!(
            !limit.restart,
            "a MemoryError leaves the interpreter usable"
        );

        let full = report(0, Some(("OSError", Some(GUEST_ENOSPC))));
        let refused = Refusals {
            memory: false,
            disk: true,
        };
        assert_eq!(
            kind(&classify(Some(&full), second, None, refused)),
            Some(ErrorKind::DiskQuota)
        );

        let exited = classify(Some(&report(256 + 3, None)), second, None, NONE);
        assert_eq!((exited.exit_status, exited.restart), (Some(3), true));
        let broken = classify(Some(&report(-1, None)), second, None, NONE);
        assert_eq!(
            (kind(&broken), broken.restart),
            (Some(ErrorKind::Crashed), true)
        );
    }

    #[test]
    fn traps_are_classified_by_code() {
        let timeout = Duration::from_millis(250);
        let stopped = classify(None, timeout, None, NONE);
        assert_eq!(kind(&stopped), Some(ErrorKind::Timeout));
        assert!(stopped.error.unwrap().value.contains("250 ms"));

        let trap = |t: Trap| -> wasmtime::Result<CellReport> { Err(t.into()) };
        let cases = [
            (Trap::Interrupt, NONE, ErrorKind::Timeout),
            (Trap::OutOfFuel, NONE, ErrorKind::OutOfFuel),
            (Trap::StackOverflow, NONE, ErrorKind::Crashed),
            (
                Trap::MemoryOutOfBounds,
                Refusals {
                    memory: true,
                    disk: false,
                },
                ErrorKind::MemoryLimit,
            ),
        ];
        for (t, refused, expected) in cases {
            let outcome = classify(Some(&trap(t)), timeout, Some(10), refused);
            assert_eq!(kind(&outcome), Some(expected), "{t:?}");
            assert!(outcome.restart);
        }
        let exit: wasmtime::Result<CellReport> = Err(I32Exit(2).into());
        let outcome = classify(Some(&exit), timeout, None, NONE);
        assert_eq!(
            (outcome.exit_status, outcome.error.is_none()),
            (Some(2), true)
        );
    }
}
