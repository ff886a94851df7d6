//! Progress messages for the slow one-time steps (download, compile).

use std::fmt;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where progress lines go. The default writes them to stderr, prefixed with `codebox:`.
#[derive(Clone)]
pub struct Progress(Option<ProgressSink>);

type ProgressSink = Arc<dyn Fn(&str) + Send + Sync>;

impl Progress {
    /// Progress lines on stderr.
    pub fn stderr() -> Progress {
        Progress(Some(Arc::new(|line| eprintln!("codebox: {line}"))))
    }

    /// No progress output.
    pub fn silent() -> Progress {
        Progress(None)
    }

    /// Progress lines delivered to `f`.
    pub fn to(f: impl Fn(&str) + Send + Sync + 'static) -> Progress {
        Progress(Some(Arc::new(f)))
    }

    pub(crate) fn step(&self, line: &str) {
        if let Some(f) = &self.0 {
            f(line);
        }
    }

    /// Runs `work`, reporting `what` at the start, every 10 s while it runs, and at the end.
    pub(crate) fn long_task<T>(&self, what: &str, work: impl FnOnce() -> T) -> T {
        let Some(sink) = self.0.clone() else {
            return work();
        };
        sink(&format!("{what} ..."));
        let start = Instant::now();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let label = what.to_string();
        let ticker_sink = sink.clone();
        let ticker = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                done_rx.recv_timeout(Duration::from_secs(10))
            {
                ticker_sink(&format!("{label}: {} s so far", start.elapsed().as_secs()));
            }
        });
        let out = work();
        drop(done_tx);
        let _ = ticker.join();
        sink(&format!(
            "{what}: done in {:.1} s",
            start.elapsed().as_secs_f64()
        ));
        out
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::stderr()
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(on)"
        } else {
            "Progress(silent)"
        })
    }
}
