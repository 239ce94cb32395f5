//! The private work dir of one VM: every per-VM file (overlay, sockets,
//! logs) lives there, so destroying a VM is one directory removal.

use crate::error::{Error, Result};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One VM's work dir (mode 0700).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// The dir holding every VM's work dir.
    pub fn vms_dir(run_dir: &Path) -> PathBuf {
        run_dir.join("vms")
    }

    /// Creates `run_dir/vms/<vm_id>` with mode 0700 (and its parents, also
    /// private).
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory.
    pub fn create(run_dir: &Path, vm_id: &str) -> Result<Self> {
        let vms = Self::vms_dir(run_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&vms)
            .map_err(|e| Error::io("create", &vms, e))?;
        let path = vms.join(vm_id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        // The umask may have narrowed nothing, but never widened: make sure.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod", &path, e))?;
        Ok(Self { path })
    }

    /// [`WorkDir::create`] on tokio's blocking pool (for async code).
    ///
    /// # Errors
    /// As [`WorkDir::create`].
    pub async fn create_async(run_dir: &Path, vm_id: &str) -> Result<Self> {
        let (run_dir, vm_id) = (run_dir.to_path_buf(), vm_id.to_owned());
        let path = Self::vms_dir(&run_dir).join(&vm_id);
        tokio::task::spawn_blocking(move || Self::create(&run_dir, &vm_id))
            .await
            .map_err(|e| Error::io("create", path, std::io::Error::other(e)))?
    }

    /// A work dir at `path`, not created (for what is built from its paths
    /// alone: tests, a memory template's fixed argv).
    pub(crate) fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The qcow2 overlay QEMU opens as the root disk.
    pub fn overlay(&self) -> PathBuf {
        self.path.join("root.qcow2")
    }

    /// The socket of the `airlock.cmd` port.
    pub fn cmd_socket(&self) -> PathBuf {
        self.path.join("cmd.sock")
    }

    /// The socket of the `airlock.event` port.
    pub fn event_socket(&self) -> PathBuf {
        self.path.join("event.sock")
    }

    /// QEMU's QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// The guest's serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// QEMU's own stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }

    /// QEMU's pid, for sweeping after a crash.
    pub fn pid_file(&self) -> PathBuf {
        self.path.join("qemu.pid")
    }

    /// Removes the dir and everything in it. Returns whether it existed.
    ///
    /// # Errors
    /// The removal's I/O error (other than "not found").
    pub fn remove(&self) -> std::io::Result<bool> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl WorkDir {
    /// [`WorkDir::remove`] through tokio (for async code).
    ///
    /// # Errors
    /// As [`WorkDir::remove`].
    pub async fn remove_async(&self) -> std::io::Result<bool> {
        match tokio::fs::remove_dir_all(&self.path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Removes the work dirs of VMs whose QEMU is gone (left by a crashed
/// airlock), and returns them. Dirs whose QEMU still runs are left alone:
/// another airlock process may own them.
pub fn sweep_stale(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(WorkDir::vms_dir(run_dir)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let pid = std::fs::read_to_string(path.join("qemu.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let alive = pid.is_some_and(|pid| process_runs_in(pid, &path));
        // A dir without a pid file may be one being set up right now by
        // another process: only sweep it once it is old.
        let young = pid.is_none()
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() < 600);
        if !alive && !young && std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!(dir = %path.display(), "swept a stale VM work dir");
            removed.push(path);
        }
    }
    removed
}

/// Removes the subdirectories of `dir` named `<pid>` or `<pid>-<anything>`
/// whose pid no longer runs (per-process dirs such as the overlay pools of
/// crashed airlocks).
pub fn sweep_dead_process_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "swept the dir of a dead airlock process")
                }
                Err(e) => tracing::warn!(dir = %entry.path().display(), error = %e, "cannot sweep"),
            }
        }
    }
}

/// Whether `pid` is alive and its command line mentions `dir` (so a reused
/// pid is not mistaken for our QEMU).
fn process_runs_in(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_dir_is_private_and_removable() {
        let run = tempfile::tempdir().unwrap();
        let wd = WorkDir::create(run.path(), "abc").unwrap();
        let mode = std::fs::metadata(wd.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(wd.console_log(), b"x").unwrap();
        assert!(wd.remove().unwrap());
        assert!(!wd.remove().unwrap(), "second removal is a no-op");
    }

    #[test]
    fn creating_the_same_vm_twice_fails() {
        let run = tempfile::tempdir().unwrap();
        WorkDir::create(run.path(), "abc").unwrap();
        assert!(WorkDir::create(run.path(), "abc").is_err());
    }

    #[test]
    fn dirs_of_dead_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join(format!("{}-abc", std::process::id()));
        let dead = dir.path().join("999999999-abc");
        let other = dir.path().join("not-a-pid");
        for d in [&ours, &dead, &other] {
            std::fs::create_dir(d).unwrap();
        }
        sweep_dead_process_dirs(dir.path());
        assert!(ours.exists() && other.exists());
        assert!(!dead.exists());
    }

    #[test]
    fn sweep_removes_dirs_of_dead_qemus_only() {
        let run = tempfile::tempdir().unwrap();
        let dead = WorkDir::create(run.path(), "dead").unwrap();
        std::fs::write(dead.pid_file(), "999999999").unwrap();
        let live = WorkDir::create(run.path(), "live").unwrap();
        // Our own process does not mention the dir: stands for a reused pid.
        std::fs::write(live.pid_file(), std::process::id().to_string()).unwrap();
        let fresh = WorkDir::create(run.path(), "fresh").unwrap();
        let removed = sweep_stale(run.path());
        assert!(removed.contains(&dead.path().to_path_buf()));
        assert!(removed.contains(&live.path().to_path_buf()));
        assert!(
            fresh.path().exists(),
            "a young dir without pid is being set up"
        );
    }
}
