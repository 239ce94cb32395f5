//! [`ExecError`]: talking to a ready VM failed (running code, moving a
//! file): the part runs and sessions share.

use airlock_protocol::ProtocolError;
use airlock_sys_util::ChildExit;

/// Running code in a ready VM, or moving a file in or out of it, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// QEMU exited while the VM ran code.
    #[error("vm {vm_id}: QEMU exited ({}) during exec\n--- qemu stderr (tail) ---\n{stderr_tail}\n--- console (tail) ---\n{console_tail}", exit_text(.status))]
    VmDied {
        /// The VM.
        vm_id: String,
        /// How QEMU ended; `None` when waiting for it failed, so that how
        /// it ended is unknown.
        status: Option<ChildExit>,
        /// The end of QEMU's stderr.
        stderr_tail: String,
        /// The end of the guest console log.
        console_tail: String,
    },
    /// Talking to the guest agent failed.
    #[error("vm {vm_id}: {source}")]
    Protocol {
        /// The VM.
        vm_id: String,
        /// What the agent or its channel said.
        #[source]
        source: ProtocolError,
    },
    /// A file could not be moved to or from the guest (refused path,
    /// missing file, symlink out of the home, checksum mismatch, size cap).
    #[error("vm {vm_id}: {action} guest file {path:?}: {source}")]
    File {
        /// The VM.
        vm_id: String,
        /// The guest path, relative to the sandbox home.
        path: String,
        /// `read`, `write` or `list`.
        action: &'static str,
        /// What the agent or the channel said.
        #[source]
        source: ProtocolError,
    },
    /// A run's uploads were not all written within their overall
    /// deadline ([`crate::RunRequest::upload_timeout`]).
    #[error("vm {vm_id}: the run's {files} uploaded file(s) were not written within {:.1} s", .timeout.as_secs_f64())]
    UploadTimeout {
        /// The VM.
        vm_id: String,
        /// How many files the run uploads.
        files: usize,
        /// The deadline.
        timeout: std::time::Duration,
    },
}

impl ExecError {
    /// Whether the VM is lost (it died, or its agent's channel closed,
    /// timed out or broke) rather than the call refused: a new VM may
    /// succeed where this one failed.
    pub fn is_vm_lost(&self) -> bool {
        match self {
            Self::VmDied { .. } => true,
            Self::Protocol { source, .. } => is_lost_channel(source),
            Self::File { .. } | Self::UploadTimeout { .. } => false,
        }
    }

    /// A one-line hint for the user, shown by the CLI under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::VmDied { .. } => {
                Some("run `airlock doctor` to check the host, or retry with --debug")
            }
            Self::File { .. } => Some(
                "guest paths are relative to the sandbox home; symlinks leading out of it are refused",
            ),
            Self::UploadTimeout { .. } => {
                Some("upload fewer or smaller files with the run, or give them a longer deadline")
            }
            Self::Protocol { .. } => None,
        }
    }
}

/// Whether the agent's channel was lost (closed, timed out, broken) rather
/// than refused: what a new VM may not meet.
pub(super) fn is_lost_channel(source: &ProtocolError) -> bool {
    matches!(
        source,
        ProtocolError::Closed | ProtocolError::Timeout { .. } | ProtocolError::Io(_)
    )
}

/// How a child ended, in words; "unknown" when its wait failed.
pub(super) fn exit_text(status: &Option<ChildExit>) -> String {
    status.map_or_else(
        || "unknown status: wait failed".to_owned(),
        |exit| exit.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_vm_that_died_during_an_exec_is_lost_and_says_when() {
        let err = ExecError::VmDied {
            vm_id: "vm-1".into(),
            status: Some(ChildExit::Signal(9)),
            stderr_tail: "oops".into(),
            console_tail: String::new(),
        };
        let msg = err.to_string();
        assert!(
            msg.starts_with("vm vm-1: QEMU exited (killed by signal 9")
                && msg.contains("during exec"),
            "{msg}"
        );
        assert!(err.is_vm_lost());
        assert!(err.hint().is_some());
    }

    #[test]
    fn a_refused_file_is_not_a_lost_vm() {
        let err = ExecError::File {
            vm_id: "vm-1".into(),
            path: "../x".into(),
            action: "read",
            source: ProtocolError::Timeout {
                what: "read".into(),
                after: Duration::from_secs(1),
            },
        };
        assert!(!err.is_vm_lost());
        assert!(err.hint().is_some_and(|h| h.contains("sandbox home")));
    }

    #[test]
    fn a_closed_channel_is_a_lost_vm() {
        let err = ExecError::Protocol {
            vm_id: "vm-1".into(),
            source: ProtocolError::Closed,
        };
        assert!(err.is_vm_lost());
        assert!(err.to_string().starts_with("vm vm-1: "), "{err}");
    }
}
