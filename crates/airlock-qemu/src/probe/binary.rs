//! Finding the QEMU binary and reading its version.

use super::run::{describe_status, run};
use crate::{Arch, QemuError, QemuVersion};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a binary named `name` would be on a `PATH`-style list, in order.
/// Empty entries (the current directory) are skipped.
pub fn path_candidates(path_var: &OsStr, name: &str) -> Vec<PathBuf> {
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty() && dir.is_absolute())
        .map(|dir| dir.join(name))
        .collect()
}

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
        return if is_executable(explicit).await {
            Ok(explicit.to_path_buf())
        } else {
            Err(not_found(format!(
                "AIRLOCK_QEMU={} is not an executable file",
                explicit.display()
            )))
        };
    }
    let path_var = path_var.unwrap_or_default();
    for candidate in path_candidates(path_var, arch.qemu_binary_name()) {
        if is_executable(&candidate).await {
            return Ok(candidate);
        }
    }
    Err(not_found(format!(
        "searched PATH={}",
        path_var.to_string_lossy()
    )))
}

async fn is_executable(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path_order_and_skip_relative_entries() {
        let found = path_candidates(
            OsStr::new("/usr/local/bin::.:/usr/bin"),
            "qemu-system-x86_64",
        );
        assert_eq!(
            found,
            vec![
                PathBuf::from("/usr/local/bin/qemu-system-x86_64"),
                PathBuf::from("/usr/bin/qemu-system-x86_64"),
            ]
        );
    }

    #[test]
    fn candidates_of_empty_path_are_empty() {
        assert!(path_candidates(OsStr::new(""), "qemu").is_empty());
    }
}
