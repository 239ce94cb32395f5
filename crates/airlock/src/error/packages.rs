//! [`PackageError`]: preparing a sandbox's package layer failed.

use super::boot::BootError;
use super::exec::ExecError;
use super::input::InputError;

/// Preparing a package layer (finding it, or installing it in a VM of its
/// own and storing it) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The package list or the CA bundle was refused.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Installing the package list failed (the package manager failed,
    /// the registry was unreachable, the layer could not be made).
    #[error("installing {packages} failed{}: {reason}", .vm_id.as_ref().map(|v| format!(" in vm {v}")).unwrap_or_default())]
    Install {
        /// The install VM, when one ran.
        vm_id: Option<String>,
        /// The package list, as given to the package manager.
        packages: String,
        /// What went wrong (with the package manager's output tail).
        reason: String,
    },
    /// An install VM was needed but the sandbox's
    /// [`crate::packages::InstallLimits`] leave it too little (the
    /// server's tenant quotas): nothing booted.
    #[error("installing {packages} is refused: {reason}")]
    InstallRefused {
        /// The package list.
        packages: String,
        /// Which limit is too small, and what an install needs.
        reason: String,
    },
    /// The install VM could not be booted, or the layer store failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Talking to the install VM failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Another request was installing the same package list, still after
    /// the wait ([`crate::Config::layer_wait`]).
    #[error("{packages} is being installed by another request, still after {}s", .waited.as_secs())]
    Busy {
        /// The package list.
        packages: String,
        /// How long this request waited.
        waited: std::time::Duration,
    },
}

impl PackageError {
    /// A one-line hint for the user, shown by the CLI under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Input(e) => e.hint(),
            Self::Install { .. } => Some(
                "check the names and versions exist on the registry; behind a TLS-inspecting proxy pass its CA with --ca-bundle; see docs/packages.md",
            ),
            Self::InstallRefused { .. } => Some(
                "ask for a larger memory quota, or use packages already installed by another run (their layer needs no install VM)",
            ),
            Self::Boot(e) => e.hint(),
            Self::Exec(e) => e.hint(),
            Self::Busy { .. } => Some(
                "retry in a minute: the layer is stored once that install ends, and later runs attach it at once",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_install_names_the_vm_the_list_and_a_fix() {
        let err = PackageError::Install {
            vm_id: Some("vm-2".into()),
            packages: "numpy==9.9.9".into(),
            reason: "no such version".into(),
        };
        assert_eq!(
            err.to_string(),
            "installing numpy==9.9.9 failed in vm vm-2: no such version"
        );
        assert!(err.hint().is_some_and(|h| h.contains("--ca-bundle")));
    }

    #[test]
    fn a_list_another_request_installs_is_busy_and_says_to_retry() {
        let err = PackageError::Busy {
            packages: "numpy==2.0.0".into(),
            waited: std::time::Duration::from_secs(900),
        };
        assert_eq!(
            err.to_string(),
            "numpy==2.0.0 is being installed by another request, still after 900s"
        );
        assert!(err.hint().is_some_and(|h| h.contains("retry")));
    }

    #[test]
    fn a_refused_spec_keeps_its_own_message_and_hint() {
        let err = PackageError::from(InputError::PackageSpec {
            spec: "numpy".into(),
            reason: "not pinned".into(),
        });
        assert_eq!(err.to_string(), "package \"numpy\" refused: not pinned");
        assert!(err.hint().is_some_and(|h| h.contains("pin every package")));
    }
}
