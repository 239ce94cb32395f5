//! QEMU as a child process: spawned in its own process group (by the
//! spawner thread, with a parent-death signal), its output drained (a full
//! pipe would stall it), killed TERM-then-KILL, and tracked in its VM
//! manager's [`ProcessRegistry`], which kills what is left when the last
//! handle to the manager (and so to the scheduler) drops.

use crate::capped_log::CappedLog;
use crate::error::{BootError, Result};
use airlock_sys_util::TailBuffer;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Bytes of QEMU's stderr kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;
/// Bytes of the console log shown in error messages.
pub(crate) const CONSOLE_TAIL_BYTES: usize = 3072;

/// The end of a guest console log, for error messages ("" when absent or
/// unreadable). Read on a blocking thread: the log is a file.
pub(crate) async fn console_tail(path: &Path) -> String {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || airlock_sys_util::file_tail(&path, CONSOLE_TAIL_BYTES))
        .await
        .unwrap_or_default()
}

/// A running QEMU.
#[derive(Debug)]
pub struct QemuProcess {
    child: Child,
    pid: u32,
    stderr_tail: Arc<Mutex<TailBuffer>>,
    drains: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// The registry tracking it (see [`QemuProcess::track`]).
    registry: Weak<ProcessRegistry>,
    /// The jail uid it runs as (released after the kill of the drop).
    jail: Option<crate::jail::UidLease>,
}

/// Where a QEMU's output goes ([`QemuProcess::spawn_logged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLogs {
    /// QEMU's own messages (stderr).
    pub qemu_log: PathBuf,
    /// The guest console (stdout), when QEMU writes it there.
    pub console_log: Option<PathBuf>,
    /// The budget of each log ([`CappedLog`]).
    pub max_bytes: u64,
}

impl QemuProcess {
    /// Spawns `cmd` in a new process group, with stdin closed and
    /// stdout/stderr drained into `log` (stderr also into an in-memory tail),
    /// `log` capped at the default console budget. See
    /// [`QemuProcess::spawn_logged`].
    ///
    /// # Errors
    /// [`BootError::Spawn`]; [`BootError::Io`] when the log cannot be created.
    #[cfg(test)]
    pub(crate) async fn spawn(cmd: Command, vm_id: &str, log: &Path) -> Result<Self, BootError> {
        let logs = OutputLogs {
            qemu_log: log.to_path_buf(),
            console_log: None,
            max_bytes: crate::capped_log::DEFAULT_CONSOLE_LOG_MAX_BYTES,
        };
        Self::spawn_logged(cmd, vm_id, &logs).await
    }

