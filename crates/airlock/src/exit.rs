//! How a child process ended, as a type: errors and reports carry it
//! instead of words.

use std::process::ExitStatus;

/// How a child process ended, as the host saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    /// It ended: with an exit code or by a signal.
    Exited(ExitStatus),
    /// Waiting for it failed, so how it ended is unknown.
    Unknown(std::io::ErrorKind),
}

impl ProcessExit {
    /// The outcome of a wait.
    pub fn from_wait(status: std::io::Result<ExitStatus>) -> Self {
        match status {
            Ok(status) => Self::Exited(status),
            Err(e) => Self::Unknown(e.kind()),
        }
    }

    /// Whether it exited with status 0.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Exited(status) if status.success())
    }
}

impl std::fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The platform's own wording ("exit status: 3", "signal: 9 (SIGKILL)").
            Self::Exited(status) => status.fmt(f),
            Self::Unknown(kind) => write!(f, "unknown status: wait failed: {kind}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_exit_reads_as_the_platform_says_it() {
        use std::os::unix::process::ExitStatusExt;
        let code = ProcessExit::from_wait(Ok(ExitStatus::from_raw(3 << 8)));
        let signal = ProcessExit::from_wait(Ok(ExitStatus::from_raw(9)));
        let unknown = ProcessExit::from_wait(Err(std::io::ErrorKind::Interrupted.into()));
        assert_eq!(code.to_string(), "exit status: 3");
        assert!(signal.to_string().starts_with("signal: 9"), "{signal}");
        assert!(unknown.to_string().contains("unknown"), "{unknown}");
        assert!(ProcessExit::Exited(ExitStatus::from_raw(0)).is_success());
        assert!(!code.is_success() && !signal.is_success() && !unknown.is_success());
    }
}
