//! Finding the QEMU binary and reading its version.

use super::run::{describe_status, run};
use crate::{Arch, QemuError, QemuVersion};
use airlock_sys_util::executable::{first_executable, is_executable_async, path_candidates};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Finds QEMU: `explicit` (from `AIRLOCK_QEMU`) when given, else the arch's
/// `qemu-system-*` on `path_var`.
///
/// # Errors
/// [`QemuError::QemuNotFound`] with the install hint.
pub(crate) async fn resolve(
    arch: Arch,
    explicit: Option<&Path>,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, QemuError> {
    let not_found = |searched: String| QemuError::QemuNotFound {
        binary: arch.qemu_binary_name().to_owned(),
        searched,
        package: arch.qemu_package(),
    };
    if let Some(explicit) = explicit {
        return if is_executable_async(explicit).await {
            Ok(explicit.to_path_buf())
        } else {
            Err(not_found(format!(
                "AIRLOCK_QEMU={} is not an executable file",
                explicit.display()
            )))
        };
    }
    let path_var = path_var.unwrap_or_default();
    let candidates = path_candidates(path_var, arch.qemu_binary_name());
    if let Some(found) = first_executable(&candidates).await {
        return Ok(found);
    }
    Err(not_found(format!(
        "searched PATH={}",
        path_var.to_string_lossy()
    )))
}

/// Runs `binary --version` and parses it.
///
/// # Errors
/// Spawn failure, timeout, non-zero exit or unreadable output.
pub(crate) async fn version(binary: &Path, deadline: Duration) -> Result<QemuVersion, QemuError> {
    let out = run(binary, &["--version".into()], b"", deadline, "--version").await?;
    if !out.status.success() {
        return Err(QemuError::CommandFailed {
            program: binary.to_path_buf(),
            what: "--version",
            status: describe_status(out.status),
            stderr: out.stderr,
        });
    }
    QemuVersion::parse(&out.stdout).ok_or_else(|| QemuError::UnreadableVersion {
        binary: binary.to_path_buf(),
        output: out.stdout.lines().next().unwrap_or_default().to_owned(),
    })
}