    /// Spawns `cmd` in a new process group, with stdin closed, stderr
    /// drained into `logs.qemu_log` and an in-memory tail, and stdout into
    /// `logs.console_log` (the guest console, `-chardev stdio`) or, without
    /// one, into the QEMU log too; each log capped at `logs.max_bytes`
    /// ([`CappedLog`]). The child is killed if this value is dropped, and
    /// by the kernel if this process dies (it is forked by the spawner
    /// thread with a parent-death signal, see `spawner.rs`).
    ///
    /// # Errors
    /// [`BootError::Spawn`]; [`BootError::Io`] when a log cannot be created.
    pub async fn spawn_logged(
        mut cmd: Command,
        vm_id: &str,
        logs: &OutputLogs,
    ) -> Result<Self, BootError> {
        let program = PathBuf::from(cmd.as_std().get_program());
        let create = |path: PathBuf| async move {
            CappedLog::create(&path, logs.max_bytes)
                .await
                .map(|log| Arc::new(tokio::sync::Mutex::new(log)))
                .map_err(|e| BootError::io("create", &path, e))
        };
        let qemu_log = create(logs.qemu_log.clone()).await?;
        let console_log = match &logs.console_log {
            Some(path) => create(path.clone()).await?,
            None => Arc::clone(&qemu_log),
        };
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = crate::spawner::spawn(cmd)
            .await
            .map_err(|source| BootError::Spawn {
                vm_id: vm_id.to_owned(),
                program: program.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let stderr_tail = Arc::new(Mutex::new(TailBuffer::new(STDERR_TAIL_BYTES)));
        let mut drains = Vec::new();
        if let Some(out) = child.stdout.take() {
            drains.push(tokio::spawn(drain(out, console_log, None)));
        }
        if let Some(err) = child.stderr.take() {
            drains.push(tokio::spawn(drain(
                err,
                qemu_log,
                Some(Arc::clone(&stderr_tail)),
            )));
        }
        Ok(Self {
            child,
            pid,
            stderr_tail,
            drains,
            status: None,
            registry: Weak::new(),
            jail: None,
        })
    }

    /// Keeps `lease` (the jail uid QEMU runs as) for as long as this
    /// process is held: the uid is free again only after QEMU was killed.
    pub(crate) fn hold_jail(&mut self, lease: crate::jail::UidLease) {
        self.jail = Some(lease);
    }

    /// Registers QEMU in `registry` (as serving `vm_id`) until it is
    /// reaped or dropped.
    pub(crate) fn track(&mut self, registry: &Arc<ProcessRegistry>, vm_id: &str) {
        if self.status.is_none() {
            registry.register(self.pid, vm_id, "qemu");
            self.registry = Arc::downgrade(registry);
        }
    }

    /// Leaves the registry (QEMU was reaped or is being dropped).
    fn untrack(&self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.unregister(self.pid);
        }
    }

    /// The uid QEMU runs as: its jail uid, else this process's.
    pub fn uid(&self) -> u32 {
        self.jail.as_ref().map_or_else(
            || nix::unistd::geteuid().as_raw(),
            crate::jail::UidLease::uid,
        )
    }

    /// QEMU's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The end of QEMU's stderr so far.
    pub fn stderr_tail(&self) -> String {
        lock(&self.stderr_tail).text()
    }

    /// Waits for QEMU to exit (cancel-safe).
    ///
    /// # Errors
    /// The wait's I/O error.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.reaped(status);
        // Let the drains reach the end of the pipes so the tail is complete.
        for drain in &mut self.drains {
            let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
        }
        Ok(status)
    }

    /// The exit status if QEMU has exited (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                self.reaped(status);
            }
        }
        self.status
    }

    /// Records the status of the reaped QEMU. Its pid, and so its process
    /// group id, may now be reused: it leaves the registry at once, so that
    /// the registry's final kill cannot signal a stranger's group.
    fn reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
        self.untrack();
    }

    /// Stops QEMU and everything in its process group: SIGTERM, then SIGKILL
    /// after `grace`. Never fails; says what it took.
    ///
    /// The group is signalled only while QEMU is not reaped (alive, or a
    /// zombie, which keeps its pid and so its group id taken): a QEMU
    /// reaped earlier is left alone, since its group id may belong to
    /// another process by now.
    pub async fn terminate(&mut self, grace: Duration) -> Termination {
        let outcome = if self.try_status().is_some() {
            Termination::AlreadyExited
        } else {
            signal_group(self.pid, Signal::SIGTERM);
            let exited = tokio::time::timeout(grace, self.exited()).await.is_ok();
            // Not reaped yet: QEMU (if TERM was not enough) and whatever it
            // left in its group (helpers) go now; then it is reaped.
            signal_group(self.pid, Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.wait()).await;
            if exited {
                Termination::Terminated
            } else {
                Termination::Killed
            }
        };
        self.untrack();
        outcome
    }

    /// Waits until QEMU has exited without reaping it: it stays a zombie,
    /// so its process group id cannot be reused meanwhile.
    async fn exited(&self) {
        let mut attempt = 0;
        while !exited_unreaped(self.pid) {
            tokio::time::sleep(EXIT_POLL.delay(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

/// How often [`QemuProcess::terminate`] looks whether QEMU has exited:
/// soon at first (QEMU usually ends within milliseconds of SIGTERM), then
/// every 20 ms.
const EXIT_POLL: airlock_sys_util::Backoff =
    airlock_sys_util::Backoff::new(Duration::from_millis(1), Duration::from_millis(20));

/// Whether the child `pid` has exited, without reaping it
/// (`waitid(WEXITED | WNOHANG | WNOWAIT)`). A child that cannot be waited
/// for (already reaped) counts as exited.
fn exited_unreaped(pid: u32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(
        waitid(Id::Pid(nix::unistd::Pid::from_raw(raw)), flags),
        Ok(WaitStatus::StillAlive)
    )
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            signal_group(self.pid, Signal::SIGKILL);
        }
        self.untrack();
        for drain in &self.drains {
            drain.abort();
        }
    }
}

/// How a QEMU was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    /// It had exited on its own.
    AlreadyExited,
    /// It exited on SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
}

/// Signals a child's process group; a group already gone is the expected
/// outcome of a late signal, anything else is logged.
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    if let Err(e) = airlock_sys_util::signal_group(pid, signal) {
        tracing::warn!(pid, %signal, error = %e, "cannot signal a process group");
    }
}

