//! The one place where a running session installs packages
//! ([`crate::Session::install_packages`]): the packages module's
//! [`crate::packages::install_into`] (pinned specs checked, the CA bundle
//! copied in, pip `--user` or npm in the home). It needs a session whose
//! network allows the language's registries; packages known up front go in
//! [`crate::SessionOptions::packages`] instead and come as a layer, with no
//! network at all.

use crate::error::Result;
use crate::vm::{ExecOutcome, Vm};
use std::time::Duration;

/// Deadline of one install.
pub(crate) const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Installs `packages` in `vm`'s home, trusting `ca`.
///
/// # Errors
/// As [`crate::packages::install_into`].
pub(crate) async fn install_packages(
    vm: &Vm,
    packages: &[String],
    ca: &crate::packages::CaBundle,
) -> Result<ExecOutcome> {
    let output = crate::packages::install_into(vm, packages, ca, INSTALL_TIMEOUT).await?;
    Ok(ExecOutcome {
        stdout: output.stdout,
        stderr: output.stderr,
        results: output.results,
        error: output.error,
        completion: output.completion,
    })
}
