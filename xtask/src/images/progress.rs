//! Progress lines on stderr: one when a step starts, a heartbeat while it
//! runs, one with the elapsed seconds when it ends.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a running step says it is still running.
const HEARTBEAT: Duration = Duration::from_secs(20);

/// A running step; say [`Step::done`] when it ends (dropping it without
/// `done` stops the heartbeat silently, e.g. on error).
pub struct Step {
    label: String,
    start: Instant,
    stop: Option<Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl Step {
    /// Prints `images: <label> ...` and starts the heartbeat.
    pub fn start(label: impl Into<String>) -> Self {
        let mut step = Self::start_quiet(label);
        let (stop, stopped) = mpsc::channel::<()>();
        let ticker_label = step.label.clone();
        let start = step.start;
        step.ticker = Some(std::thread::spawn(move || loop {
            match stopped.recv_timeout(HEARTBEAT) {
                Err(RecvTimeoutError::Timeout) => {
                    let seconds = start.elapsed().as_secs_f64();
                    eprintln!("images: {ticker_label}: still running ({seconds:.0} s)");
                }
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }));
        step.stop = Some(stop);
        step
    }

    /// Like [`Step::start`] without a heartbeat: for a step made of
    /// sub-steps that have their own.
    pub fn start_quiet(label: impl Into<String>) -> Self {
        let label = label.into();
        eprintln!("images: {label} ...");
        Self {
            label,
            start: Instant::now(),
            stop: None,
            ticker: None,
        }
    }

    /// Seconds since the step started.
    pub fn elapsed_seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Prints `images: <label> done in N s` (plus `detail`) and returns the
    /// elapsed seconds.
    pub fn done(mut self, detail: &str) -> f64 {
        let seconds = self.elapsed_seconds();
        self.stop_ticker();
        record(&self.label, self.start, seconds);
        let sep = if detail.is_empty() { "" } else { ": " };
        eprintln!("images: {} done in {seconds:.1} s{sep}{detail}", self.label);
        seconds
    }

    fn stop_ticker(&mut self) {
        drop(self.stop.take());
        if let Some(ticker) = self.ticker.take() {
            // A panicked ticker only loses heartbeats.
            drop(ticker.join());
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}

/// Every finished step of this run: (label, start, seconds). Steps run on
/// several threads, so the record is shared.
static TIMELINE: Mutex<Vec<(String, Instant, f64)>> = Mutex::new(Vec::new());

/// Starts a new timeline (one per `cargo xtask images` run).
pub fn reset_timeline() {
    if let Ok(mut t) = TIMELINE.lock() {
        t.clear();
    }
}

fn record(label: &str, start: Instant, seconds: f64) {
    if let Ok(mut t) = TIMELINE.lock() {
        t.push((label.to_owned(), start, seconds));
    }
}

/// Prints where the time went: each finished step with its start (relative
/// to the first) and duration, in start order. Steps of different tracks
/// overlap, so durations add up to more than `wall`.
pub fn print_timeline(wall: Duration) {
    let Ok(mut steps) = TIMELINE.lock().map(|t| t.clone()) else {
        return;
    };
    if steps.is_empty() {
        return;
    }
    steps.sort_by_key(|(_, start, _)| *start);
    let origin = steps[0].1;
    eprintln!(
        "images: where the time went (wall {:.1} s; tracks overlap):",
        wall.as_secs_f64()
    );
    eprintln!("images:   {:>7}  {:>7}  step", "start", "took");
    for (label, start, seconds) in &steps {
        let at = start.duration_since(origin).as_secs_f64();
        eprintln!("images:   {at:>6.1}s  {seconds:>6.1}s  {label}");
    }
}

/// A size for humans: `12.3 MiB`.
pub fn mib(bytes: u64) -> String {
    // Precision loss is irrelevant for display.
    #[allow(clippy::cast_precision_loss)]
    let mib = bytes as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_mib() {
        assert_eq!(mib(0), "0.0 MiB");
        assert_eq!(mib(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }

    #[test]
    fn a_step_reports_its_time() {
        let step = Step::start("test step");
        let seconds = step.done("ok");
        assert!(seconds >= 0.0);
    }
}
