//! How a child process ended, as a value ([`ChildExit`]) rather than a
//! sentence: callers compare the enum, and its `Display` is the one
//! readable form (`exit code 1`, `killed by signal 6 (SIGABRT)`).

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Neither (a stopped or continued status, which `wait` does not
    /// report for a finished child): the raw wait status.
    Unknown(i32),
}

impl ChildExit {
    /// Reads a status returned by `wait`.
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => Self::Unknown(status.into_raw()),
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }

    /// The exit code, when it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Code(code) => Some(code),
            _ => None,
        }
    }

    /// The signal, when one killed it.
    pub fn signal(self) -> Option<i32> {
        match self {
            Self::Signal(signal) => Some(signal),
            _ => None,
        }
    }

    /// The status a shell would report: the code, or 128 + the signal; -1
    /// when unknown.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signal(signal) => 128 + signal,
            Self::Unknown(_) => -1,
        }
    }
}

impl From<ExitStatus> for ChildExit {
    fn from(status: ExitStatus) -> Self {
        Self::from_status(status)
    }
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(signal) => write!(f, "killed by signal {signal}{}", signal_note(signal)),
            Self::Unknown(_) => f.write_str("unknown status"),
        }
    }
}

/// A name for the signals a sandboxed program commonly dies of.
fn signal_note(signal: i32) -> &'static str {
    use nix::libc;
    match signal {
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGSYS => " (SIGSYS: blocked by seccomp)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_normal_exit_is_its_code() {
        let exit = ChildExit::from_status(ExitStatus::from_raw(256));
        assert_eq!(exit, ChildExit::Code(1));
        assert_eq!(exit.to_string(), "exit code 1");
        assert_eq!(
            (exit.code(), exit.signal(), exit.success()),
            (Some(1), None, false)
        );
        assert!(ChildExit::from_status(ExitStatus::from_raw(0)).success());
    }

    #[test]
    fn a_signal_death_names_the_signal() {
        let exit = ChildExit::from(ExitStatus::from_raw(nix::libc::SIGABRT));
        assert_eq!(exit, ChildExit::Signal(6));
        assert_eq!(exit.to_string(), "killed by signal 6 (SIGABRT)");
        assert_eq!(
            ChildExit::Signal(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(ChildExit::Signal(10).to_string(), "killed by signal 10");
    }

    #[test]
    fn the_shell_code_of_a_signal_death_is_128_plus_the_signal() {
        assert_eq!(ChildExit::Code(3).shell_code(), 3);
        assert_eq!(ChildExit::Signal(9).shell_code(), 137);
        assert_eq!(ChildExit::Unknown(0x137f).shell_code(), -1);
    }

    #[test]
    fn a_stopped_status_is_unknown() {
        // 0x137f: stopped by SIGSTOP (19), as waitpid(WUNTRACED) reports it.
        let exit = ChildExit::from_status(ExitStatus::from_raw(0x137f));
        assert_eq!(exit, ChildExit::Unknown(0x137f));
        assert_eq!(exit.to_string(), "unknown status");
    }
}
