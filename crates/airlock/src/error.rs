//! The crate's error type: one enum, each variant with the context a user
//! needs (VM id, path) and, through [`Error::hint`], what to do about it.
//! [`Error::is_transient`] is what the boot retries go by (see
//! `docs/architecture.md`, "Retries").

use airlock_protocol::ProtocolError;
use airlock_sys_util::ChildExit;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can make a run fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was refused before anything started.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The field at fault (`language`, `code`, `memory_mib`, ...).
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The configuration is not usable (raised by [`crate::Config::validate`]
    /// only).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The VM manager was shut down: it boots no more VMs.
    #[error("the VM manager is shut down")]
    ShutDown,
    /// Every VM slot stayed taken for the whole queue timeout.
    #[error("no VM slot became free within {waited:?} ({slots} VMs at once at most)")]
    QueueTimeout {
        /// How long the run waited.
        waited: Duration,
        /// The number of slots ([`crate::Config::max_concurrent_vms`]).
        slots: usize,
    },
    /// A helper task of the orchestrator failed (panicked or was cancelled).
    #[error("{task} failed: {message}")]
    TaskFailed {
        /// What the task was doing.
        task: &'static str,
        /// Why it failed.
        message: String,
    },
    /// A host port for an exposed guest port could not be served.
    #[error("vm {vm_id}: {action} {addr}: {source}")]
    ExposeBind {
        /// The VM.
        vm_id: String,
        /// What was being done.
        action: &'static str,
        /// The host address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The guest images are missing or incomplete.
    #[error("guest images missing in {dir}: {what}; build them with `cargo xtask images` (or set AIRLOCK_IMAGES)")]
    ImagesMissing {
        /// The images dir looked at.
        dir: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A file-system step failed.
    #[error(transparent)]
    Io(#[from] airlock_sys_util::IoError),
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
    #[error("vm {vm_id}: QEMU exited ({}) {when}\n--- qemu stderr (tail) ---\n{stderr_tail}\n--- console (tail) ---\n{console_tail}", exit_text(.status))]
    VmDied {
        /// The VM.
        vm_id: String,
        /// When it died ("during boot", "during exec").
        when: &'static str,
        /// How QEMU ended; `None` when waiting for it failed, so that how
        /// it ended is unknown.
        status: Option<ChildExit>,
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
    /// A boot attempt did not finish by its deadline (plus
    /// [`crate::retry::CUT_SLACK`]): a step before the agent wait hung, and
    /// the attempt was cut (what it made is torn down by the reaper).
    #[error(
        "boot attempt {attempt} cut after {after:?}: a step before the guest agent wait \
         (disk overlay, limits group, network, machine start) did not finish"
    )]
    AttemptTimeout {
        /// The attempt (from 1).
        attempt: u32,
        /// How long it ran.
        after: Duration,
    },
    /// A channel socket's peer is not our QEMU.
    #[error(
        "vm {vm_id}: socket {path} is served by pid {peer_pid} uid {peer_uid}, not by our QEMU \
         (pid {qemu_pid} uid {our_uid}): refusing it"
    )]
    PeerMismatch {
        /// The VM.
        vm_id: String,
        /// The socket.
        path: PathBuf,
        /// The peer's pid.
        peer_pid: i32,
        /// Our QEMU's pid.
        qemu_pid: u32,
        /// The peer's uid.
        peer_uid: u32,
        /// Our uid (QEMU's).
        our_uid: u32,
    },
    /// A QEMU step failed: probing the host, building the command line,
    /// a QMP command.
    #[error("{}{action}: {source}", vm_prefix(.vm_id))]
    Qemu {
        /// The VM, when the step was for one.
        vm_id: Option<String>,
        /// What was being done.
        action: &'static str,
        /// What QEMU, its probe or its QMP socket said (boxed: the error enum stays
        /// small).
        #[source]
        source: Box<airlock_qemu::QemuError>,
    },
    /// Restoring a VM from a memory template failed over QMP (the caller
    /// boots cold instead and drops the template for a rebuild).
    #[error("vm {vm_id}: restore from template {template} failed: {source}")]
    Restore {
        /// The VM.
        vm_id: String,
        /// The template's key.
        template: String,
        /// What QEMU or its QMP socket said (boxed: the error enum stays
        /// small).
        #[source]
        source: Box<airlock_qemu::QemuError>,
    },
    /// A disk overlay step failed (starting the overlay pool, taking an
    /// overlay for a VM).
    #[error("{}{action}: {source}", vm_prefix(.vm_id))]
    Overlay {
        /// The VM, when the step was for one.
        vm_id: Option<String>,
        /// What was being done.
        action: &'static str,
        /// What the overlay pool said (boxed: the error enum stays
        /// small).
        #[source]
        source: Box<airlock_overlay::OverlayError>,
    },
    /// A limits-group step failed (creating, joining or moving a VM's
    /// group).
    #[error("{}{action}: {source}", vm_prefix(.vm_id))]
    Limits {
        /// The VM, when the step was for one.
        vm_id: Option<String>,
        /// What was being done.
        action: &'static str,
        /// What the limits crate said (boxed: the error enum stays
        /// small).
        #[source]
        source: Box<airlock_limits::LimitsError>,
    },
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
    /// A file could not be moved to or from the guest (refused path,
    /// missing file, symlink out of the home, checksum mismatch, size cap).
    #[error("vm {vm_id}: {action} guest file {path:?}: {source}")]
    File {
        /// The VM.
        vm_id: String,
        /// The guest path, relative to the sandbox home.
        path: String,
        /// `read` or `write`.
        action: &'static str,
        /// What the agent or the channel said.
        #[source]
        source: ProtocolError,
    },
    /// A session already runs a call (an exec or a file operation): one
    /// call at a time, a second one is refused at once, never queued.
    #[error("session {session_id} is busy: it runs one call at a time")]
    SessionBusy {
        /// The session.
        session_id: String,
    },
    /// The session has ended (closed, idle too long, past its lifetime, or
    /// its VM died): every call is refused.
    #[error("session {session_id} is closed: {reason}")]
    SessionClosed {
        /// The session.
        session_id: String,
        /// Why it ended.
        reason: crate::close::CloseReason,
    },
    /// A package spec was refused before anything started (unpinned,
    /// a range, a URL, an option, a bad name).
    #[error("package {spec:?} refused: {reason}")]
    PackageSpec {
        /// The spec (cut to 80 characters).
        spec: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// Installing a package list into a layer failed (the package manager
    /// failed, the registry was unreachable, the layer could not be
    /// stored).
    #[error("installing {packages} failed{}: {reason}", .vm_id.as_ref().map(|v| format!(" in vm {v}")).unwrap_or_default())]
    PackageInstall {
        /// The install VM, when one ran.
        vm_id: Option<String>,
        /// The package list, as given to the package manager.
        packages: String,
        /// What went wrong (with the package manager's output tail).
        reason: String,
    },
    /// A warm pool was shut down: it hands out no more VMs.
    #[error("the warm pool of {shape} is shut down")]
    PoolDrained {
        /// The pool's shape.
        shape: String,
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
            Error::VmDied { .. } | Error::BootTimeout { .. } | Error::AttemptTimeout { .. } => true,
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
            Error::VmDied { .. } | Error::BootTimeout { .. } | Error::AttemptTimeout { .. } => {
                Some("run `airlock doctor` to check the host, or retry with --debug")
            }
            Error::QueueTimeout { .. } => {
                Some("raise max_concurrent_vms, or retry when fewer runs are in flight")
            }
            Error::ExposeBind { .. } => Some("choose another host port, or let Airlock pick one"),
            Error::File { .. } => Some(
                "guest paths are relative to the sandbox home; symlinks leading out of it are refused",
            ),
            Error::SessionBusy { .. } => Some(
                "wait for the running call to end, or interrupt it with the session's canceller",
            ),
            Error::SessionClosed { .. } => Some("start a new session"),
            Error::PackageSpec { .. } => Some(
                "pin every package exactly: pip name==version, npm name@version; see docs/packages.md",
            ),
            Error::PackageInstall { .. } => Some(
                "check the names and versions exist on the registry; behind a TLS-inspecting proxy pass its CA with --ca-bundle; see docs/packages.md",
            ),
            Error::PoolDrained { .. } | Error::ShutDown => {
                Some("it was shut down (Scheduler::shutdown): start a new Scheduler")
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

    /// A mapper wrapping a QEMU error in [`Error::Qemu`] with its context.
    pub(crate) fn qemu(
        vm_id: Option<&str>,
        action: &'static str,
    ) -> impl FnOnce(airlock_qemu::QemuError) -> Self {
        let vm_id = vm_id.map(str::to_owned);
        move |source| Error::Qemu {
            vm_id,
            action,
            source: Box::new(source),
        }
    }

    /// A mapper wrapping an overlay error in [`Error::Overlay`] with its
    /// context.
    pub(crate) fn overlay(
        vm_id: Option<&str>,
        action: &'static str,
    ) -> impl FnOnce(airlock_overlay::OverlayError) -> Self {
        let vm_id = vm_id.map(str::to_owned);
        move |source| Error::Overlay {
            vm_id,
            action,
            source: Box::new(source),
        }
    }

    /// A mapper wrapping a limits error in [`Error::Limits`] with its
    /// context.
    pub(crate) fn limits(
        vm_id: Option<&str>,
        action: &'static str,
    ) -> impl FnOnce(airlock_limits::LimitsError) -> Self {
        let vm_id = vm_id.map(str::to_owned);
        move |source| Error::Limits {
            vm_id,
            action,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io(airlock_sys_util::IoError::new(action, path, source))
    }
}

/// `vm ID: ` when the error is about one VM, nothing otherwise.
fn vm_prefix(vm_id: &Option<String>) -> String {
    vm_id
        .as_deref()
        .map_or_else(String::new, |id| format!("vm {id}: "))
}

/// How a child ended, in words; "unknown" when its wait failed.
fn exit_text(status: &Option<ChildExit>) -> String {
    status.map_or_else(
        || "unknown status: wait failed".to_owned(),
        |exit| exit.to_string(),
    )
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn died_with(status: Option<ChildExit>) -> Error {
        Error::VmDied {
            vm_id: "vm".into(),
            when: "during boot",
            status,
            stderr_tail: String::new(),
            console_tail: String::new(),
        }
    }

    fn died() -> Error {
        died_with(Some(ChildExit::Signal(9)))
    }

    fn protocol(source: ProtocolError) -> Error {
        Error::Protocol {
            vm_id: "vm".into(),
            source,
        }
    }

    #[test]
    fn a_vm_that_died_or_hung_during_boot_is_transient() {
        let timeout = Error::BootTimeout {
            vm_id: "vm".into(),
            after: Duration::from_secs(1),
            stderr_tail: String::new(),
            console_tail: String::new(),
        };
        let cut = Error::AttemptTimeout {
            attempt: 1,
            after: Duration::from_secs(1),
        };
        assert!(died().is_transient());
        assert!(timeout.is_transient());
        assert!(cut.is_transient());
        assert!(cut.hint().is_some());
    }

    #[test]
    fn a_lost_agent_channel_is_transient() {
        for source in [
            ProtocolError::Closed,
            ProtocolError::Timeout {
                what: "ping".into(),
                after: Duration::from_secs(1),
            },
            ProtocolError::Io(std::io::Error::other("reset")),
        ] {
            assert!(protocol(source).is_transient());
        }
    }

    #[test]
    fn an_agent_with_another_protocol_version_is_permanent() {
        let err = protocol(ProtocolError::VersionMismatch {
            host: 1,
            guest: 2,
            agent_version: "9.9.9".into(),
        });
        assert!(!err.is_transient(), "{err}");
    }

    #[test]
    fn input_configuration_and_host_errors_are_permanent() {
        let permanent = [
            Error::invalid("code", "empty"),
            Error::Config("bad".into()),
            Error::ShutDown,
            Error::QueueTimeout {
                waited: Duration::from_secs(1),
                slots: 1,
            },
            Error::Spawn {
                vm_id: "vm".into(),
                program: "/nonexistent/qemu".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            Error::PeerMismatch {
                vm_id: "vm".into(),
                path: "/s".into(),
                peer_pid: 1,
                qemu_pid: 2,
                peer_uid: 0,
                our_uid: 1000,
            },
            Error::io("create", "/x", std::io::Error::other("denied")),
        ];
        for err in permanent {
            assert!(!err.is_transient(), "{err}");
        }
    }

    #[test]
    fn a_dead_vm_names_how_qemu_ended() {
        let msg = died().to_string();
        assert!(msg.contains("QEMU exited (killed by signal 9"), "{msg}");
        let code = died_with(Some(ChildExit::Code(3))).to_string();
        assert!(code.contains("QEMU exited (exit code 3)"), "{code}");
        let unknown = died_with(None).to_string();
        assert!(unknown.contains("unknown status: wait failed"), "{unknown}");
    }

    #[test]
    fn a_lower_crate_error_is_wrapped_with_the_vm_and_the_step() {
        let source = airlock_limits::LimitsError::InvalidId {
            kind: "tenant",
            value: "a b".into(),
        };
        let err = Error::limits(Some("vm-7"), "move to the tenant's limits group")(source);
        let msg = err.to_string();
        assert!(
            msg.starts_with("vm vm-7: move to the tenant's limits group: invalid tenant id"),
            "{msg}"
        );
        let chained = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            chained.is_some_and(|s| s.starts_with("invalid tenant id")),
            "{err:?}"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn a_host_step_without_a_vm_has_no_vm_prefix() {
        let source = airlock_limits::LimitsError::InvalidId {
            kind: "vm",
            value: String::new(),
        };
        let msg = Error::limits(None, "create its limits group")(source).to_string();
        assert!(
            msg.starts_with("create its limits group: invalid vm id"),
            "{msg}"
        );
    }

    #[test]
    fn a_queue_timeout_names_the_slots_and_a_fix() {
        let err = Error::QueueTimeout {
            waited: Duration::from_secs(3),
            slots: 4,
        };
        assert!(err.to_string().contains("4 VMs"), "{err}");
        assert!(err.hint().is_some_and(|h| h.contains("max_concurrent_vms")));
    }
}
