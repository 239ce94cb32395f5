//! The process every subcommand of `airlock` runs in: exit statuses, the
//! tokio runtime, logging on stderr, stop signals, and how a failure is
//! printed (one line, a hint).
//!
//! Exit statuses (so that 1..=123 belong to the user's code):
//! - [`EXIT_TIMEOUT`] (124): the code timed out;
//! - [`EXIT_AIRLOCK_FAILED`] (125): Airlock itself failed, bad usage
//!   included;
//! - 128 + n after stop signal n ([`exit_status`]).
//!
//! Stop signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP all mean "stop", from
//! the command's very start.
//!
//! - **First signal**: `airlock run` kills the run's VMs (one being booted
//!   too) and tears them down, removes their files, and exits with 128 +
//!   the signal (130, 143, 129); interrupted while starting, it drops the
//!   start-up (killing the probes' children) and removes this process's
//!   pool dir. `airlock doctor` and `airlock snapshot` kill what they
//!   started and exit with 128 + the signal, leaving files to the next
//!   sweep. `airlock serve` drains.
//! - **Second signal** (while the first is being handled): the process
//!   exits at once ([`force_exit`], which SIGKILLs whatever is still in the
//!   process registry), leaving the files to the next start's sweep.
//!
//! See `docs/architecture.md`, "Nothing outlives its owner", layer 2.

use crate::error::CliError;
use airlock_server::config::LogFormat;
use nix::sys::signal::Signal;
use std::future::Future;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// Exit status when the code timed out.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when Airlock itself failed.
pub const EXIT_AIRLOCK_FAILED: i32 = 125;

/// The default log filter of a command (`AIRLOCK_LOG` overrides it):
/// Airlock's debug events with `--debug`, else warnings only.
pub fn default_log_filter(debug: bool) -> &'static str {
    if debug {
        "airlock=debug,info"
    } else {
        "warn"
    }
}

/// Sends `tracing` events to stderr in `format`, filtered by `AIRLOCK_LOG`
/// or else by `default` (a `tracing_subscriber::EnvFilter` directive).
pub fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Already set (a test, a second call): the first one stays.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A multi-thread tokio runtime; `None` (said on stderr) when it cannot
/// start.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("airlock: cannot start the runtime: {e}");
            None
        }
    }
}

/// Runs `main` on a new runtime with `signals` handled from the start
/// ([`Interrupts::install_signals`], a second one forcing the exit);
/// returns its exit status, or 125 when the runtime or the handlers
/// cannot be set up.
pub fn block_on<F, Fut>(signals: &[Signal], main: F) -> i32
where
    F: FnOnce(Interrupts) -> Fut,
    Fut: Future<Output = i32>,
{
    let Some(runtime) = runtime() else {
        return EXIT_AIRLOCK_FAILED;
    };
    runtime.block_on(async {
        match Interrupts::install_signals(signals, Box::new(force_exit)) {
            Ok(interrupts) => main(interrupts).await,
            Err(e) => {
                eprintln!("airlock: cannot handle SIGINT, SIGTERM and SIGHUP: {e}");
                EXIT_AIRLOCK_FAILED
            }
        }
    })
}

/// Runs `work` unless a stop signal comes first; then kills what is
/// registered (the work's children die as its future drops, a VM being
/// built is torn down) and returns 128 + the signal. Files are left to the
/// next sweep.
pub async fn unless_interrupted(
    work: impl Future<Output = i32>,
    interrupts: &mut Interrupts,
) -> i32 {
    tokio::select! {
        code = work => code,
        stop = interrupts.first() => {
            airlock::process::registry().kill_all();
            eprintln!("airlock: interrupted ({stop})");
            exit_status(stop)
        }
    }
}

/// How much of an error [`report`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The first line; the other lines (tails of logs) too, indented, when
    /// `debug` (`airlock run --debug`).
    FirstLine {
        /// Whether the other lines are printed.
        debug: bool,
    },
    /// The whole message as it is.
    Whole,
}

/// Prints an Airlock failure on stderr: `airlock: error: ...`, then
/// `airlock: hint: ...` when there is one.
pub fn report(error: impl Into<CliError>, detail: Detail) {
    let error = error.into();
    let text = error.to_string();
    match detail {
        Detail::FirstLine { debug } => {
            let mut lines = text.lines();
            eprintln!("airlock: error: {}", lines.next().unwrap_or_default());
            if debug {
                for line in lines {
                    eprintln!("  {line}");
                }
            }
        }
        Detail::Whole => eprintln!("airlock: error: {text}"),
    }
    if let Some(hint) = error.hint() {
        eprintln!("airlock: hint: {hint}");
    }
}

