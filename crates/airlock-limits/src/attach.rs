//! Attaching a child to its group before it execs: everything is prepared
//! in the parent (files opened, values computed) so that the code running
//! between fork and exec only makes async-signal-safe syscalls and never
//! allocates.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::resource::RlimitSetting;
use crate::sys::{raw_resource, rlim};

/// What a child must do between fork and exec to start inside its group:
/// write `0` (meaning "the writing process") to each hierarchy's
/// `cgroup.procs`, then set its rlimits.
///
/// Built by [`crate::VmGroup::pre_exec_hook`]; install it with
/// [`PreExecHook::install`] or [`PreExecHook::install_tokio`]. If any step
/// fails in the child, the spawn fails with that OS error, so a process
/// never runs outside its group.
#[derive(Debug)]
pub struct PreExecHook {
    procs_files: Vec<OwnedFd>,
    rlimits: Vec<RlimitSetting>,
}

impl PreExecHook {
    /// Opens every `cgroup.procs` (close-on-exec, so the child does not
    /// inherit them past exec) and keeps the rlimits to set.
    pub(crate) fn new(
        procs_paths: &[PathBuf],
        rlimits: Vec<RlimitSetting>,
    ) -> Result<Self, (PathBuf, io::Error)> {
        let procs_files = procs_paths
            .iter()
            .map(|p| open_for_write(p).map_err(|e| (p.clone(), e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            procs_files,
            rlimits,
        })
    }

    /// The rlimits the child will get.
    pub fn rlimits(&self) -> &[RlimitSetting] {
        &self.rlimits
    }

    /// How many `cgroup.procs` files the child will join (0 for rlimits).
    pub fn group_files(&self) -> usize {
        self.procs_files.len()
    }

    /// The child-side work. Only `write` and `setrlimit`, both
    /// async-signal-safe; no allocation (`io::Error::last_os_error` builds
    /// an inline OS error).
    fn run_in_child(&self) -> io::Result<()> {
        for fd in &self.procs_files {
            // SAFETY: the fd is open (owned by self, alive until the
            // Command is dropped) and the buffer is a 1-byte static.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        for s in &self.rlimits {
            let r = libc::rlimit {
                rlim_cur: rlim(s.soft),
                rlim_max: rlim(s.hard),
            };
            // SAFETY: `r` is a valid rlimit struct on the stack.
            if unsafe { libc::setrlimit(raw_resource(s.resource), &r) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Installs the hook on a std `Command`.
    pub fn install(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure only calls `run_in_child`, which makes
        // async-signal-safe syscalls on pre-opened fds and stack values and
        // does not allocate or take locks, as required between fork and
        // exec.
        unsafe {
            cmd.pre_exec(move || self.run_in_child());
        }
    }

    /// Installs the hook on a tokio `Command`.
    pub fn install_tokio(self, cmd: &mut tokio::process::Command) {
        // SAFETY: as for `install`: the closure is async-signal-safe and
        // allocation-free.
        unsafe {
            cmd.pre_exec(move || self.run_in_child());
        }
    }
}

fn open_for_write(path: &Path) -> io::Result<OwnedFd> {
    // std opens with O_CLOEXEC.
    Ok(OpenOptions::new().write(true).open(path)?.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Resource;
    use std::process::Command;

    #[test]
    fn child_writes_zero_to_each_procs_file_and_gets_rlimits() {
        // Arrange: plain files standing in for two hierarchies.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.procs");
        let b = dir.path().join("b.procs");
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let hook = PreExecHook::new(
            &[a.clone(), b.clone()],
            vec![RlimitSetting {
                resource: Resource::OpenFiles,
                soft: 77,
                hard: 77,
            }],
        )
        .unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ulimit -n"]);
        hook.install(&mut cmd);

        // Act
        let out = cmd.output().unwrap();

        // Assert
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "77");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "0");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "0");
    }

    #[test]
    fn spawn_fails_when_the_child_cannot_join() {
        // /dev/full refuses every write with ENOSPC.
        let hook = PreExecHook::new(&[PathBuf::from("/dev/full")], vec![]).unwrap();
        let mut cmd = Command::new("true");
        hook.install(&mut cmd);
        let err = cmd.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn missing_procs_file_is_reported_with_its_path() {
        let (path, _) =
            PreExecHook::new(&[PathBuf::from("/nonexistent/cgroup.procs")], vec![]).unwrap_err();
        assert_eq!(path, PathBuf::from("/nonexistent/cgroup.procs"));
    }
}
