//! Reaping orphaned processes when the agent is PID 1.
//!
//! Orphans are re-parented to PID 1, which must wait for them or they stay
//! zombies. The agent also waits for its own children (through tokio) and
//! must not steal their exit status. So every child the agent starts is
//! registered here, under a lock held across `spawn`, and the reaper only
//! *peeks* at exited children (`waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`)
//! and reaps the ones that are not registered.
//!
//! In the normal guest the agent is not PID 1 (`airlock-init` is, and reaps
//! every orphan), so [`reap_orphans`] runs only when the agent finds itself
//! PID 1. It does not set `PR_SET_CHILD_SUBREAPER`: that would only move the
//! reaping from init to the agent, and a process that escaped its exec's
//! process group (`setsid`) cannot be told apart from a deliberate daemon
//! anyway. Killing the process group when an exec ends covers the usual
//! leftovers.

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Pids of the children the agent waits for itself.
static TRACKED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// How often the reaper looks even without SIGCHLD (a tracked zombie that
/// tokio has not collected yet hides the untracked ones behind it).
const REAP_INTERVAL: Duration = Duration::from_secs(1);

fn tracked() -> MutexGuard<'static, BTreeSet<i32>> {
    TRACKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps a child registered while it lives; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Tracked(i32);

impl Tracked {
    /// The child's pid.
    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.0)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        tracked().remove(&self.0);
    }
}

/// Spawns `command` and registers the child before any reaper can look.
pub(crate) fn spawn_tracked(command: &mut Command) -> io::Result<(Child, Tracked)> {
    let mut set = tracked();
    let child = command.spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| io::Error::other("the child has no pid right after spawn"))?;
    set.insert(pid);
    Ok((child, Tracked(pid)))
}

/// Reaps every exited child that nobody waits for; returns how many.
/// Non-blocking.
pub fn reap_untracked() -> usize {
    let mut reaped = 0;
    loop {
        let set = tracked();
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        let status = match waitid(Id::All, flags) {
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: no children at all
        };
        let Some(pid) = status.pid() else { break }; // none has exited
        if set.contains(&pid.as_raw()) {
            break; // tokio will collect it; look again later
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(_) => {
                reaped += 1;
                tracing::debug!(pid = pid.as_raw(), ?status, "reaped an orphan");
            }
            Err(_) => break,
        }
    }
    reaped
}

/// Reaps orphans on every SIGCHLD and every second, forever. Spawn it when
/// the agent is PID 1.
///
/// # Errors
/// When the SIGCHLD handler cannot be installed.
pub async fn reap_orphans() -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = signal(SignalKind::child())?;
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tick.tick() => {}
        }
        reap_untracked();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn is_zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn reaps_untracked_children_and_leaves_tracked_ones_to_their_waiter() {
        // Arrange: a tracked child and an untracked one, both exited.
        let (mut mine, _guard) = spawn_tracked(Command::new("sh").args(["-c", "exit 7"])).unwrap();
        #[allow(clippy::zombie_processes)] // reaped by the code under test
        let orphan = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_zombie(orphan.id()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(is_zombie(orphan.id()));

        // Act: reap until the orphan is gone (the tracked zombie may hide it).
        let mut status = None;
        while is_zombie(orphan.id()) && Instant::now() < deadline {
            reap_untracked();
            if status.is_none() {
                status = Some(mine.wait().await.unwrap());
            }
        }

        // Assert: the orphan is gone, the tracked child kept its status.
        assert!(!is_zombie(orphan.id()));
        assert_eq!(status.and_then(|s| s.code()), Some(7));
    }
}
