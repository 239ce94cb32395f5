//! Signalling a child's process group: the child was spawned as a group
//! leader (`process_group(0)`), so one `killpg` reaches it and everything
//! it started.

use crate::SysError;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// What [`signal_group`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSignal {
    /// The signal went to the group.
    Delivered,
    /// No process is left in the group (`ESRCH`): the expected outcome of
    /// a late or second signal.
    AlreadyGone,
}

/// Sends `signal` to the process group `pgid` (the pid of a child spawned
/// with `process_group(0)`).
///
/// # Errors
/// [`SysError::InvalidProcessGroup`] for 0, 1 and ids beyond `pid_t` (which
/// `killpg` would turn into this process's own group or a broadcast);
/// [`SysError::SignalGroup`] when `killpg` fails otherwise (`EPERM`).
pub fn signal_group(pgid: u32, signal: Signal) -> Result<GroupSignal, SysError> {
    let raw = i32::try_from(pgid)
        .ok()
        .filter(|raw| *raw > 1)
        .ok_or(SysError::InvalidProcessGroup { pgid })?;
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) => Ok(GroupSignal::Delivered),
        Err(Errno::ESRCH) => Ok(GroupSignal::AlreadyGone),
        Err(source) => Err(SysError::SignalGroup {
            pgid,
            signal,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Command;

    #[test]
    fn init_this_group_and_huge_ids_are_refused() {
        for pgid in [0, 1, u32::MAX] {
            assert!(
                matches!(
                    signal_group(pgid, Signal::SIGKILL),
                    Err(SysError::InvalidProcessGroup { .. })
                ),
                "{pgid}"
            );
        }
    }

    #[test]
    fn sigkill_reaches_the_group_leader() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        assert_eq!(
            signal_group(child.id(), Signal::SIGKILL).expect("signal"),
            GroupSignal::Delivered
        );
        assert_eq!(child.wait().expect("wait").signal(), Some(9));
    }

    #[test]
    fn a_group_with_no_process_left_is_already_gone() {
        let mut child = Command::new("true")
            .process_group(0)
            .spawn()
            .expect("spawn true");
        child.wait().expect("wait");
        assert_eq!(
            signal_group(child.id(), Signal::SIGTERM).expect("signal"),
            GroupSignal::AlreadyGone
        );
    }
}
