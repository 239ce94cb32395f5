//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// What went wrong while validating, creating, attaching to or reading a
/// limits group. Removal and sweeping never fail: they return reports.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// An identifier (tenant or VM id) is empty, too long or has a character
    /// outside `[A-Za-z0-9_-]`.
    #[error(
        "invalid {kind} id {value:?}: use 1 to 128 characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidId {
        /// `"tenant"` or `"vm"`.
        kind: &'static str,
        /// The rejected value (as given).
        value: String,
    },

    /// A field of [`crate::Limits`] is out of range.
    #[error("invalid limit {field} = {value}: {hint}")]
    InvalidLimits {
        /// Field name, as in the struct.
        field: &'static str,
        /// The rejected value, rendered.
        value: String,
        /// What range is accepted.
        hint: &'static str,
    },

    /// A group directory could not be created.
    #[error(
        "cannot create the limits group of VM {vm_id} at {path}: {source}; Airlock needs root or a \
         delegated cgroup there (see docs/limits.md, or run `airlock doctor`)"
    )]
    Create {
        /// VM the group is for.
        vm_id: String,
        /// Directory that could not be made.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A control file refused a value.
    #[error("cannot write {value:?} to {path} (VM {vm_id}): {source}")]
    Write {
        /// VM the group is for.
        vm_id: String,
        /// Control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A process could not be moved into the group, or the group's
    /// `cgroup.procs` could not be opened for a child about to be spawned.
    #[error("cannot attach {what} to the limits group of VM {vm_id} ({path}): {source}")]
    Attach {
        /// VM the group is for.
        vm_id: String,
        /// `"pid N"` or `"the child before exec"`.
        what: String,
        /// The `cgroup.procs` file (or `/proc/N` for rlimits).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A statistics file could not be read.
    #[error("cannot read {path} (VM {vm_id}): {source}")]
    Read {
        /// VM the group is for.
        vm_id: String,
        /// File that failed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}
