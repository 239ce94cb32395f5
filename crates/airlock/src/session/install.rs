//! The one place where a session installs packages
//! ([`crate::Session::install_packages`], [`crate::SessionOptions::packages`]).
//!
//! Today it hands the list to the agent's `install_packages` (which checks
//! the names again and runs pip `--user` or npm in the home), streaming
//! like a cell; the install reaches the registries only if the session
//! was given a network. The packages module (pinned-spec validation, the
//! install through the egress proxy with the registries allowed for it
//! alone, cached layers) replaces the body of [`install_packages`] with its
//! own entry point; callers do not change.

use crate::error::Result;
use crate::vm::{ExecOutcome, Vm};
use airlock_protocol::Language;
use std::time::Duration;

/// Deadline of one install.
pub(crate) const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Installs `packages` in `vm` for `language`.
///
/// # Errors
/// [`crate::Error::InvalidInput`] for an empty list, else as
/// [`Vm::install_packages`].
pub(crate) async fn install_packages(
    vm: &mut Vm,
    language: Language,
    packages: &[String],
) -> Result<ExecOutcome> {
    if packages.is_empty() {
        return Err(crate::Error::invalid("packages", "no packages to install"));
    }
    vm.install_packages(language, packages.to_vec(), INSTALL_TIMEOUT, |_, _| {})
        .await
}
