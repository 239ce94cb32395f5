//! The one teardown of a VM (`docs/architecture.md`, "Teardown"), used by
//! [`crate::Vm::destroy`], by a failed boot, and, through the [`Reaper`],
//! by a VM or half-built VM that is dropped (cancellation, Ctrl-C).
//!
//! Teardown never fails, is idempotent (each part is taken once), and
//! blocks no runtime thread: the limits group's stats and its removal,
//! which read cgroupfs and poll until the group is empty, run on the
//! blocking pool.

use crate::ms;
use crate::network::{NetworkReport, VmNetwork};
use crate::process::{QemuProcess, Termination};
use crate::slots::Slot;
use crate::workdir::WorkDir;
use airlock_limits::VmGroup;
use airlock_protocol::client::Client;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// What destroying a VM did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeardownReport {
    /// The VM.
    pub vm_id: String,
    /// How QEMU was stopped (`None`: it was never started or already gone).
    pub termination: Option<Termination>,
    /// Whether the work dir was removed (`false`: it was already gone).
    pub workdir_removed: bool,
    /// Resource use read from the limits group just before removal.
    pub usage: Usage,
    /// What the network did (`None`: the VM had none).
    pub network: Option<NetworkReport>,
    /// Problems met (teardown never fails; it reports).
    pub problems: Vec<String>,
    /// Time it took, in ms.
    pub elapsed_ms: u64,
}

impl TeardownReport {
    /// The report of a teardown that did nothing (already done) or whose
    /// outcome is unknown (the reaper went away while it ran).
    fn interrupted(vm_id: String) -> Self {
        Self {
            vm_id,
            termination: None,
            workdir_removed: false,
            usage: Usage::default(),
            network: None,
            problems: vec!["teardown interrupted: the runtime is shutting down".into()],
            elapsed_ms: 0,
        }
    }

    /// The report of destroying a VM that was destroyed already.
    pub fn nothing_left(vm_id: String) -> Self {
        Self {
            problems: Vec::new(),
            ..Self::interrupted(vm_id)
        }
    }
}

/// Resource use of a VM's processes (QEMU), from its limits group. `None`
/// where the backend does not measure it (rlimits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Highest memory charged to the group, in MiB.
    pub peak_memory_mib: Option<u64>,
    /// CPU time used, in ms.
    pub cpu_ms: Option<u64>,
    /// Processes killed by the OOM killer.
    pub oom_kills: Option<u64>,
}

/// Everything a VM, or a VM being built, holds on the host. Each part is
/// there once made; teardown gives back what is there.
#[derive(Debug)]
pub struct VmParts {
    /// The VM.
    pub vm_id: String,
    /// Its work dir (made first, removed last).
    pub workdir: WorkDir,
    /// Its limits group.
    pub group: Option<VmGroup>,
    /// Its network (gvproxy, egress proxy, port bridges).
    pub network: Option<VmNetwork>,
    /// Its machine's process.
    pub process: Option<QemuProcess>,
    /// The channel to its agent.
    pub client: Option<std::sync::Arc<Client>>,
    /// The `--debug` console echo.
    pub console_echo: Option<JoinHandle<()>>,
    /// Its VM slot, freed once everything else is gone.
    pub slot: Option<Slot>,
}

impl VmParts {
    /// A VM that has only its work dir so far.
    pub fn new(vm_id: String, workdir: WorkDir) -> Self {
        Self {
            vm_id,
            workdir,
            group: None,
            network: None,
            process: None,
            client: None,
            console_echo: None,
            slot: None,
        }
    }
}

/// Gives back everything in `parts`, in order: the agent channel, the
/// machine (SIGTERM, SIGKILL after `grace`), the network, the limits group
/// (its stats read first), the work dir, and last the VM slot.
pub async fn teardown(mut parts: VmParts, grace: Duration) -> TeardownReport {
    let start = Instant::now();
    let mut problems = Vec::new();
    drop(parts.client.take());
    if let Some(echo) = parts.console_echo.take() {
        echo.abort();
    }
    let termination = match parts.process.as_mut() {
        Some(process) => Some(process.terminate(grace).await),
        None => None,
    };
    drop(parts.process.take());
    let network = match parts.network.take() {
        Some(mut network) => {
            let report = network.stop().await;
            problems.extend(report.problems.iter().cloned());
            Some(report)
        }
        None => None,
    };
    let usage = match parts.group.take() {
        Some(group) => retire_group(group, &mut problems).await,
        None => Usage::default(),
    };
    let workdir_removed = match parts.workdir.remove_async().await {
        Ok(existed) => existed,
        Err(e) => {
            problems.push(format!("remove {}: {e}", parts.workdir.path().display()));
            false
        }
    };
    drop(parts.slot.take());
    let report = TeardownReport {
        vm_id: parts.vm_id.clone(),
        termination,
        workdir_removed,
        usage,
        network,
        problems,
        elapsed_ms: ms(start.elapsed()),
    };
    tracing::debug!(vm_id = parts.vm_id, ?report, "VM destroyed");
    report
}

