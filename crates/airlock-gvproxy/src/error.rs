//! The crate's one error type.

use airlock_sys_util::IoError;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while checking a network policy, rendering
/// gvproxy's configuration or running gvproxy. Each message says what to
/// change.
#[derive(Debug, thiserror::Error)]
pub enum GvproxyError {
    /// The VM id is not `[A-Za-z0-9_-]{1,128}`.
    #[error("invalid vm id {vm_id:?}: use 1 to 128 characters from [A-Za-z0-9_-]")]
    InvalidVmId {
        /// The rejected id.
        vm_id: String,
    },

    /// A domain pattern of the allowlist is not a DNS name.
    #[error(
        "invalid allowed domain {input:?}: {reason} (use a name like `example.com` or \
         `*.example.com`)"
    )]
    InvalidDomain {
        /// The rejected text.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A port to expose is not `GUEST[:HOST][/tcp]`.
    #[error("invalid exposed port {input:?}: {reason} (use GUEST[:HOST][/tcp], e.g. 8080 or 8080:18080)")]
    InvalidExpose {
        /// The rejected text.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The policy as a whole is inconsistent.
    #[error("vm {vm_id}: invalid network policy: {reason}")]
    InvalidPolicy {
        /// The VM.
        vm_id: String,
        /// What is wrong.
        reason: String,
    },

    /// The language has no default allowlist.
    #[error(
        "unknown language {language:?} for a default allowlist: use python, javascript or raw"
    )]
    UnknownLanguage {
        /// The language given.
        language: String,
    },

    /// The launch options are unusable.
    #[error("invalid gvproxy options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },

    /// A path gvproxy would use is unusable.
    #[error("vm {vm_id}: the {field} path {path:?} {reason}")]
    InvalidPath {
        /// The VM.
        vm_id: String,
        /// Which path.
        field: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong (a full clause with the fix).
        reason: String,
    },

    /// No gvproxy binary was found.
    #[error(
        "gvproxy not found ({searched}): install the `gvproxy` package (Debian 13) or run \
         `cargo xtask demo`/`cargo xtask test`, which fetch it, or set AIRLOCK_GVPROXY"
    )]
    NotFound {
        /// Where it was looked for.
        searched: String,
    },

    /// `gvproxy -version` printed something this crate cannot read.
    #[error("cannot read the version of {binary:?} from {output:?}: is it gvproxy?")]
    UnreadableVersion {
        /// The binary.
        binary: PathBuf,
        /// What it printed (first line).
        output: String,
    },

    /// gvproxy is too old for what this crate drives.
    #[error("{binary:?} is gvproxy {found}, older than {required}: install a newer gvproxy")]
    TooOld {
        /// The binary.
        binary: PathBuf,
        /// The version found.
        found: String,
        /// The minimum version.
        required: String,
    },

    /// The empty network namespace could not be made: gvproxy is not started
    /// (it never runs on the host's network).
    #[error(
        "vm {vm_id}: cannot give gvproxy an empty network namespace ({step}: {source}); network \
         modes need root, or unprivileged user namespaces (sysctl \
         kernel.unprivileged_userns_clone=1): run as root, enable them, or run without network"
    )]
    Netns {
        /// The VM.
        vm_id: String,
        /// The step that failed.
        step: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// gvproxy could not give up its privileges: it is not started (it
    /// never runs privileged).
    #[error(
        "vm {vm_id}: cannot drop gvproxy's privileges to {target} ({source}); gvproxy is not \
         started: check LaunchOptions::run_as (an existing, unprivileged uid and gid)"
    )]
    DropPrivileges {
        /// The VM.
        vm_id: String,
        /// What it was to become (uid and gid, or no capabilities).
        target: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// gvproxy could not be started.
    #[error("vm {vm_id}: cannot start {program:?}: {source}")]
    Spawn {
        /// The VM.
        vm_id: String,
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// gvproxy exited before it was ready.
    #[error(
        "vm {vm_id}: gvproxy exited before it was ready ({status}); its log ends with: {log_tail}"
    )]
    Exited {
        /// The VM.
        vm_id: String,
        /// Its exit status.
        status: String,
        /// The tail of its log.
        log_tail: String,
    },

    /// gvproxy did not open its sockets in time.
    #[error(
        "vm {vm_id}: gvproxy was not ready within {deadline:?} (waiting for {waiting_for:?}); \
         its log ends with: {log_tail}"
    )]
    NotReady {
        /// The VM.
        vm_id: String,
        /// The deadline.
        deadline: Duration,
        /// What was missing.
        waiting_for: PathBuf,
        /// The tail of its log.
        log_tail: String,
    },

    /// A call to gvproxy's HTTP API failed.
    #[error("vm {vm_id}: gvproxy API {method} {path} failed: {reason}")]
    Api {
        /// The VM.
        vm_id: String,
        /// HTTP method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What went wrong (status and body, or the I/O error).
        reason: String,
    },

    /// Binding a listener inside gvproxy's network namespace failed.
    #[error(
        "cannot listen on {addr} inside gvproxy's network namespace ({step}: {source}); \
         entering a namespace needs CAP_SYS_ADMIN: run as root"
    )]
    BindInNetns {
        /// The address.
        addr: std::net::SocketAddr,
        /// The step that failed.
        step: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] IoError),
}