/// Prints `error` whole ([`Detail::Whole`]) and returns 125: the failure
/// of a command that has no `--debug` (snapshot, serve, mcp).
pub fn failed(error: impl Into<CliError>) -> i32 {
    report(error, Detail::Whole);
    EXIT_AIRLOCK_FAILED
}

/// Prints a parse error (or the help or version it carries) and returns
/// the exit status: 0 for help and version, 125 for bad usage.
pub fn usage_error(e: &clap::Error) -> i32 {
    let code = if e.use_stderr() {
        EXIT_AIRLOCK_FAILED
    } else {
        0
    };
    let _ = e.print();
    if code != 0 {
        eprintln!("airlock: hint: see `airlock --help`");
    }
    code
}

/// The signals that stop a command.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// The exit status after `signal`: 128 + its number, as a shell reports a
/// process killed by it (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
pub fn exit_status(signal: Signal) -> i32 {
    128 + signal as i32
}

/// What to do on the second interrupt (it should not return).
pub type ForceAction = Box<dyn Fn(Signal) + Send + Sync>;

/// The stop signals of this process, once [`Interrupts::install`]ed.
#[derive(Debug)]
pub struct Interrupts {
    first: watch::Receiver<Option<Signal>>,
}

impl Interrupts {
    /// Handles SIGINT, SIGTERM and SIGHUP from now on: the first one is
    /// given to [`Interrupts::first`]; a later one runs `force`. Must be
    /// called inside a tokio runtime; the handlers stay for the life of the
    /// process.
    ///
    /// # Errors
    /// The error of registering a handler.
    pub fn install(force: ForceAction) -> std::io::Result<Self> {
        Self::install_signals(&STOP_SIGNALS, force)
    }

    /// As [`Interrupts::install`], for `signals` only (the interactive
    /// `airlock session` handles SIGINT itself: Ctrl-C interrupts a cell,
    /// it does not stop the command).
    ///
    /// # Errors
    /// The error of registering a handler.
    pub fn install_signals(signals: &[Signal], force: ForceAction) -> std::io::Result<Self> {
        let (tx, first) = watch::channel(None);
        let mut streams = Vec::new();
        for &stop in signals {
            streams.push((stop, signal(SignalKind::from_raw(stop as i32))?));
        }
        let (any_tx, mut any) = mpsc::unbounded_channel();
        for (stop, mut stream) in streams {
            let any_tx = any_tx.clone();
            // Each ends with the runtime; a failed send means nobody listens.
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if any_tx.send(stop).is_err() {
                        return;
                    }
                }
            });
        }
        tokio::spawn(async move {
            let mut seen = false;
            while let Some(stop) = any.recv().await {
                if seen {
                    force(stop);
                } else {
                    seen = true;
                    let _ = tx.send(Some(stop));
                }
            }
        });
        Ok(Self { first })
    }

    /// Waits for the first stop signal. Cancel-safe; once it has come, it
    /// is returned again at once.
    pub async fn first(&mut self) -> Signal {
        match self.first.wait_for(Option::is_some).await {
            Ok(stop) => stop.unwrap_or(Signal::SIGINT),
            // The dispatcher is gone (the runtime is shutting down).
            Err(_) => std::future::pending().await,
        }
    }
}

/// The second interrupt of the `airlock` command: SIGKILL every registered
/// process, say so, and exit at once with 128 + the signal.
pub fn force_exit(stop: Signal) {
    let killed = airlock::process::registry().kill_all();
    eprintln!(
        "airlock: {stop} again: killed {} process(es) at once; their files go at the next start",
        killed.len()
    );
    std::process::exit(exit_status(stop));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_exit_status_is_128_plus_the_signal() {
        assert_eq!(exit_status(Signal::SIGINT), 130);
        assert_eq!(exit_status(Signal::SIGTERM), 143);
        assert_eq!(exit_status(Signal::SIGHUP), 129);
    }

    #[tokio::test]
    async fn the_first_signal_is_reported_and_the_second_forces() {
        let (forced_tx, mut forced) = mpsc::unbounded_channel();
        let mut interrupts = Interrupts::install(Box::new(move |s| {
            let _ = forced_tx.send(s);
        }))
        .unwrap();
        // SIGHUP only: the test harness keeps its own Ctrl-C.
        nix::sys::signal::raise(Signal::SIGHUP).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), interrupts.first())
            .await
            .unwrap();
        assert_eq!(first, Signal::SIGHUP);
        assert!(forced.try_recv().is_err(), "one signal does not force");
        assert_eq!(interrupts.first().await, Signal::SIGHUP, "asked again");
        nix::sys::signal::raise(Signal::SIGHUP).unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), forced.recv())
            .await
            .unwrap();
        assert_eq!(second, Some(Signal::SIGHUP));
    }
}