async fn drain<R: AsyncRead + Unpin>(
    mut from: R,
    log: Arc<tokio::sync::Mutex<CappedLog>>,
    tail: Option<Arc<Mutex<TailBuffer>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(tail) = &tail {
                    lock(tail).push(&buf[..n]);
                }
                let mut file = log.lock().await;
                // A failing log must not stop the draining.
                let _ = file.write(&buf[..n]).await;
            }
        }
    }
    let _ = log.lock().await.flush().await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every QEMU and gvproxy a VM manager has started and not yet stopped
/// (each the leader of its own process group). Owned by the manager (the
/// builder registers, the processes leave when reaped): when the last
/// handle drops, whatever is still registered is killed, so no caller has
/// to remember to.
#[derive(Debug, Default)]
pub struct ProcessRegistry {
    live: Mutex<HashMap<u32, Registered>>,
}

/// A registered process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The VM it serves.
    pub vm_id: String,
    /// What it is (`qemu`, `gvproxy`).
    pub role: &'static str,
}

impl ProcessRegistry {
    /// Registers the group leader `pid`, serving `vm_id` as `role`.
    pub fn register(&self, pid: u32, vm_id: &str, role: &'static str) {
        if pid != 0 {
            let entry = Registered {
                vm_id: vm_id.to_owned(),
                role,
            };
            lock(&self.live).insert(pid, entry);
        }
    }

    /// Forgets `pid` (it was stopped).
    pub fn unregister(&self, pid: u32) {
        lock(&self.live).remove(&pid);
    }

    /// How many processes are registered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.live).len()
    }

    /// Whether none is registered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SIGKILLs the process group of every registered process; returns
    /// what was killed. Work dirs are removed by the VMs' own teardown or
    /// by the next start's sweep. Called by the manager's shutdown (what
    /// its teardowns left) and by the drop of the last handle.
    pub(crate) fn kill_all(&self) -> Vec<Registered> {
        let live: Vec<(u32, Registered)> = lock(&self.live).drain().collect();
        for (pid, entry) in &live {
            tracing::warn!(
                vm_id = entry.vm_id,
                pid,
                role = entry.role,
                "killing a process its VM's teardown left"
            );
            signal_group(*pid, Signal::SIGKILL);
        }
        live.into_iter().map(|(_, entry)| entry).collect()
    }
}

impl Drop for ProcessRegistry {
    fn drop(&mut self) {
        let killed = self.kill_all();
        if !killed.is_empty() {
            tracing::warn!(
                killed = killed.len(),
                "the last handle of the VM manager dropped: its processes were killed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    #[tokio::test]
    async fn the_stderr_tail_keeps_the_last_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // 5000 'a's then "end": more than the tail holds.
        cmd.args([
            "-c",
            "head -c 5000 /dev/zero | tr '\\0' a >&2; printf end >&2",
        ]);
        let mut p = QemuProcess::spawn(cmd, "t0", &dir.path().join("log"))
            .await
            .unwrap();
        p.wait().await.unwrap();
        let tail = p.stderr_tail();
        assert_eq!(tail.len(), STDERR_TAIL_BYTES);
        assert!(tail.ends_with("aend"), "{}", &tail[tail.len() - 8..]);
    }

    #[tokio::test]
    async fn the_console_tail_is_the_end_of_the_log_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, format!("{}last", "x".repeat(CONSOLE_TAIL_BYTES))).unwrap();
        let tail = console_tail(&log).await;
        assert_eq!(tail.len(), CONSOLE_TAIL_BYTES);
        assert!(tail.ends_with("xlast"));
        assert_eq!(console_tail(&dir.path().join("absent")).await, "");
    }