/// Reads the limits group's stats, then removes it (killing what is left
/// in it), both on the blocking pool: they read and write cgroupfs and the
/// removal polls until the group is empty.
async fn retire_group(group: VmGroup, problems: &mut Vec<String>) -> Usage {
    let retired = tokio::task::spawn_blocking(move || {
        let stats = group.stats();
        let removed = group.remove(airlock_limits::DEFAULT_REMOVE_TIMEOUT);
        (stats, removed)
    })
    .await;
    match retired {
        Ok((stats, removed)) => {
            problems.extend(removed.errors);
            match stats {
                Ok(stats) => usage_of(&stats),
                Err(e) => {
                    problems.push(format!("read limits stats: {e}"));
                    Usage::default()
                }
            }
        }
        Err(e) => {
            problems.push(format!("limits group removal task failed: {e}"));
            Usage::default()
        }
    }
}

/// The usage a VM's limits group measured. Pure.
fn usage_of(stats: &airlock_limits::Stats) -> Usage {
    Usage {
        peak_memory_mib: stats.memory_peak_bytes.map(|b| b / (1024 * 1024)),
        cpu_ms: stats.cpu_usage.map(ms),
        oom_kills: stats.oom_kills,
    }
}

enum Job {
    TearDown {
        parts: Box<VmParts>,
        grace: Duration,
        report: Option<oneshot::Sender<TeardownReport>>,
    },
    Flush(oneshot::Sender<()>),
}

/// Runs every teardown on a task of its own, so that a teardown finishes
/// even when its caller is cancelled or is a `Drop` (which cannot await).
/// Cheap to clone.
///
/// The task ends when the manager and every VM it made are gone (they hold
/// the senders); [`Reaper::flush`] waits until what was handed over is
/// torn down, so a process that shuts its manager down before exiting
/// leaves nothing behind.
#[derive(Debug, Clone)]
pub struct Reaper {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Reaper {
    /// Starts the reaper task. Must be called inside a tokio runtime.
    pub fn start() -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(reap(rx));
        Self { jobs }
    }

    /// Tears `parts` down (see [`teardown`]) and returns the report. If
    /// this future is dropped, the teardown still completes on the reaper.
    pub async fn tear_down(&self, parts: VmParts, grace: Duration) -> TeardownReport {
        let (report, wait) = oneshot::channel();
        let job = Job::TearDown {
            parts: Box::new(parts),
            grace,
            report: Some(report),
        };
        match self.jobs.send(job) {
            Ok(()) => {}
            // No reaper task (its runtime is going away): do it here.
            Err(mpsc::error::SendError(Job::TearDown { parts, .. })) => {
                return teardown(*parts, grace).await
            }
            Err(_) => return TeardownReport::interrupted(String::new()),
        }
        wait.await
            .unwrap_or_else(|_| TeardownReport::interrupted(String::new()))
    }

    /// Hands `parts` over to be torn down at once (SIGKILL, no grace: the
    /// owner gave up on the VM). Never blocks. When the reaper is gone (the
    /// runtime is shutting down), the parts' own drops kill the processes
    /// and the next start's sweep removes the files.
    pub fn hand_over(&self, parts: VmParts) {
        let job = Job::TearDown {
            parts: Box::new(parts),
            grace: Duration::ZERO,
            report: None,
        };
        if let Err(mpsc::error::SendError(Job::TearDown { parts, .. })) = self.jobs.send(job) {
            tracing::warn!(
                vm_id = parts.vm_id,
                "no reaper: processes are killed, files are left for the next sweep"
            );
        }
    }

