//! [`RunError`]: a one-shot run failed ([`crate::Scheduler::run`]).

use super::boot::BootError;
use super::exec::ExecError;
use super::input::InputError;
use super::packages::PackageError;

/// A run failed: refused, its packages, its VM's boot, or its code's
/// exec, upload or download. (The code failing, timing out or printing
/// too much is not an error: the result says so.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The request was refused before anything started.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The package layer could not be prepared.
    #[error(transparent)]
    Packages(#[from] PackageError),
    /// No ready VM could be had (the transient failures were retried).
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The code's exec, an upload or a download failed (the VM died, the
    /// agent failed, a file was refused).
    #[error(transparent)]
    Exec(#[from] ExecError),
}

impl RunError {
    /// A one-line hint for the user, shown by the CLI under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Input(e) => e.hint(),
            Self::Packages(e) => e.hint(),
            Self::Boot(e) => e.hint(),
            Self::Exec(e) => e.hint(),
        }
    }

    /// The request's fault, when it was refused before anything started
    /// (a package spec too, found while the layer was prepared).
    pub fn input(&self) -> Option<&InputError> {
        match self {
            Self::Input(e) | Self::Packages(PackageError::Input(e)) => Some(e),
            _ => None,
        }
    }
}
