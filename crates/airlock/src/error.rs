//! The crate's error type.

use airlock_protocol::ProtocolError;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can make a run fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was refused before anything started.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The field at fault (`language`, `code`, `memory_mib`, ...).
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The guest images are missing or incomplete.
    #[error("guest images missing in {dir}: {what}; build them with `cargo xtask images` (or set AIRLOCK_IMAGES)")]
    ImagesMissing {
        /// The images dir looked at.
        dir: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A host dependency is missing.
    #[error("{what} not found: {hint}")]
    MissingDependency {
        /// The missing program or file.
        what: String,
        /// How to fix it.
        hint: String,
    },
    /// A file-system step failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("vm {vm_id}: cannot start {program}: {source}")]
    Spawn {
        /// The VM.
        vm_id: String,
        /// The program.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited before the guest was ready or while it ran.
    #[error("vm {vm_id}: QEMU exited ({status}) {when}\n--- qemu stderr (tail) ---\n{stderr_tail}\n--- console (tail) ---\n{console_tail}")]
    VmDied {
        /// The VM.
        vm_id: String,
        /// When it died ("during boot", "during exec").
        when: &'static str,
        /// QEMU's exit status.
        status: String,
        /// The end of QEMU's stderr.
        stderr_tail: String,
        /// The end of the guest console log.
        console_tail: String,
    },
    /// The guest agent did not answer in time.
    #[error("vm {vm_id}: guest agent not ready after {after:?}\n--- qemu stderr (tail) ---\n{stderr_tail}\n--- console (tail) ---\n{console_tail}")]
    BootTimeout {
        /// The VM.
        vm_id: String,
        /// The deadline that passed.
        after: Duration,
        /// The end of QEMU's stderr.
        stderr_tail: String,
        /// The end of the guest console log.
        console_tail: String,
    },
    /// A channel socket's peer is not our QEMU.
    #[error("vm {vm_id}: socket {path} is served by pid {peer_pid}, not by our QEMU (pid {qemu_pid}): refusing it")]
    PeerMismatch {
        /// The VM.
        vm_id: String,
        /// The socket.
        path: PathBuf,
        /// The peer's pid.
        peer_pid: i32,
        /// Our QEMU's pid.
        qemu_pid: u32,
    },
    /// Building the QEMU command line or probing the host failed.
    #[error(transparent)]
    Qemu(#[from] airlock_qemu::QemuError),
    /// Taking a disk overlay failed.
    #[error(transparent)]
    Overlay(#[from] airlock_overlay::OverlayError),
    /// Setting up a VM's limits group failed.
    #[error(transparent)]
    Limits(#[from] airlock_limits::LimitsError),
    /// The VM's network (gvproxy, egress proxy) could not be set up.
    #[error("vm {vm_id}: network: {source}")]
    Network {
        /// The VM.
        vm_id: String,
        /// What went wrong.
        #[source]
        source: airlock_gvproxy::GvproxyError,
    },
    /// The VM's egress proxy could not be started.
    #[error("vm {vm_id}: network: {source}")]
    Egress {
        /// The VM.
        vm_id: String,
        /// What went wrong.
        #[source]
        source: airlock_egress::EgressError,
    },
    /// Talking to the guest agent failed.
    #[error("vm {vm_id}: {source}")]
    Protocol {
        /// The VM.
        vm_id: String,
        /// The protocol error.
        #[source]
        source: ProtocolError,
    },
}

impl Error {
    /// Whether trying again may succeed (a boot that died or hung), as
    /// opposed to a permanent error (bad input, missing dependency).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::VmDied { .. } | Error::BootTimeout { .. } => true,
            Error::Protocol { source, .. } => {
                matches!(
                    source,
                    ProtocolError::Closed | ProtocolError::Timeout { .. } | ProtocolError::Io(_)
                )
            }
            _ => false,
        }
    }

    /// A one-line hint for the user, shown by the CLI under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::InvalidInput { .. } => Some("see `airlock run --help`"),
            Error::Network { .. } | Error::Egress { .. } => Some(
                "network modes need gvproxy (`cargo xtask test` or `demo` fetches it) and root or user namespaces; see docs/network.md",
            ),
            Error::ImagesMissing { .. } => {
                Some("run `cargo xtask images` to build the guest images")
            }
            Error::VmDied { .. } | Error::BootTimeout { .. } => {
                Some("run `airlock doctor` to check the host, or retry with --debug")
            }
            _ => None,
        }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            message: message.into(),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
