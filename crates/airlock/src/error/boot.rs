//! [`BootError`]: everything that can fail getting a ready VM, and the
//! retry decision ([`BootError::is_transient`]) the boot retries go by.

use super::exec::{exit_text, is_lost_channel, ExecError};
use airlock_protocol::ProtocolError;
use airlock_sys_util::{ChildExit, IoError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Getting a VM whose guest agent answers failed: a slot, the host's
/// pieces (QEMU, disk overlay, limits group, network), the machine, the
/// agent, a memory template or a warm pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// The VM manager was shut down: it boots no more VMs.
    #[error("the VM manager is shut down")]
    ShutDown,
    /// Every VM slot stayed taken for the whole queue timeout.
    #[error("no VM slot became free within {waited:?} ({slots} VMs at once at most)")]
    QueueTimeout {
        /// How long the boot waited.
        waited: Duration,
        /// The number of slots ([`crate::Config::max_concurrent_vms`]).
        slots: usize,
    },
    /// A warm pool was shut down: it hands out no more VMs.
    #[error("the warm pool of {shape} is shut down")]
    PoolDrained {
        /// The pool's shape.
        shape: String,
    },
    /// A helper task of the orchestrator failed (panicked or was cancelled).
    #[error("{task} failed: {message}")]
    TaskFailed {
        /// What the task was doing.
        task: &'static str,
        /// Why it failed.
        message: String,
    },
    /// A fork's child was built while its parent was saved, and the save
    /// wrote nothing it can load (`pause/gate.rs`).
    #[error("{label}: the parent's save did not finish: {reason}")]
    ParentSave {
        /// The fork (`fork of s-...`).
        label: String,
        /// Why.
        reason: String,
    },
    /// Airlock's CA, which signs the certificates of the hosts a secret is
    /// bound to, cannot be made or loaded.
    #[error("Airlock's CA for secrets: {source}")]
    SecretsCa {
        /// What failed, with the file.
        #[source]
        source: airlock_egress::CaError,
    },
    /// The run dir (or its `vms` dir), where every VM's sockets, disk
    /// overlay and console log live, is not this process's own: owned by
    /// another user, writable by others, or not a plain directory. Another
    /// user could then reach or replace those files (a `/tmp/airlock-<uid>`
    /// made in advance by someone else).
    #[error("the run dir {path} is unsafe: {why}; remove it (Airlock makes it again, private) or set AIRLOCK_RUN_DIR to a directory of your own")]
    UnsafeRunDir {
        /// The directory refused.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The guest images are missing or incomplete.
    #[error("guest images missing in {dir}: {what}; build them with `cargo xtask images` (or set AIRLOCK_IMAGES)")]
    ImagesMissing {
        /// The images dir looked at.
        dir: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A file-system step failed (the error names the step and the path).
    #[error(transparent)]
    Io(#[from] IoError),
    /// QEMU's jail could not be readied (its uid, its work dir's owner,
    /// its files).
    #[error("vm {vm_id}: cannot jail QEMU: {source}")]
    Jail {
        /// The VM.
        vm_id: String,
        /// The failing step (named in its message).
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
    /// QEMU exited before the guest was ready.
    #[error("vm {vm_id}: QEMU exited ({}) {when}\n--- qemu stderr (tail) ---\n{stderr_tail}\n--- console (tail) ---\n{console_tail}", exit_text(.status))]
    VmDied {
        /// The VM.
        vm_id: String,
        /// When it died ("during boot"; "during exec" for an exec a
        /// boot step ran, as a template's warm-up).
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
    /// `retry::CUT_SLACK`): a step before the agent wait hung, and
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
        /// Our QEMU's uid (ours, or its jail uid).
        our_uid: u32,
    },
    /// Talking to the guest agent failed while the VM was made ready
    /// (the handshake, a template's warm-up, a pool VM's reseed).
    #[error("vm {vm_id}: {source}")]
    Protocol {
        /// The VM.
        vm_id: String,
        /// What the agent or its channel said.
        #[source]
        source: ProtocolError,
    },
    /// A QEMU step failed: probing the host, building the command line,
    /// a QMP command.
    #[error("{}{action}: {source}", vm_prefix(.vm_id))]
    Qemu {
        /// The VM, when the step was for one.
        vm_id: Option<String>,
        /// What was being done.
        action: &'static str,
        /// What QEMU, its probe or its QMP socket said (boxed: the enum
        /// stays small).
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
        /// What QEMU or its QMP socket said (boxed: the enum stays small).
        #[source]
        source: Box<airlock_qemu::QemuError>,
    },
    /// A VM's options do not fit the memory template asked to restore it
    /// (another shape, a package layer on one side only, a network).
    #[error("cannot restore from the memory template: {reason}")]
    TemplateMismatch {
        /// What differs.
        reason: String,
    },
    /// A disk overlay step failed (starting the overlay pool, taking an
    /// overlay for a VM).
    #[error("{}{action}: {source}", vm_prefix(.vm_id))]
    Overlay {
        /// The VM, when the step was for one.
        vm_id: Option<String>,
        /// What was being done.
        action: &'static str,
        /// What the overlay pool said (boxed: the enum stays small).
        #[source]
        source: Box<airlock_overlay::OverlayError>,
    },
    /// A workspace disk could not be made (its blank ext4 base, or a
    /// template's copy of its disk).
    #[error("workspace disk of {disk_mib} MiB: {reason}")]
    Workspace {
        /// Its size.
        disk_mib: u32,
        /// What failed, with the tool's own words.
        reason: String,
    },
    /// A limits-group step failed (creating, joining or moving a VM's
    /// group).
    #[error("{}{action}: {source}", vm_prefix(.vm_id))]
    Limits {
        /// The VM, when the step was for one.
        vm_id: Option<String>,
        /// What was being done.
        action: &'static str,
        /// What the limits crate said (boxed: the enum stays small).
        #[source]
        source: Box<airlock_limits::LimitsError>,
    },
    /// The VM's network (gvproxy) could not be set up.
    #[error("vm {vm_id}: network: {source}")]
    Network {
        /// The VM.
        vm_id: String,
        /// What went wrong (boxed: the enum stays small).
        #[source]
        source: Box<airlock_gvproxy::GvproxyError>,
    },
    /// The VM's egress proxy could not be started.
    #[error("vm {vm_id}: network: {source}")]
    Egress {
        /// The VM.
        vm_id: String,
        /// What went wrong (boxed: the enum stays small).
        #[source]
        source: Box<airlock_egress::EgressError>,
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
}

impl BootError {
    /// Whether trying again may succeed (a VM that died or hung during
    /// its boot, a lost agent channel), as opposed to a permanent error
    /// (missing images, a host that lacks a piece, no slot, shut down):
    /// what the boot retries go by (`retry.rs`).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::VmDied { .. } | Self::BootTimeout { .. } | Self::AttemptTimeout { .. } => true,
            Self::Protocol { source, .. } => is_lost_channel(source),
            _ => false,
        }
    }

    /// A one-line hint for the user, shown by the CLI under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Network { .. } | Self::Egress { .. } => Some(
                "network modes need gvproxy (`cargo xtask test` or `demo` fetches it) and root or user namespaces; see docs/network.md",
            ),
            Self::ImagesMissing { .. } => Some("run `cargo xtask images` to build the guest images"),
            Self::VmDied { .. } | Self::BootTimeout { .. } | Self::AttemptTimeout { .. } => {
                Some("run `airlock doctor` to check the host, or retry with --debug")
            }
            Self::QueueTimeout { .. } => {
                Some("raise max_concurrent_vms, or retry when fewer runs are in flight")
            }
            Self::ExposeBind { .. } => Some("choose another host port, or let Airlock pick one"),
            Self::Workspace { .. } => Some(
                "the workspace disk needs mkfs.ext4 (e2fsprogs) and qemu-img on the host and room in the cache dir; --disk 0 keeps the home in RAM",
            ),
            Self::Jail { .. } => Some(
                "the jail needs /run/airlock-jail writable and a free uid in its range; see docs/security.md (\"Layer 6\"), or turn it off with AIRLOCK_JAIL=0 / [jail] enabled = false",
            ),
            Self::SecretsCa { .. } => Some(
                "the CA lives under the cache (secrets-ca): remove a damaged file to make a new one; see docs/secrets.md",
            ),
            Self::PoolDrained { .. } | Self::ShutDown => {
                Some("it was shut down (Scheduler::shutdown): start a new Scheduler")
            }
            _ => None,
        }
    }

    /// A mapper wrapping a QEMU error in [`BootError::Qemu`] with its
    /// context.
    pub(crate) fn qemu(
        vm_id: Option<&str>,
        action: &'static str,
    ) -> impl FnOnce(airlock_qemu::QemuError) -> Self {
        let vm_id = vm_id.map(str::to_owned);
        move |source| Self::Qemu {
            vm_id,
            action,
            source: Box::new(source),
        }
    }

    /// A mapper wrapping an overlay error in [`BootError::Overlay`] with
    /// its context.
    pub(crate) fn overlay(
        vm_id: Option<&str>,
        action: &'static str,
    ) -> impl FnOnce(airlock_overlay::OverlayError) -> Self {
        let vm_id = vm_id.map(str::to_owned);
        move |source| Self::Overlay {
            vm_id,
            action,
            source: Box::new(source),
        }
    }

    /// A mapper wrapping a limits error in [`BootError::Limits`] with its
    /// context.
    pub(crate) fn limits(
        vm_id: Option<&str>,
        action: &'static str,
    ) -> impl FnOnce(airlock_limits::LimitsError) -> Self {
        let vm_id = vm_id.map(str::to_owned);
        move |source| Self::Limits {
            vm_id,
            action,
            source: Box::new(source),
        }
    }

    /// A [`BootError::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io(IoError::new(action, path, source))
    }
}

