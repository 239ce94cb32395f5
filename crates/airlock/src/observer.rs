//! What a run reports while it happens: its stages and its output, to a
//! [`RunObserver`] (progress displays, SSE streams). A low module: VM
//! sources report their stages here too.

use crate::network::ExposedAddr;
use crate::vm::{ExecProgress, OutputStream};
use airlock_protocol::ExecResult;

/// What a run is doing, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No memory template of the run's shape exists (or it was damaged):
    /// one is being built (once per shape; it takes a cold boot and more).
    BuildingTemplate,
    /// The run's package list has no layer yet: an install VM is
    /// installing it (once per list; later runs attach the stored layer).
    InstallingPackages,
    /// Waiting for a slot, taking an overlay, booting (or restoring).
    Booting,
    /// The agent answered; the code is about to run.
    Running,
    /// The code ended; the VM is being destroyed.
    TearingDown,
}

/// Receives a run's progress and output as they happen.
pub trait RunObserver: Send {
    /// The run entered `stage`.
    fn stage(&mut self, _stage: Stage) {}
    /// A chunk of output.
    fn output(&mut self, stream: OutputStream, bytes: &[u8]);
    /// A value the code showed (a cell's last expression, `display()`, a
    /// figure), in order with the output. It is in the run's or cell's
    /// result as well.
    fn result(&mut self, _result: &ExecResult) {}
    /// The VM is up and these guest ports are served on the host.
    fn exposed(&mut self, _ports: &[ExposedAddr]) {}
}

/// Hands each piece of an exec's progress to the matching method of
/// `observer`.
pub(crate) fn forward(observer: &mut dyn RunObserver, piece: ExecProgress<'_>) {
    match piece {
        ExecProgress::Output(stream, bytes) => observer.output(stream, bytes),
        ExecProgress::Result(result) => observer.result(result),
    }
}

/// Ignores everything (for [`crate::Scheduler::run`] and sessions).
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl RunObserver for Discard {
    fn output(&mut self, _: OutputStream, _: &[u8]) {}
}
