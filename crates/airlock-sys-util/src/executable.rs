//! Finding a program: the candidates a `PATH`-style list names (pure), and
//! the first of them that is an executable file.
//!
//! Relative and empty `PATH` entries are skipped: they name the current
//! directory, and a program Airlock runs as root must not be picked up
//! from wherever it was started. (This is why Airlock does not use the
//! `which` crate, which resolves such entries against the current
//! directory; callers also need the candidate list itself, to say where
//! they looked.)

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where a program named `name` would be on the `PATH`-style list
/// `path_var`, in order. Empty and relative entries are skipped.
pub fn path_candidates(path_var: &OsStr, name: &str) -> Vec<PathBuf> {
    std::env::split_paths(path_var)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .collect()
}

/// Whether `metadata` is that of a regular file someone may execute.
pub fn is_executable_metadata(metadata: &std::fs::Metadata) -> bool {
    metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
}

/// Whether `path` is (or links to) a regular file someone may execute.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| is_executable_metadata(&m))
}

/// The first executable `name` on `path_var` (see [`path_candidates`]).
pub fn find_executable(path_var: &OsStr, name: &str) -> Option<PathBuf> {
    path_candidates(path_var, name)
        .into_iter()
        .find(|candidate| is_executable(candidate))
}

/// `name` on this process's `PATH`; a `name` holding a `/` is taken as a
/// path and returned when it is executable.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    find_executable(&std::env::var_os("PATH")?, name)
}

/// [`is_executable`] without blocking the async runtime.
#[cfg(feature = "tokio")]
pub async fn is_executable_async(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|m| is_executable_metadata(&m))
}

/// The first executable file of `candidates`, checked in order without
/// blocking the async runtime.
#[cfg(feature = "tokio")]
pub async fn first_executable(candidates: &[PathBuf]) -> Option<PathBuf> {
    for candidate in candidates {
        if is_executable_async(candidate).await {
            return Some(candidate.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path_order_and_skip_empty_and_relative_entries() {
        let found = path_candidates(
            OsStr::new("/usr/local/bin::.:relative:/usr/bin"),
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
    fn an_empty_path_has_no_candidates() {
        assert!(path_candidates(OsStr::new(""), "qemu").is_empty());
    }

    #[test]
    fn only_an_executable_regular_file_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("tool");
        std::fs::write(&plain, "#!/bin/sh\n").expect("write");
        assert!(find_executable(dir.path().as_os_str(), "tool").is_none());
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            find_executable(dir.path().as_os_str(), "tool"),
            Some(plain.clone())
        );
        assert!(!is_executable(dir.path()), "a directory is not a program");
    }

    #[test]
    fn which_takes_a_name_with_a_slash_as_a_path() {
        assert_eq!(which("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(which("/nonexistent-airlock/sh"), None);
        assert!(which("sh").is_some(), "sh is on every test host's PATH");
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn the_async_search_returns_the_first_executable_candidate() {
        let candidates = [
            PathBuf::from("/nonexistent-airlock/sh"),
            PathBuf::from("/bin/sh"),
        ];
        assert_eq!(
            first_executable(&candidates).await,
            Some(PathBuf::from("/bin/sh"))
        );
        assert!(!is_executable_async(Path::new("/nonexistent-airlock/sh")).await);
    }
}
