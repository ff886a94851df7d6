//! Counters behind `/metrics`, in Prometheus' text format: executions by outcome, their
//! duration, HTTP answers by status, and gauges read when scraped (live sandboxes and contexts,
//! resident memory). Lock-free: every execution and request bumps a few atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use codebox::{ErrorKind, Execution};

/// How an execution ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// It ended with an error of this kind: the label is the kind's name.
    Error(ErrorKind),
    /// The client went away or the sandbox was killed while it ran.
    Cancelled,
    /// The engine refused to run it.
    Failed,
}

/// One counter per outcome: `ok`, each error kind, `cancelled`, `failed`.
const OUTCOMES: usize = ErrorKind::ALL.len() + 3;

impl Outcome {
    pub fn of(result: &Result<Execution, codebox::Error>) -> Outcome {
        match result {
            Err(_) => Outcome::Failed,
            Ok(execution) => execution
                .error
                .as_ref()
                .map_or(Outcome::Ok, |e| Outcome::Error(e.kind)),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(kind) => kind.name(),
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
        }
    }

    /// Every outcome, in counter order.
    fn all() -> impl Iterator<Item = Outcome> {
        std::iter::once(Outcome::Ok)
            .chain(ErrorKind::ALL.map(Outcome::Error))
            .chain([Outcome::Cancelled, Outcome::Failed])
    }

    fn index(self) -> usize {
        let kinds = ErrorKind::ALL.len();
        match self {
            Outcome::Ok => 0,
            // A kind missing from `ALL` would be a bug in the engine; count it as failed.
            Outcome::Error(kind) => ErrorKind::ALL
                .iter()
                .position(|k| *k == kind)
                .map_or(kinds + 2, |i| i + 1),
            Outcome::Cancelled => kinds + 1,
            Outcome::Failed => kinds + 2,
        }
    }
}

/// Upper bounds of the duration histogram's buckets, in seconds.
const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// HTTP status classes counted by `codebox_http_responses_total`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    executions: [AtomicU64; OUTCOMES],
    /// Cumulative counts per bucket are computed when scraped; these are per bucket, the last
    /// one for durations past every bound.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_micros: AtomicU64,
    responses: [AtomicU64; STATUS_CLASSES.len()],
}

/// The gauges, read by the caller when scraped.
pub(crate) struct Gauges {
    pub sandboxes: usize,
    pub contexts: usize,
    pub resident_bytes: Option<u64>,
}

impl Metrics {
    pub fn record_execution(&self, outcome: Outcome, duration: Duration) {
        self.executions[outcome.index()].fetch_add(1, Relaxed);
        let seconds = duration.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.duration_micros.fetch_add(micros, Relaxed);
    }

    pub fn record_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES.len()) - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }

    /// The text a Prometheus scrape reads.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "codebox_executions_total",
            "counter",
            "Executions that ended, by outcome.",
        );
        for outcome in Outcome::all() {
            let n = self.executions[outcome.index()].load(Relaxed);
            let label = outcome.label();
            let _ = writeln!(out, "codebox_executions_total{{outcome=\"{label}\"}} {n}");
        }

        header(
            &mut out,
            "codebox_execution_duration_seconds",
            "histogram",
            "Wall-clock time of executions, from the request to the last event.",
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.duration_buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "codebox_execution_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.duration_buckets[BUCKETS.len()].load(Relaxed);
        let sum = self.duration_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "codebox_execution_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             codebox_execution_duration_seconds_sum {sum}\n\
             codebox_execution_duration_seconds_count {cumulative}"
        );

        header(
            &mut out,
            "codebox_http_responses_total",
            "counter",
            "HTTP responses, by status class.",
        );
        for (i, class) in STATUS_CLASSES.iter().enumerate() {
            let n = self.responses[i].load(Relaxed);
            let _ = writeln!(
                out,
                "codebox_http_responses_total{{status=\"{class}\"}} {n}"
            );
        }

        gauge(
            &mut out,
            "codebox_sandboxes",
            "Live sandboxes.",
            gauges.sandboxes as u64,
        );
        gauge(
            &mut out,
            "codebox_contexts",
            "Live execution contexts.",
            gauges.contexts as u64,
        );
        if let Some(bytes) = gauges.resident_bytes {
            gauge(
                &mut out,
                "codebox_resident_memory_bytes",
                "Resident memory of the server process.",
                bytes,
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// The process's resident set size, from /proc (Linux); `None` elsewhere.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_cumulative_buckets_and_gauges() {
        let metrics = Metrics::default();
        metrics.record_execution(Outcome::Ok, Duration::from_micros(300));
        metrics.record_execution(Outcome::Ok, Duration::from_millis(20));
        metrics.record_execution(Outcome::Error(ErrorKind::Timeout), Duration::from_secs(400));
        metrics.record_response(200);
        metrics.record_response(404);
        metrics.record_response(429);
        let text = metrics.render(&Gauges {
            sandboxes: 3,
            contexts: 4,
            resident_bytes: Some(1024),
        });
        for line in [
            "codebox_executions_total{outcome=\"ok\"} 2",
            "codebox_executions_total{outcome=\"timeout\"} 1",
            "codebox_executions_total{outcome=\"cancelled\"} 0",
            "codebox_execution_duration_seconds_bucket{le=\"0.0005\"} 1",
            "codebox_execution_duration_seconds_bucket{le=\"0.01\"} 1",
            "codebox_execution_duration_seconds_bucket{le=\"0.025\"} 2",
            "codebox_execution_duration_seconds_bucket{le=\"300\"} 2",
            "codebox_execution_duration_seconds_bucket{le=\"+Inf\"} 3",
            "codebox_execution_duration_seconds_count 3",
            "codebox_http_responses_total{status=\"2xx\"} 1",
            "codebox_http_responses_total{status=\"4xx\"} 2",
            "codebox_sandboxes 3",
            "codebox_contexts 4",
            "codebox_resident_memory_bytes 1024",
            "# TYPE codebox_execution_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("codebox_execution_duration_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 400.0203).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn every_outcome_has_its_own_counter_and_label() {
        let outcomes: Vec<Outcome> = Outcome::all().collect();
        assert_eq!(outcomes.len(), OUTCOMES);
        for (i, outcome) in outcomes.iter().enumerate() {
            assert_eq!(outcome.index(), i, "{outcome:?}");
        }
        let mut labels: Vec<_> = outcomes.iter().map(|o| o.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), OUTCOMES);
    }

    #[test]
    fn an_engine_error_is_a_failed_execution() {
        assert_eq!(
            Outcome::of(&Err(codebox::Error::TooManyContexts { limit: 1 })),
            Outcome::Failed
        );
        let text = Metrics::default().render(&Gauges {
            sandboxes: 0,
            contexts: 0,
            resident_bytes: None,
        });
        assert!(text.contains("codebox_executions_total{outcome=\"failed\"} 0\n"));
        assert!(!text.contains("resident"));
    }
}
