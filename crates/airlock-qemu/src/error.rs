//! The crate's one error type.

use airlock_sys_util::IoError;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building a QEMU command line or
/// probing the host. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The VM id is not `[A-Za-z0-9_-]{1,128}`.
    #[error("invalid vm id {vm_id:?}: use 1 to 128 characters from [A-Za-z0-9_-]")]
    InvalidVmId {
        /// The rejected id.
        vm_id: String,
    },

    /// The guest memory is outside the supported range.
    #[error("vm {vm_id}: memory {memory_mib} MiB is outside {min_mib}..={max_mib} MiB")]
    MemoryOutOfRange {
        /// The VM.
        vm_id: String,
        /// The requested memory.
        memory_mib: u32,
        /// Smallest accepted value.
        min_mib: u32,
        /// Largest accepted value.
        max_mib: u32,
    },

    /// The TCG translation cache is outside the supported range.
    #[error("vm {vm_id}: a translation cache of {mib} MiB is outside {min_mib}..={max_mib} MiB")]
    TranslationCacheOutOfRange {
        /// The VM.
        vm_id: String,
        /// The requested size.
        mib: u32,
        /// Smallest accepted value.
        min_mib: u32,
        /// Largest accepted value.
        max_mib: u32,
    },

    /// The vCPU count is outside the supported range.
    #[error("vm {vm_id}: {vcpus} vCPUs is outside 1..={max}")]
    VcpusOutOfRange {
        /// The VM.
        vm_id: String,
        /// The requested count.
        vcpus: u32,
        /// Largest accepted value.
        max: u32,
    },

    /// A required path is empty.
    #[error("vm {vm_id}: the {field} path is empty")]
    EmptyPath {
        /// The VM.
        vm_id: String,
        /// Which path (`kernel`, `qmp socket`, ...).
        field: &'static str,
    },

    /// A path is relative. QEMU would resolve it against its own working
    /// directory and may read a prefix such as `json:` as a protocol.
    #[error("vm {vm_id}: the {field} path {path:?} is relative: pass an absolute path")]
    RelativePath {
        /// The VM.
        vm_id: String,
        /// Which path.
        field: &'static str,
        /// The path.
        path: PathBuf,
    },

    /// A path holds a NUL or newline byte, which no command line can carry.
    #[error("vm {vm_id}: the {field} path {path:?} contains a NUL or newline byte")]
    UnrepresentablePath {
        /// The VM.
        vm_id: String,
        /// Which path.
        field: &'static str,
        /// The path.
        path: PathBuf,
    },

    /// A unix socket path does not fit `sockaddr_un.sun_path`.
    #[error(
        "vm {vm_id}: the {field} path {path:?} is {len_bytes} bytes, over the unix socket \
         limit of {max_bytes}: use a shorter work dir (e.g. under /tmp or $XDG_RUNTIME_DIR)"
    )]
    SocketPathTooLong {
        /// The VM.
        vm_id: String,
        /// Which socket.
        field: &'static str,
        /// The path.
        path: PathBuf,
        /// Its length.
        len_bytes: usize,
        /// The largest accepted length.
        max_bytes: usize,
    },

    /// Two per-VM files share one path.
    #[error("vm {vm_id}: {first} and {second} both use {path:?}: give each its own file")]
    DuplicatePath {
        /// The VM.
        vm_id: String,
        /// One user of the path.
        first: &'static str,
        /// The other user.
        second: &'static str,
        /// The shared path.
        path: PathBuf,
    },

    /// An extra kernel argument cannot be passed as one word.
    #[error("vm {vm_id}: kernel argument {arg:?} is invalid: {reason}")]
    InvalidKernelArg {
        /// The VM.
        vm_id: String,
        /// The argument.
        arg: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The kernel command line would not fit the guest's buffer.
    #[error(
        "vm {vm_id}: the kernel command line is {len_bytes} bytes, over {max_bytes}: \
         drop extra kernel arguments"
    )]
    KernelCmdlineTooLong {
        /// The VM.
        vm_id: String,
        /// Its length.
        len_bytes: usize,
        /// The largest accepted length.
        max_bytes: usize,
    },

    /// An extra drive is misconfigured.
    #[error("vm {vm_id}: drive {drive_id:?}: {reason}")]
    InvalidDrive {
        /// The VM.
        vm_id: String,
        /// The drive's id.
        drive_id: String,
        /// What is wrong.
        reason: String,
    },

    /// A shared directory (virtio-9p) is misconfigured.
    #[error("vm {vm_id}: shared directory {tag:?}: {reason}")]
    InvalidShare {
        /// The VM.
        vm_id: String,
        /// The share's mount tag.
        tag: String,
        /// What is wrong.
        reason: String,
    },

    /// The snapshot descriptor for `-incoming fd:` is a standard stream.
    #[error("vm {vm_id}: incoming migration descriptor {fd} is not usable: pass an open descriptor >= 3")]
    InvalidIncomingFd {
        /// The VM.
        vm_id: String,
        /// The descriptor.
        fd: i32,
    },

    /// A host port forward (user networking) is misconfigured.
    #[error("vm {vm_id}: host forward {forward}: {reason}")]
    InvalidHostForward {
        /// The VM.
        vm_id: String,
        /// The forward, as QEMU would read it.
        forward: String,
        /// What is wrong.
        reason: &'static str,
    },

    /// The QEMU found is too old for a feature the VM needs.
    #[error("{feature} needs QEMU {required} or newer, found {found}: upgrade QEMU")]
    QemuTooOld {
        /// What needs the newer QEMU.
        feature: &'static str,
        /// The minimum version.
        required: String,
        /// The version found.
        found: String,
    },

    /// The host CPU architecture is not one Airlock runs on.
    #[error("host architecture {arch} is not supported: Airlock runs on x86_64 and aarch64")]
    UnsupportedHostArch {
        /// `std::env::consts::ARCH`.
        arch: String,
    },

    /// No QEMU binary was found.
    #[error("QEMU binary {binary} not found ({searched}): install the {package} package or set AIRLOCK_QEMU")]
    QemuNotFound {
        /// The binary looked for.
        binary: String,
        /// Where it was looked for.
        searched: String,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// `qemu-system-* --version` printed something this crate cannot read.
    #[error(
        "cannot read the version of {binary:?} from {output:?}: is it a QEMU system emulator?"
    )]
    UnreadableVersion {
        /// The binary.
        binary: PathBuf,
        /// The first line it printed.
        output: String,
    },

    /// `AIRLOCK_ACCEL` holds something other than `kvm` or `tcg`.
    #[error("AIRLOCK_ACCEL={value:?} is not understood: use `kvm`, `tcg`, or unset it")]
    InvalidAccelOverride {
        /// The value.
        value: String,
    },

    /// The probe configuration is unusable.
    #[error("invalid probe configuration: {reason}")]
    InvalidProbeConfig {
        /// What is wrong.
        reason: String,
    },

    /// A helper command could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A helper command failed.
    #[error("{program:?} {what} failed ({status}): {stderr}")]
    CommandFailed {
        /// The program.
        program: PathBuf,
        /// What it was asked to do.
        what: &'static str,
        /// Its exit status.
        status: String,
        /// The tail of its stderr.
        stderr: String,
    },

    /// A helper command did not finish in time (it was killed).
    #[error("{program:?} {what} did not finish within {deadline:?}: it was killed")]
    Timeout {
        /// The program.
        program: PathBuf,
        /// What it was asked to do.
        what: &'static str,
        /// The deadline.
        deadline: Duration,
    },

    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] IoError),

    /// The QMP socket could not be reached or broke.
    #[error("QMP on {socket:?}: {action}: {source}")]
    QmpIo {
        /// The QMP socket.
        socket: PathBuf,
        /// What was being done (`connect`, `read`, `send`).
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// The QMP peer said something that is not QMP.
    #[error("QMP on {socket:?}: {reason}: is this socket served by QEMU?")]
    QmpProtocol {
        /// The QMP socket.
        socket: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// QEMU refused a QMP command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    QmpCommand {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },

    /// A QMP command or wait did not finish by its deadline.
    #[error("QMP {what} did not finish by its deadline: the machine may be stuck or the host overloaded")]
    QmpTimeout {
        /// The command or the state awaited.
        what: String,
    },

    /// A migration (saving or loading device state) ended in failure.
    #[error("migration {direction} failed in state {status}: {detail}")]
    MigrationFailed {
        /// `save` or `load`.
        direction: &'static str,
        /// The last migration or run state.
        status: String,
        /// QEMU's error description, when it gave one.
        detail: String,
    },
}