    #[tokio::test]
    async fn output_is_drained_to_the_log_and_stderr_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut p = QemuProcess::spawn(cmd, "t1", &log).await.unwrap();
        let status = p.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.stderr_tail(), "err\n");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("out") && logged.contains("err"));
    }

    /// Waits (at most 10 s) until the process's stderr contains `line`.
    async fn stderr_says(p: &QemuProcess, line: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let tail = p.stderr_tail();
            if tail.contains(line) {
                return tail;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {line:?} on stderr: {tail:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn alive(pid: i32) -> bool {
        // A zombie still answers signal 0; its state in /proc says Z.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// The pid a script printed as `helper <pid>` on stderr.
    async fn helper_pid(p: &QemuProcess) -> i32 {
        let tail = stderr_says(p, "ready").await;
        tail.lines()
            .find_map(|l| l.strip_prefix("helper "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn terminate_escalates_to_kill_for_a_term_ignoring_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // "ready" only once the trap is in place.
        cmd.args(["-c", "trap '' TERM; echo ready >&2; sleep 30 & wait"]);
        let mut p = QemuProcess::spawn(cmd, "t2", &dir.path().join("log"))
            .await
            .unwrap();
        stderr_says(&p, "ready").await;
        let outcome = p.terminate(Duration::from_millis(300)).await;
        assert_eq!(outcome, Termination::Killed);
        assert!(p.try_status().is_some());
    }

    #[tokio::test]
    async fn terminate_kills_a_term_ignoring_helper_before_reaping_the_leader() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // The helper ignores TERM; the leader (exec'd sleep) dies of it.
        cmd.args([
            "-c",
            "(trap '' TERM; exec sleep 30) & echo \"helper $!\" >&2; echo ready >&2; exec sleep 30",
        ]);
        let mut p = QemuProcess::spawn(cmd, "t4", &dir.path().join("log"))
            .await
            .unwrap();
        let helper = helper_pid(&p).await;
        let outcome = p.terminate(Duration::from_secs(5)).await;
        assert_eq!(outcome, Termination::Terminated);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while alive(helper) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(helper), "helper {helper} survived the teardown");
    }

    #[tokio::test]
    async fn a_reaped_leaders_group_is_not_signalled_again() {
        // Stands in for a group id reused after the leader was reaped: a
        // process left in the old group must not get the teardown's kill.
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "sleep 30 & echo \"helper $!\" >&2; echo ready >&2; exit 0",
        ]);
        let mut p = QemuProcess::spawn(cmd, "t5", &dir.path().join("log"))
            .await
            .unwrap();
        let helper = helper_pid(&p).await;
        p.wait().await.unwrap();
        let outcome = p.terminate(Duration::from_millis(100)).await;
        drop(p);
        let survived = alive(helper);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(helper), Signal::SIGKILL);
        assert_eq!(outcome, Termination::AlreadyExited);
        assert!(survived, "the reaped leader's group was signalled");
    }

    #[tokio::test]
    async fn a_reaped_process_leaves_the_registry_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = QemuProcess::spawn(Command::new("true"), "t6", &dir.path().join("log"))
            .await
            .unwrap();
        let registry = Arc::new(ProcessRegistry::default());
        p.track(&registry, "t6");
        let pid = p.pid();
        assert!(lock(&registry.live).contains_key(&pid));
        p.wait().await.unwrap();
        assert!(!lock(&registry.live).contains_key(&pid));
    }

    /// A `sleep 30` leading its own process group.
    fn sleeping_group_leader() -> tokio::process::Child {
        tokio::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Waits for `child` and checks SIGKILL ended it.
    async fn assert_killed(child: &mut tokio::process::Child) {
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    #[tokio::test]
    async fn dropping_the_last_registry_handle_kills_what_is_registered() {
        let mut child = sleeping_group_leader();
        let registry = Arc::new(ProcessRegistry::default());
        registry.register(child.id().unwrap(), "vm-d", "qemu");

        drop(registry);

        assert_killed(&mut child).await;
    }

    #[tokio::test]
    async fn kill_all_kills_every_registered_group_and_forgets_it() {
        let mut child = sleeping_group_leader();
        let pid = child.id().unwrap();
        let registry = ProcessRegistry::default();
        registry.register(pid, "vm-k", "gvproxy");
        assert_eq!(registry.len(), 1);
        let killed = registry.kill_all();
        assert_eq!(
            killed,
            vec![Registered {
                vm_id: "vm-k".into(),
                role: "gvproxy"
            }]
        );
        assert!(registry.is_empty());
        assert_killed(&mut child).await;
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Command::new("/nonexistent/qemu");
        let err = QemuProcess::spawn(cmd, "t3", &dir.path().join("log"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/qemu"), "{err}");
    }
}
