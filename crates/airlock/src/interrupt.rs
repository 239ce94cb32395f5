//! Interrupts of the `airlock` command: SIGINT (Ctrl-C), SIGTERM and SIGHUP
//! all mean "stop", from the command's very start. What `cli.rs` does:
//!
//! - **First signal**: `airlock run` kills the run's VMs (one being booted
//!   too) and tears them down, removes their files, and exits with 128 +
//!   the signal (130, 143, 129); interrupted while starting, it drops the
//!   start-up (killing the probes' children) and removes this process's
//!   pool dir. `airlock doctor` and `airlock snapshot` kill what they
//!   started and exit with 128 + the signal, leaving files to the next
//!   sweep.
//! - **Second signal** (while the first is being handled): the process
//!   exits at once ([`force_exit`], which SIGKILLs whatever is still in the
//!   process registry), leaving the files to the next start's sweep.
//!
//! See `docs/architecture.md`, "Nothing outlives its owner", layer 2.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

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

/// The second interrupt of the `airlock` command: say so and exit at once
/// with 128 + the signal. The VMs' QEMUs and gvproxies die with this
/// process (each was forked with a parent-death signal, `spawner.rs`).
pub fn force_exit(stop: Signal) {
    eprintln!(
        "airlock: {stop} again: exiting at once; its VMs die with it, their files go at the next start"
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
