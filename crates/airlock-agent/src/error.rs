//! The crate's error type: one enum, each variant maps to the protocol's
//! [`ErrorKind`] reported to the host.

use airlock_protocol::{ErrorKind, OpId};
use airlock_sys_util::IoError;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in the agent. The `Display` text is what the
/// host sees in the `error` event's `message`.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A configuration value is out of range.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// A request is well formed but one of its values is not acceptable.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An environment variable was refused.
    #[error("environment variable {name:?} refused: {reason}")]
    EnvRefused {
        /// The variable's name (possibly cut to 64 bytes).
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A path was refused: absolute, `..`, NUL, or resolving outside the home.
    #[error("path {path:?} refused: {reason} (paths are relative to the sandbox home)")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// The path does not exist in the sandbox home.
    #[error("{path:?} not found in the sandbox home")]
    NotFound {
        /// The path as given.
        path: String,
    },
    /// A size limit was reached.
    #[error("{what} exceeds the limit of {limit_bytes} bytes")]
    LimitExceeded {
        /// What went over.
        what: String,
        /// The limit.
        limit_bytes: u64,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The interpreter or package manager could not be started.
    #[error(
        "cannot start {program}: {source} (is it installed in the guest image, and may the \
         sandbox user enter the working directory?)"
    )]
    Spawn {
        /// The program.
        program: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// A request does not fit the operation's state (op id in flight, chunk
    /// without an open write).
    #[error("{0}")]
    BadState(String),
    /// The request cannot be served here (e.g. packages for `raw`).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// No virtio-serial port with that name showed up.
    #[error(
        "virtio-serial port {name:?} not found under {sys_dir} within {waited:?}: \
         does the VM have `-device virtserialport,name={name}`?"
    )]
    PortNotFound {
        /// The port name looked for.
        name: String,
        /// The sysfs directory read.
        sys_dir: PathBuf,
        /// How long the agent looked.
        waited: Duration,
    },
    /// The cgroup that holds an exec's processes could not be made, joined
    /// or killed.
    #[error(
        "exec cgroup {}: {action} failed: {source} (is cgroup2 mounted there and the agent root?)",
        path.display()
    )]
    Cgroup {
        /// What the agent was doing (`create`, `open cgroup.procs`, `kill`...).
        action: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The command or event stream failed.
    #[error("transport failed: {0}")]
    Transport(#[source] std::io::Error),
    /// A bug in the agent (a task panicked, a channel closed early).
    #[error("internal agent error on op {op}: {message}")]
    Internal {
        /// The operation.
        op: OpId,
        /// What happened.
        message: String,
    },
}

impl AgentError {
    /// The kind reported to the host in the `error` event.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) | Self::InvalidRequest(_) => ErrorKind::InvalidRequest,
            Self::EnvRefused { .. } => ErrorKind::EnvRefused,
            Self::InvalidPath { .. } => ErrorKind::InvalidPath,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::LimitExceeded { .. } => ErrorKind::LimitExceeded,
            Self::Io(_) | Self::PortNotFound { .. } | Self::Transport(_) => ErrorKind::Io,
            Self::Spawn { .. } => ErrorKind::SpawnFailed,
            Self::BadState(_) => ErrorKind::BadState,
            Self::Unsupported(_) => ErrorKind::Unsupported,
            Self::Internal { .. } | Self::Cgroup { .. } => ErrorKind::Internal,
        }
    }

    /// An [`AgentError::InvalidPath`].
    pub(crate) fn invalid_path(path: &str, reason: impl Into<String>) -> Self {
        Self::InvalidPath {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// Classifies a system error met while resolving or opening `path`
    /// beneath the home: escapes and symlink loops are refused paths, a
    /// missing component is "not found", the rest is I/O.
    pub(crate) fn from_resolve(path: &str, action: &'static str, err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EXDEV) => Self::invalid_path(path, "it leads outside the sandbox home"),
            Some(libc::ELOOP) => Self::invalid_path(
                path,
                "it goes through a symlink that is not allowed (loop, magic link, or outside the home)",
            ),
            Some(libc::ENOTDIR) => Self::invalid_path(path, "a parent component is not a directory"),
            Some(libc::ENOENT) => Self::NotFound {
                path: path.to_owned(),
            },
            _ => IoError::new(action, path, err).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_errors_map_to_protocol_kinds() {
        let kind = |errno| AgentError::from_resolve("p", "open", errno_err(errno)).kind();
        assert_eq!(kind(libc::EXDEV), ErrorKind::InvalidPath);
        assert_eq!(kind(libc::ELOOP), ErrorKind::InvalidPath);
        assert_eq!(kind(libc::ENOTDIR), ErrorKind::InvalidPath);
        assert_eq!(kind(libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(kind(libc::EACCES), ErrorKind::Io);
    }

    #[test]
    fn messages_name_the_subject() {
        let err = AgentError::EnvRefused {
            name: "LD_PRELOAD".into(),
            reason: "loader injection".into(),
        };
        assert!(err.to_string().contains("LD_PRELOAD"));
        let err = AgentError::from_resolve("../x", "open", errno_err(libc::EXDEV));
        assert!(err.to_string().contains("\"../x\""));
    }

    fn errno_err(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }
}
