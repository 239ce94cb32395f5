//! A file-system step that failed, with what was being done and on which
//! path: the one `Io` error every crate wraps instead of declaring its own
//! `Io { action, path, source }` variant.
//!
//! ```
//! use airlock_sys_util::{IoError, IoResultExt};
//!
//! let err: IoError = std::fs::read("/nonexistent/airlock")
//!     .with_path("read", "/nonexistent/airlock")
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("could not read /nonexistent/airlock: "));
//! assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
//! ```

use std::path::{Path, PathBuf};

/// A file-system step that failed: `could not {action} {path}: {source}`.
///
/// `action` is a verb phrase that reads after "could not": `read`,
/// `create a staging dir in`, `rename into place`.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} {}: {source}", path.display())]
pub struct IoError {
    /// What was being done.
    pub action: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// The error of `action` on `path`.
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            action,
            path: path.into(),
            source,
        }
    }

    /// The kind of the OS error, for callers that treat `NotFound` (or
    /// another kind) as an answer rather than a failure.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }

    /// The path concerned.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Adds the action and the path to an `io::Result` (or a nix one):
/// `std::fs::read(&p).with_path("read", &p)?`.
pub trait IoResultExt<T> {
    /// This result, its error turned into an [`IoError`] of `action` on
    /// `path`.
    ///
    /// # Errors
    /// The [`IoError`] when `self` is an error.
    fn with_path(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, IoError>;
}

impl<T> IoResultExt<T> for std::io::Result<T> {
    fn with_path(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(action, path.as_ref(), source))
    }
}

impl<T> IoResultExt<T> for nix::Result<T> {
    fn with_path(self, action: &'static str, path: impl AsRef<Path>) -> Result<T, IoError> {
        self.map_err(|errno| IoError::new(action, path.as_ref(), errno.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_action_the_path_and_the_os_error() {
        let err = IoError::new(
            "create a staging dir in",
            "/var/cache/airlock",
            std::io::Error::from_raw_os_error(nix::libc::EACCES),
        );
        let text = err.to_string();
        assert!(
            text.starts_with("could not create a staging dir in /var/cache/airlock: "),
            "{text}"
        );
        assert!(text.contains("Permission denied"), "{text}");
    }

    #[test]
    fn with_path_keeps_the_ok_value_and_wraps_the_error() {
        let ok: std::io::Result<u8> = Ok(7);
        assert_eq!(ok.with_path("read", "/x").unwrap(), 7);
        let failed: std::io::Result<u8> = Err(std::io::ErrorKind::NotFound.into());
        let err = failed.with_path("read", "/x").unwrap_err();
        assert_eq!(
            (err.action, err.path(), err.kind()),
            ("read", Path::new("/x"), std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_nix_errno_becomes_the_same_os_error() {
        let failed: nix::Result<()> = Err(nix::errno::Errno::ENOENT);
        let err = failed.with_path("stat", "/y").unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(nix::libc::ENOENT));
    }

    #[test]
    fn the_os_error_is_the_source() {
        use std::error::Error as _;
        let err = IoError::new("open", "/z", std::io::ErrorKind::NotFound.into());
        let source = err
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            source.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
    }
}
