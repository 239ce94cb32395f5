//! The one error type of this crate.

use airlock_sys_util::IoError;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while pooling, creating or handing out
/// overlays. Each variant names the files involved and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// A [`PoolConfig`](crate::PoolConfig) field is out of range.
    #[error("invalid overlay pool config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it is refused and what is accepted.
        reason: String,
    },

    /// The pool directory cannot be created, locked or read.
    #[error(
        "cannot {op} overlay pool dir {}: {source}; make sure its parent exists and is writable",
        path.display()
    )]
    PoolDir {
        /// What was being done (e.g. "create", "lock", "list").
        op: &'static str,
        /// The pool directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Another process (or another pool in this process) owns the directory.
    #[error(
        "overlay pool dir {} is in use by another pool (its lock file is held); \
         give each Airlock process its own `pool_dir`",
        path.display()
    )]
    PoolDirLocked {
        /// The pool directory.
        path: PathBuf,
    },

    /// The pool directory and a VM's work dir are on different filesystems,
    /// so an overlay cannot be moved with a rename.
    #[error(
        "overlay pool dir {} (device {pool_dev:#x}) and {} (device {other_dev:#x}) are on \
         different filesystems, and a rename cannot cross them; put `pool_dir` on the \
         filesystem that holds the VM work dirs",
        pool_dir.display(),
        other.display()
    )]
    CrossFilesystem {
        /// The pool directory.
        pool_dir: PathBuf,
        /// The work dir (or destination) on another filesystem.
        other: PathBuf,
        /// `st_dev` of the pool directory.
        pool_dev: u64,
        /// `st_dev` of the other path.
        other_dev: u64,
    },

    /// The base image cannot be found or read.
    #[error(
        "base image {} cannot be read: {source}; build the images (`cargo xtask images`) \
         or fix the path",
        base.display()
    )]
    BaseUnreadable {
        /// The base image as the caller named it.
        base: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `qemu-img` does not run at all (checked when the pool starts).
    #[error(
        "`{}` does not run: {source}; install the `qemu-utils` package or set \
         `PoolConfig::qemu_img`",
        program.display()
    )]
    QemuImgMissing {
        /// The program that was run.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `qemu-img` could not be started.
    #[error(
        "cannot run `{}` to create an overlay on base image {}: {source}; install the \
         `qemu-utils` package or set `PoolConfig::qemu_img`",
        program.display(),
        base.display()
    )]
    QemuImgSpawn {
        /// The base image.
        base: PathBuf,
        /// The program that was run.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `qemu-img create` ran and failed; usually the base image is broken.
    #[error(
        "qemu-img could not create an overlay on base image {} ({status}): {stderr}; \
         check the base image with `qemu-img check` or rebuild it",
        base.display()
    )]
    QemuImgFailed {
        /// The base image.
        base: PathBuf,
        /// How qemu-img ended (exit code or signal).
        status: String,
        /// What qemu-img printed on stderr (trimmed, capped).
        stderr: String,
    },

    /// `qemu-img create` did not finish within the deadline; it was killed.
    #[error(
        "qemu-img did not create an overlay on base image {} within {timeout:?}; it was \
         killed; the host may be overloaded or the pool dir's filesystem stalled \
         (raise `PoolConfig::create_timeout` if this persists)",
        base.display()
    )]
    CreateTimeout {
        /// The base image.
        base: PathBuf,
        /// The deadline that passed.
        timeout: Duration,
    },

    /// The destination already exists; the pool never overwrites a file.
    #[error(
        "cannot place an overlay at {}: a file is already there; give each VM a fresh path",
        dest.display()
    )]
    DestinationExists {
        /// The requested destination.
        dest: PathBuf,
    },

    /// A file operation on an overlay failed.
    #[error(transparent)]
    Io(#[from] IoError),

    /// The pool was stopped; it hands out nothing more.
    #[error("the overlay pool was stopped; create a new `OverlayPool` to acquire overlays")]
    Stopped,
}

/// Shorthand for results of this crate.
pub type Result<T, E = OverlayError> = std::result::Result<T, E>;
