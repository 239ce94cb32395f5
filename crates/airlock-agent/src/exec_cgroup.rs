//! One cgroup (v2) per exec, so that nothing an exec started outlives it.
//!
//! A process group is not enough: user code that calls `setsid()` (or
//! double-forks into a new session) leaves its group, and `killpg` at the
//! end of the exec misses it. A cgroup cannot be left by an unprivileged
//! process: moving needs write access to `cgroup.procs` of both ends and
//! their common ancestor, which belong to root. So each exec gets
//! `<parent>/exec-<n>`; its main process joins it between fork and exec
//! (before it drops to the sandbox user, see [`crate::sys`]), every
//! descendant inherits it, and at the end the whole cgroup is killed with
//! `cgroup.kill` (Linux 5.14 and later; the guest kernel is 6.1 or newer),
//! waited empty (`populated 0` in `cgroup.events`) and removed.
//!
//! No controller is enabled: the cgroup only groups processes. The agent
//! uses one when its configuration names a parent directory
//! ([`crate::AgentConfig::exec_cgroup_parent`]); in the guest, `airlock-init`
//! mounts cgroup2 on `/sys/fs/cgroup` and the agent uses
//! [`DEFAULT_PARENT`].

use crate::AgentError;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Where the agent makes the exec cgroups in the guest.
pub const DEFAULT_PARENT: &str = "/sys/fs/cgroup/airlock-exec";

/// The mount point of the guest's cgroup2 hierarchy.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// Pause between two looks at `cgroup.events` while the cgroup empties.
const EMPTY_POLL: Duration = Duration::from_millis(5);

/// Numbers the exec cgroups of this agent.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Exec cgroups that were dropped while still holding (dying) processes;
/// removed by the next [`ExecCgroup::create`].
static ABANDONED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Whether `path` is on a cgroup2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Makes the parent of the exec cgroups (`mkdir`, existing is fine) after
/// checking that it lies on cgroup2: a directory on another file system
/// would silently hold no process.
///
/// # Errors
/// [`AgentError::Cgroup`] when the parent's directory is not cgroup2 or
/// `mkdir` fails.
pub fn prepare_parent(parent: &Path) -> Result<(), AgentError> {
    let err = |action, source| AgentError::Cgroup {
        action,
        path: parent.to_owned(),
        source,
    };
    let above = parent.parent().unwrap_or(parent);
    if !is_cgroup2(above) {
        return Err(err(
            "check for cgroup2",
            std::io::Error::other(format!("{} is not a cgroup2 mount", above.display())),
        ));
    }
    match std::fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err("create", e)),
    }
    // The pids controller for the exec cgroups, so that each gets a
    // `pids.max`. Where it cannot be had (a host whose pids controller is
    // bound to cgroup v1, as in the agent's host tests) execs still get
    // their cgroup, without the cap.
    for dir in [above, parent] {
        if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), "+pids") {
            tracing::warn!(dir = %dir.display(), error = %e, "no pids controller: execs have no process cap");
            break;
        }
    }
    Ok(())
}

/// The most processes and threads one exec may have at once (its cgroup's
/// `pids.max`): a fork or thread bomb hits it and fails to grow instead of
/// filling the guest until its timeout.
pub const MAX_EXEC_PIDS: u32 = 1024;

/// Whether a `cgroup.events` text says processes are left (`populated 1`).
/// `None` when the text has no `populated` line.
pub fn is_populated(events: &str) -> Option<bool> {
    events.lines().find_map(|line| {
        let value = line.strip_prefix("populated ")?;
        match value.trim() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        }
    })
}

/// The cgroup of one exec. Dropping it kills what is inside (and removes
/// it if it is already empty); [`ExecCgroup::remove`] waits until it is.
#[derive(Debug)]
pub(crate) struct ExecCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open for the child to write `0` into.
    procs: OwnedFd,
    removed: bool,
}

