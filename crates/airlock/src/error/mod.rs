//! The orchestrator's errors: one enum per operation, as Firecracker's
//! `StartMicrovmError`, each variant carrying its context (VM id, path,
//! step), lower crates' errors as its `#[source]`, and a hint for the user
//! (`hint()`, printed by the CLI under the error).
//!
//! - [`BootError`]: getting a ready VM (slots, QEMU, overlay, limits,
//!   network, agent, template, pool); it holds the retry decision,
//!   [`BootError::is_transient`] (see `docs/architecture.md`, "Retries").
//! - [`ExecError`]: running code in a ready VM or moving its files.
//! - [`InputError`]: a request refused before anything started.
//! - [`PackageError`]: preparing a package layer.
//! - [`PauseError`]: pausing a session to disk, resuming it, forking it.
//! - [`RunError`]: a run ([`crate::Scheduler::run`]): one of the above.
//! - [`SessionError`]: a session and its calls: one of the above, or the
//!   session busy or closed.
//! - [`Error`]: what spans operations: starting a [`crate::Scheduler`],
//!   its configuration, listing and pruning the stored artifacts.

mod boot;
mod exec;
mod input;
mod packages;
mod pause;
mod run;
mod session;

pub use boot::BootError;
pub use exec::ExecError;
pub use input::InputError;
pub use packages::PackageError;
pub use pause::PauseError;
pub use run::RunError;
pub use session::SessionError;

/// What fails outside one run or session: starting a scheduler (its
/// configuration, the host probe, the overlay pool, the limits group, the
/// images), and listing or pruning the stored templates and layers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is not usable (raised by [`crate::Config::validate`]
    /// only).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A piece VMs boot with is missing or failed (QEMU's probe, the
    /// overlay pool, the limits group, the images, a dir, a helper task).
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A file-system step failed (the error names the step and the path).
    #[error(transparent)]
    Io(#[from] airlock_sys_util::IoError),
}

impl Error {
    /// A one-line hint for the user, shown by the CLI under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Boot(e) => e.hint(),
            Self::Config(_) | Self::Io(_) => None,
        }
    }

    /// An [`Error::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<std::path::PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io(airlock_sys_util::IoError::new(action, path, source))
    }
}

/// Result with the crate-level [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