/// An exec or a file step a boot ran (a template's warm-up, a pool VM's
/// reseed) failed: the VM is not ready, and a VM that died or a lost
/// channel is as transient as during the handshake.
impl From<ExecError> for BootError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::VmDied {
                vm_id,
                status,
                stderr_tail,
                console_tail,
            } => Self::VmDied {
                vm_id,
                when: "during exec",
                status,
                stderr_tail,
                console_tail,
            },
            ExecError::Protocol { vm_id, source } | ExecError::File { vm_id, source, .. } => {
                Self::Protocol { vm_id, source }
            }
            ExecError::UploadTimeout { vm_id, timeout, .. } => Self::Protocol {
                vm_id,
                source: airlock_protocol::ProtocolError::Timeout {
                    what: "uploads".into(),
                    after: timeout,
                },
            },
        }
    }
}

/// `vm ID: ` when the error is about one VM, nothing otherwise.
fn vm_prefix(vm_id: &Option<String>) -> String {
    vm_id
        .as_deref()
        .map_or_else(String::new, |id| format!("vm {id}: "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jail_error_names_the_vm_and_the_step_is_final_and_has_a_hint() {
        let err = BootError::Jail {
            vm_id: "vm-j".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "take a jail uid: every jail uid of 10+2 is taken",
            ),
        };
        let text = err.to_string();
        assert!(
            text.contains("vm-j") && text.contains("take a jail uid"),
            "{text}"
        );
        assert!(!err.is_transient());
        assert!(err.hint().is_some_and(|h| h.contains("AIRLOCK_JAIL=0")));
    }

    fn died_with(status: Option<ChildExit>) -> BootError {
        BootError::VmDied {
            vm_id: "vm".into(),
            when: "during boot",
            status,
            stderr_tail: String::new(),
            console_tail: String::new(),
        }
    }

    fn died() -> BootError {
        died_with(Some(ChildExit::Signal(9)))
    }

    fn agent(source: ProtocolError) -> BootError {
        BootError::Protocol {
            vm_id: "vm".into(),
            source,
        }
    }

    #[test]
    fn a_vm_that_died_or_hung_during_boot_is_transient() {
        let timeout = BootError::BootTimeout {
            vm_id: "vm".into(),
            after: Duration::from_secs(1),
            stderr_tail: String::new(),
            console_tail: String::new(),
        };
        let cut = BootError::AttemptTimeout {
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
            assert!(agent(source).is_transient());
        }
    }

    #[test]
    fn an_agent_with_another_protocol_version_is_permanent() {
        let err = agent(ProtocolError::VersionMismatch {
            host: 1,
            guest: 2,
            agent_version: "9.9.9".into(),
        });
        assert!(!err.is_transient(), "{err}");
    }

    #[test]
    fn host_and_capacity_errors_are_permanent() {
        let permanent = [
            BootError::ShutDown,
            BootError::QueueTimeout {
                waited: Duration::from_secs(1),
                slots: 1,
            },
            BootError::Spawn {
                vm_id: "vm".into(),
                program: "/nonexistent/qemu".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            BootError::PeerMismatch {
                vm_id: "vm".into(),
                path: "/s".into(),
                peer_pid: 1,
                qemu_pid: 2,
                peer_uid: 0,
                our_uid: 1000,
            },
            BootError::TemplateMismatch {
                reason: "another shape".into(),
            },
            BootError::io("create", "/x", std::io::Error::other("denied")),
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
        let err = BootError::limits(Some("vm-7"), "move to the tenant's limits group")(source);
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
        let msg = BootError::limits(None, "create its limits group")(source).to_string();
        assert!(
            msg.starts_with("create its limits group: invalid vm id"),
            "{msg}"
        );
    }

    #[test]
    fn a_queue_timeout_names_the_slots_and_a_fix() {
        let err = BootError::QueueTimeout {
            waited: Duration::from_secs(3),
            slots: 4,
        };
        assert!(err.to_string().contains("4 VMs"), "{err}");
        assert!(err.hint().is_some_and(|h| h.contains("max_concurrent_vms")));
    }

    #[test]
    fn an_exec_a_boot_ran_keeps_its_vm_and_whether_it_may_be_retried() {
        let died = BootError::from(ExecError::VmDied {
            vm_id: "vm-3".into(),
            status: Some(ChildExit::Code(1)),
            stderr_tail: String::new(),
            console_tail: String::new(),
        });
        assert!(died.is_transient());
        assert!(
            died.to_string().starts_with("vm vm-3: QEMU exited"),
            "{died}"
        );
        let refused = BootError::from(ExecError::Protocol {
            vm_id: "vm-3".into(),
            source: ProtocolError::VersionMismatch {
                host: 1,
                guest: 2,
                agent_version: "9".into(),
            },
        });
        assert!(!refused.is_transient(), "{refused}");
    }
}