    /// Waits until everything handed over so far is torn down, at most
    /// `timeout`. Returns whether it all was.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_err() {
            return true;
        }
        tokio::time::timeout(timeout, wait)
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn reap(mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut running = JoinSet::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(Job::TearDown { parts, grace, report }) => {
                    running.spawn(async move {
                        let done = teardown(*parts, grace).await;
                        match report {
                            Some(report) => {
                                let _ = report.send(done);
                            }
                            None => {
                                for problem in &done.problems {
                                    tracing::warn!(vm_id = done.vm_id, problem, "teardown of a dropped VM");
                                }
                            }
                        }
                    });
                }
                Some(Job::Flush(done)) => flushes.push(done),
                None => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
        if running.is_empty() {
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }
    while running.join_next().await.is_some() {}
    for done in flushes {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn rlimit_group(vm_id: &str) -> VmGroup {
        let limiter = airlock_limits::Limiter::from_probe(airlock_limits::ProbeResult {
            backend: airlock_limits::Backend::Rlimit,
            reason: "test".into(),
        });
        let limits = airlock_limits::Limits::for_vm(airlock_limits::VmShape {
            guest_memory_mib: 256,
            vcpus: 1,
            accel: airlock_limits::Accel::Tcg,
            network: false,
        });
        limiter.create("test", vm_id, &limits).unwrap()
    }

    async fn parts_with_process(run: &std::path::Path, vm_id: &str) -> VmParts {
        let workdir = WorkDir::create(run, vm_id).unwrap();
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("30");
        let process = QemuProcess::spawn(cmd, vm_id, &workdir.qemu_log())
            .await
            .unwrap();
        let mut parts = VmParts::new(vm_id.to_owned(), workdir);
        parts.process = Some(process);
        parts.group = Some(rlimit_group(vm_id));
        parts
    }

    fn alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    }

    #[tokio::test]
    async fn teardown_stops_the_process_removes_the_work_dir_and_frees_the_slot() {
        let run = tempfile::tempdir().unwrap();
        let mut parts = parts_with_process(run.path(), "vm1").await;
        let pid = parts.process.as_ref().unwrap().pid();
        let slots = crate::slots::Slots::new(1, Duration::from_secs(1));
        parts.slot = Some(slots.acquire().await.unwrap());
        let dir = parts.workdir.path().to_path_buf();
        let report = teardown(parts, Duration::from_secs(2)).await;
        assert_eq!(report.termination, Some(Termination::Terminated));
        assert!(report.workdir_removed && !dir.exists());
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(!alive(pid), "the process is gone");
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test]
    async fn teardown_of_a_vm_with_only_a_work_dir_removes_it_and_reports_no_process() {
        let run = tempfile::tempdir().unwrap();
        let workdir = WorkDir::create(run.path(), "vm2").unwrap();
        let report = teardown(VmParts::new("vm2".into(), workdir), Duration::ZERO).await;
        assert_eq!(report.termination, None);
        assert!(report.workdir_removed);
        assert_eq!(report.network, None);
    }

    #[tokio::test]
    async fn teardown_twice_reports_the_work_dir_already_gone() {
        let run = tempfile::tempdir().unwrap();
        let workdir = WorkDir::create(run.path(), "vm3").unwrap();
        let first = teardown(VmParts::new("vm3".into(), workdir.clone()), Duration::ZERO).await;
        let second = teardown(VmParts::new("vm3".into(), workdir), Duration::ZERO).await;
        assert!(first.workdir_removed);
        assert!(!second.workdir_removed);
        assert!(second.problems.is_empty(), "{:?}", second.problems);
    }

    #[tokio::test]
    async fn a_teardown_whose_caller_is_cancelled_still_completes_on_the_reaper() {
        let run = tempfile::tempdir().unwrap();
        let parts = parts_with_process(run.path(), "vm5").await;
        let pid = parts.process.as_ref().unwrap().pid();
        let dir = parts.workdir.path().to_path_buf();
        let reaper = Reaper::start();
        let mut destroy = Box::pin(reaper.tear_down(parts, Duration::from_secs(2)));
        // One poll hands the parts over and waits for the report. This
        // test's runtime has one thread, busy here: the reaper has not run.
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(destroy.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the teardown cannot have finished");
        drop(destroy); // the caller is cancelled
        assert!(
            dir.exists() && alive(pid),
            "cancelled before the teardown ran"
        );
        assert!(reaper.flush(Duration::from_secs(10)).await);
        assert!(!dir.exists(), "work dir removed");
        assert!(!alive(pid), "process stopped");
    }

    #[tokio::test]
    async fn parts_handed_to_the_reaper_are_torn_down_by_the_flush() {
        let run = tempfile::tempdir().unwrap();
        let parts = parts_with_process(run.path(), "vm4").await;
        let pid = parts.process.as_ref().unwrap().pid();
        let dir = parts.workdir.path().to_path_buf();
        let reaper = Reaper::start();
        reaper.hand_over(parts);
        assert!(reaper.flush(Duration::from_secs(10)).await);
        assert!(!dir.exists(), "work dir removed");
        assert!(!alive(pid), "process killed");
    }
}