impl ExecCgroup {
    /// Makes a fresh cgroup under `parent` (first removing abandoned ones
    /// that have emptied since). Blocking, but only a few cgroupfs calls.
    ///
    /// # Errors
    /// [`AgentError::Cgroup`] when `parent` is not cgroup2 or the cgroup
    /// cannot be made.
    pub(crate) fn create(parent: &Path) -> Result<Self, AgentError> {
        remove_abandoned();
        if !is_cgroup2(parent) {
            return Err(AgentError::Cgroup {
                action: "check for cgroup2",
                path: parent.to_owned(),
                source: std::io::Error::other("not a cgroup2 directory"),
            });
        }
        let dir = parent.join(format!("exec-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).map_err(|source| AgentError::Cgroup {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let pids_max = dir.join("pids.max");
        if pids_max.exists() {
            if let Err(source) = std::fs::write(&pids_max, MAX_EXEC_PIDS.to_string()) {
                let _ = std::fs::remove_dir(&dir);
                return Err(AgentError::Cgroup {
                    action: "write pids.max",
                    path: dir,
                    source,
                });
            }
        }
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|source| AgentError::Cgroup {
                action: "open cgroup.procs",
                path: dir.clone(),
                source,
            });
        let procs = match procs {
            Ok(file) => OwnedFd::from(file),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(Self {
            dir,
            procs,
            removed: false,
        })
    }

    /// The open `cgroup.procs` (close-on-exec) for the child to join.
    pub(crate) fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The cgroup's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL to every process in the cgroup, at once (`cgroup.kill`: the
    /// kernel also catches processes forking meanwhile). Idempotent.
    pub(crate) fn kill(&self) {
        let result = OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.kill"))
            .and_then(|mut file| file.write_all(b"1"));
        if let Err(error) = result {
            tracing::error!(cgroup = %self.dir.display(), %error, "cgroup.kill failed: processes of this exec may survive it");
        }
    }

    /// SIGKILLs every process of the cgroup but `keep` (a persistent
    /// interpreter: what its cell started must not outlive the cell) and
    /// waits, up to `deadline`, until `keep` is alone. A process forked
    /// while the list is read is caught by the next round.
    ///
    /// # Errors
    /// A message when others are still there at the deadline or
    /// `cgroup.procs` cannot be read.
    pub(crate) async fn kill_all_but(&self, keep: i32, deadline: Duration) -> Result<(), String> {
        let procs = self.dir.join("cgroup.procs");
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let text = tokio::fs::read_to_string(&procs)
                .await
                .map_err(|e| format!("read {}: {e}", procs.display()))?;
            let others = other_pids(&text, keep);
            if others.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(format!(
                    "{} still holds {} process(es) besides the interpreter after {deadline:?}",
                    self.dir.display(),
                    others.len()
                ));
            }
            for pid in others {
                // Gone meanwhile (ESRCH) is what we want.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tokio::time::sleep(EMPTY_POLL).await;
        }
    }

    /// Kills what is left, waits (up to `deadline`) until the cgroup is
    /// empty and removes it.
    ///
    /// # Errors
    /// A message when the cgroup did not empty in time or cannot be read
    /// or removed (it is then left to a later [`ExecCgroup::create`]).
    pub(crate) async fn remove(mut self, deadline: Duration) -> Result<(), String> {
        self.kill();
        let events = self.dir.join("cgroup.events");
        let waited = tokio::time::timeout(deadline, async {
            loop {
                match tokio::fs::read_to_string(&events).await {
                    Ok(text) if is_populated(&text) == Some(false) => return Ok(()),
                    Ok(_) => tokio::time::sleep(EMPTY_POLL).await,
                    Err(e) => return Err(format!("read {}: {e}", events.display())),
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(message),
            Err(_) => {
                return Err(format!(
                    "{} still holds processes {deadline:?} after cgroup.kill",
                    self.dir.display()
                ))
            }
        }
        let dir = self.dir.clone();
        tokio::fs::remove_dir(&dir)
            .await
            .map_err(|e| format!("remove {}: {e}", dir.display()))?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for ExecCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        self.kill();
        // Killed processes take a moment to exit: the next exec retries.
        if std::fs::remove_dir(&self.dir).is_err() {
            ABANDONED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.dir.clone());
        }
    }
}

/// The pids of a `cgroup.procs` text but `keep`.
pub fn other_pids(procs: &str, keep: i32) -> Vec<i32> {
    procs
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
        .filter(|&pid| pid != keep)
        .collect()
}

/// Removes the abandoned cgroups that have emptied; keeps the others.
fn remove_abandoned() {
    let mut abandoned = ABANDONED.lock().unwrap_or_else(PoisonError::into_inner);
    abandoned.retain(|dir| match std::fs::remove_dir(dir) {
        Ok(()) => false,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populated_is_read_from_the_events_text() {
        assert_eq!(is_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(is_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(is_populated("frozen 0\npopulated 0"), Some(false));
        assert_eq!(is_populated("frozen 0\n"), None);
        assert_eq!(is_populated("populated x\n"), None);
        assert_eq!(is_populated(""), None);
    }

    #[test]
    fn other_pids_leave_out_the_kept_one_and_junk() {
        assert_eq!(other_pids("12\n7\n99\n", 7), vec![12, 99]);
        assert_eq!(other_pids("7\n", 7), Vec::<i32>::new());
        assert_eq!(other_pids("", 7), Vec::<i32>::new());
        assert_eq!(other_pids("x\n 5 \n", 7), vec![5]);
    }

    #[test]
    fn a_parent_outside_cgroup2_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("airlock-exec");
        let err = prepare_parent(&parent).unwrap_err();
        assert!(matches!(err, AgentError::Cgroup { .. }), "{err}");
        assert!(err.to_string().contains("cgroup2"), "{err}");
        assert!(!parent.exists());
        let err = ExecCgroup::create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a cgroup2"), "{err}");
    }
}
