//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// What a system helper could not do. Each message names the thing that
/// failed and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// No variable names a cache dir.
    #[error(
        "cannot tell where Airlock's cache is: neither AIRLOCK_CACHE_DIR, XDG_CACHE_HOME nor HOME is set; set AIRLOCK_CACHE_DIR"
    )]
    NoCacheDir,

    /// A variable holds a relative path.
    #[error("{var}={value:?} is a relative path: set it to an absolute path (or unset it)")]
    Relative {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: PathBuf,
    },

    /// An identifier is not `[A-Za-z0-9_-]{1,128}`.
    #[error("{value:?} is not a valid id: use 1 to 128 characters of A-Z, a-z, 0-9, '_' or '-'")]
    InvalidId {
        /// The rejected value.
        value: String,
    },

    /// A program could not be started.
    #[error("cannot run {program:?}: {source}; check that it is installed and executable")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Waiting for a started program (or reading its output) failed.
    #[error("cannot wait for {program:?}: {source}")]
    Wait {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A program did not finish before its deadline; it was killed.
    #[error(
        "{program:?} did not finish within {deadline:?} and was killed; is the host overloaded?"
    )]
    Timeout {
        /// The program.
        program: PathBuf,
        /// The deadline it missed.
        deadline: Duration,
    },

    /// A process group id that must never be signalled (0 and 1 would
    /// reach this process's own group or every process).
    #[error(
        "refusing to signal process group {pgid}: it is not a child's group (a bug in the caller)"
    )]
    InvalidProcessGroup {
        /// The refused id.
        pgid: u32,
    },

    /// `killpg` failed for another reason than the group being gone.
    #[error(
        "cannot send {signal} to process group {pgid}: {source}; does it belong to another user?"
    )]
    SignalGroup {
        /// The group.
        pgid: u32,
        /// The signal.
        signal: nix::sys::signal::Signal,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
}

impl SysError {
    /// This error as an `io::Error`, for callers whose own error enum wraps
    /// an OS error: the OS error itself for [`SysError::Spawn`] and
    /// [`SysError::Wait`], a `TimedOut` error for [`SysError::Timeout`],
    /// and an `Other` error carrying this one otherwise.
    pub fn into_io_error(self) -> std::io::Error {
        match self {
            Self::Spawn { source, .. } | Self::Wait { source, .. } => source,
            Self::SignalGroup { source, .. } => source.into(),
            timeout @ Self::Timeout { .. } => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, timeout)
            }
            other => std::io::Error::other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_errors_give_back_the_os_error() {
        let err = SysError::Spawn {
            program: "/x".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::ENOENT),
        };
        assert_eq!(err.into_io_error().raw_os_error(), Some(nix::libc::ENOENT));
    }

    #[test]
    fn a_timeout_becomes_a_timed_out_io_error_that_keeps_the_message() {
        let err = SysError::Timeout {
            program: "/bin/sleep".into(),
            deadline: Duration::from_secs(1),
        };
        let io = err.into_io_error();
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
        assert!(io.to_string().contains("/bin/sleep"), "{io}");
    }

    #[test]
    fn an_invalid_id_message_says_what_is_allowed() {
        let err = SysError::InvalidId {
            value: "a/b".into(),
        };
        assert!(err.to_string().contains("A-Z, a-z, 0-9"), "{err}");
    }
}
